"""The built-in classifier at the service's start-up.

Every request that names no model uses it, and answers err 805 while it trains (minutes at a first start). So
the service reports ready (gRPC health, which the launcher waits for) only once its training has ended, and
the operator sees the training's progress in the service's log, the `./mesh up` terminal: a line when it
starts, one per epoch, one at the end.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from services.common.envelope import EnvelopeError, Err, TaskStatus
from services.common.storage.files import read_json_file
from services.segmentation.domain.training import DEFAULT_MODEL_ID, SPEC_FILE, SYSTEM_USER, TrainingState
from services.segmentation.storage.files import SegmentationFiles

log = structlog.get_logger(__name__)


class Trainings(Protocol):
    async def query(self, task_id: str, user_id: str) -> TrainingState: ...


class BuiltinClassifierStart:
    def __init__(self, trainings: Trainings, files: SegmentationFiles, *, poll_seconds: float = 1.0) -> None:
        self._trainings = trainings
        self._files = files
        self._poll = poll_seconds

    async def _state(self) -> TrainingState | None:
        """The built-in classifier's training; None when there is none (0 builtin epochs)."""
        try:
            return await self._trainings.query(DEFAULT_MODEL_ID, SYSTEM_USER)
        except EnvelopeError as error:
            if error.err != Err.UNKNOWN_TASK:
                raise
            return None

    async def settled(self) -> bool:
        """False while the built-in classifier's training waits or runs; True once it has ended, whichever
        way (waiting longer would not change what requests get), or when there is none."""
        state = await self._state()
        return state is None or state.task_status != TaskStatus.RUNNING

    async def follow(self) -> None:
        """Log the training's progress until it has ended; nothing when it had already ended."""
        state = await self._state()
        if state is None or state.task_status != TaskStatus.RUNNING:
            return
        spec = await asyncio.to_thread(read_json_file, self._files.training_dir(DEFAULT_MODEL_ID) / SPEC_FILE)
        epochs = spec.get("epochs")
        logged = len(state.progress["valAccList"])
        log.info(
            "training the built-in component classifier; the service reports ready once it is trained",
            task_id=DEFAULT_MODEL_ID,
            epochs=epochs,
            epochs_done=logged,
        )
        while state.task_status == TaskStatus.RUNNING:
            await asyncio.sleep(self._poll)
            state = await self._state()
            if state is None:  # deleted under us: nothing to wait for
                return
            accuracies, losses = state.progress["valAccList"], state.progress["valLossList"]
            for epoch in range(logged + 1, len(accuracies) + 1):
                log.info(
                    "built-in classifier: epoch trained",
                    epoch=f"{epoch}/{epochs}",
                    val_acc=round(accuracies[epoch - 1], 3),
                    val_loss=round(losses[epoch - 1], 3),
                )
            logged = max(logged, len(accuracies))
        if state.task_status == TaskStatus.DONE:
            log.info("built-in classifier ready", acc=state.progress["acc"], heldout_acc=state.heldout_acc)
        elif state.task_status == TaskStatus.FAILED:
            log.error(
                "built-in classifier training failed: requests that name no model answer 805 until a start "
                "trains it again",
                detail=state.detail,
            )
        else:
            log.warning("built-in classifier training stopped", model_ready=state.model_ready)
