"""The ServingExporter: exports one at a time in worker threads, callers wait for their model's outcome, and
exports left pending by a restart run first. The registry here stands in for the ONNX export itself (slow, and
tested in test_onnx_export.py); it records when and where each export ran."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from services.common.errors import NotFound
from services.training.domain.models import ServingExporter
from services.training.storage.tables import ModelRow

T = TypeVar("T")


class _Registry:
    def __init__(self, pending: list[str], seconds: float = 0.05) -> None:
        self.pending = pending
        self.seconds = seconds
        self.exported: list[str] = []
        self.threads: set[int] = set()
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def pending_exports(self) -> list[str]:
        return list(self.pending)

    def export_for_serving(self, model_id: str) -> ModelRow:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        if model_id.startswith("gone"):
            raise NotFound(f"Model {model_id!r} not found")
        self.exported.append(model_id)
        failed = model_id.startswith("bad")
        return ModelRow(
            model_id=model_id, export_status="failed" if failed else "ready", export_error="broken" if failed else ""
        )


async def _with_exporter(registry: _Registry, body: Callable[[ServingExporter], Awaitable[T]]) -> T:
    exporter = ServingExporter(registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(exporter.run())
    try:
        return await body(exporter)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_callers_get_their_models_outcome_after_the_exports_before_them() -> None:
    registry = _Registry(pending=["left_by_restart"])

    async def body(exporter: ServingExporter) -> list[ModelRow]:
        return await asyncio.gather(exporter.export("m1"), exporter.export("bad_m2"), exporter.export("m3"))

    loop_thread = threading.get_ident()
    rows = asyncio.run(_with_exporter(registry, body))
    assert [(row.model_id, row.export_status, row.export_error) for row in rows] == [
        ("m1", "ready", ""),
        ("bad_m2", "failed", "broken"),
        ("m3", "ready", ""),
    ]
    assert registry.exported == ["left_by_restart", "m1", "bad_m2", "m3"]
    assert registry.peak == 1  # one at a time
    assert loop_thread not in registry.threads  # never in the event loop's thread


def test_a_deleted_model_reaches_its_caller_and_the_queue_goes_on() -> None:
    registry = _Registry(pending=[])

    async def body(exporter: ServingExporter) -> ModelRow:
        with pytest.raises(NotFound):
            await exporter.export("gone_1")
        return await exporter.export("m2")

    assert asyncio.run(_with_exporter(registry, body)).export_status == "ready"


def test_a_caller_that_goes_away_does_not_cancel_the_export() -> None:
    registry = _Registry(pending=[], seconds=0.3)

    async def body(exporter: ServingExporter) -> ModelRow:
        impatient = asyncio.create_task(exporter.export("m1"))
        await asyncio.sleep(0.05)
        impatient.cancel()
        return await exporter.export("m2")

    assert asyncio.run(_with_exporter(registry, body)).model_id == "m2"
    assert registry.exported == ["m1", "m2"]


def test_stopping_the_exporter_releases_everyone_waiting() -> None:
    registry = _Registry(pending=[], seconds=0.3)

    async def scenario() -> list[object]:
        exporter = ServingExporter(registry)  # type: ignore[arg-type]
        runner = asyncio.create_task(exporter.run())
        waiting = [asyncio.create_task(exporter.export(f"m{n}")) for n in range(3)]
        await asyncio.sleep(0.1)  # m0 is being exported, m1 and m2 wait in the queue
        runner.cancel()
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), timeout=5)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
