"""services.segmentation.domain.builtin_start: the service is ready only once the built-in classifier's
training has ended, and says how that training goes, a line per epoch (a tiny real training through the real
worker, as in test_training)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from services.common.envelope import TaskStatus
from services.segmentation.domain.builtin_start import BuiltinClassifierStart
from services.segmentation.domain.training import DEFAULT_MODEL_ID
from tests.unit.segmentation.test_training import TRAINING_DEADLINE_S, Setup, run_with, setup  # noqa: F401


def test_ready_once_the_builtin_classifier_is_trained_with_a_line_per_epoch(setup: Setup) -> None:  # noqa: F811
    manager = setup.manager(builtin_epochs=2)
    manager.ensure_builtin()
    start = BuiltinClassifierStart(manager, setup.files, poll_seconds=0.05)

    async def scenario() -> tuple[bool, bool, list[dict]]:
        before = await start.settled()
        with capture_logs() as logs:
            await asyncio.wait_for(start.follow(), TRAINING_DEADLINE_S)
        return before, await start.settled(), logs

    before, after, logs = run_with(manager, scenario)
    assert (before, after) == (False, True)
    assert setup.row(DEFAULT_MODEL_ID).model_ready
    ours = [entry for entry in logs if "built-in" in entry["event"]]
    assert ours[0]["event"].startswith("training the built-in component classifier") and ours[0]["epochs"] == 2
    assert [entry["epoch"] for entry in ours[1:-1]] == ["1/2", "2/2"]
    assert all(0 <= entry["val_acc"] <= 1 for entry in ours[1:-1])
    assert ours[-1]["event"] == "built-in classifier ready" and ours[-1]["heldout_acc"] is not None


def test_an_ended_or_absent_builtin_training_does_not_hold_readiness(setup: Setup) -> None:  # noqa: F811
    manager = setup.manager(builtin_epochs=0)
    start = BuiltinClassifierStart(manager, setup.files)
    assert asyncio.run(start.settled())  # none (0 builtin epochs)
    setup.manager().ensure_builtin()
    assert not asyncio.run(start.settled())
    for status in (TaskStatus.FAILED, TaskStatus.STOPPED, TaskStatus.DONE):  # waiting would not change a thing
        setup.update(DEFAULT_MODEL_ID, task_status=int(status))
        assert asyncio.run(start.settled())
    with capture_logs() as logs:
        asyncio.run(start.follow())
    assert logs == []  # trained before this start: nothing to report
