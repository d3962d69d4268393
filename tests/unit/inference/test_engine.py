"""The detection engine's request-level rules: thresholds, and how concurrent per-image work fails."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import InvalidArgument
from services.inference.domain.engine import DetectionEngine, Thresholds, run_bounded


def _engine() -> DetectionEngine:
    return DetectionEngine(registry=None, server=None, defaults=Thresholds(0.25, 0.45), max_image_pixels=100)  # type: ignore[arg-type]


def test_thresholds_default_per_parameter_and_are_checked() -> None:
    engine = _engine()
    assert engine.thresholds(None, None) == Thresholds(0.25, 0.45)
    assert engine.thresholds(0.5, None) == Thresholds(0.5, 0.45)
    assert engine.thresholds(None, 0.7) == Thresholds(0.25, 0.7)
    for conf, iou in ((1.5, None), (-0.1, None), (None, 0.0), (None, 1.01)):
        with pytest.raises(InvalidArgument):
            engine.thresholds(conf, iou)


def test_run_bounded_keeps_order_and_limits_concurrency() -> None:
    running = 0
    peak = 0

    async def work(value: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - value % 5))
        running -= 1
        return value * 10

    results = asyncio.run(run_bounded([(lambda v=v: work(v)) for v in range(12)], 3))
    assert results == [v * 10 for v in range(12)]
    assert peak == 3


def test_run_bounded_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    cancelled = []

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 0

    async def bad() -> int:
        await asyncio.sleep(0.01)
        raise InvalidArgument("b.jpg: not an image")

    with pytest.raises(InvalidArgument, match="not an image"):
        asyncio.run(run_bounded([slow, bad, slow], 3))
    assert cancelled == [True, True]
