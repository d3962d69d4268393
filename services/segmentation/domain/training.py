"""Component classifier trainings (the 004 document's training APIs) and the registry of trained models.

A training is a TrainingTaskRow (task_status 300 running or waiting, 200 done, 400 failed, 500 stopped) and
its directory training/<task id>/. `start` writes the directory first -- spec.json (what to train) and
resources/, hard links to the user's training resources as they are now, so replacing a resource later
never changes the data of an existing training (nor of its resumption) -- and then inserts the row.

One training runs at a time (the document's err 800 refuses a second): `run` is the supervisor loop, which
takes the oldest row with status 300 and runs `python -m services.segmentation.worker <dir>` for it. The
worker reports through files in the directory: progress.json after each epoch (copied into the row about
once a second, for the query API), model.onnx and result.json at the end; its exit code says how it ended
(0 done; 3 stopped by SIGTERM, with the best model so far if an epoch ended; anything else failed, the end of
its output, kept in worker.log, then says why). A produced model is
written into Triton's model repository under the task id -- which from then on is a model id
(model_ready) -- and `on_model_ready(task id)` lets the service load it.

Crashes: a worker dies with the service (SIGKILL on parent death), and its row stays 300; the next `run`
launches it again and the worker resumes from its last epoch checkpoint. Every launch counts as an attempt;
a training launched `max_attempts` times without ending is marked failed. A clean shut-down (`shutdown`)
stops the worker with SIGTERM (it saves its position within the epoch) and gives the attempt back.

The built-in classifier (DEFAULT_MODEL_ID) is an ordinary training of rendered components only (no
downloads), created by `ensure_builtin` at the first start (and queued again at a start after it failed);
`resolve_model("")` names it unless the operator configured another default.

Owners: a training belongs to the `user_id` that started it. Only that user may query or stop it; to anyone
else it does not exist (err 803, as for an unknown id), so nobody learns another user's task ids. The built-in
classifier's training is the platform's: every user may query it, nobody may stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow, utcnow_precise
from services.common.envelope import EnvelopeError, Err, TaskStatus
from services.common.processes import dying_with_parent
from services.common.storage.db import transaction
from services.common.storage.files import atomic_write_text, link_or_copy, read_json_file, remove_tree
from services.common.triton.repository import write_triton_model
from services.common.triton.settings import TritonSettings
from services.segmentation.domain.classification import ClassifierModel
from services.segmentation.domain.classifier import IMAGE_SIZE
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import TrainingResourceRow, TrainingTaskRow

log = structlog.get_logger(__name__)

TASK_PREFIX = "Train-imgSeg-"
DEFAULT_MODEL_ID = f"{TASK_PREFIX}default"
TASK_TYPE = "train"
SYSTEM_USER = "system"
# Trainings are reproducible: the same data and parameters give the same model.
TRAINING_SEED = 0
# The built-in classifier's optimiser settings (Adam); its epochs and data sizes are settings.
BUILTIN_BATCH_SIZE = 32
BUILTIN_LEARNING_RATE = 0.001
MAX_EPOCHS = 200
MAX_BATCH_SIZE = 512
STOPPED_EXIT_CODE = 3  # the worker's exit code after a SIGTERM
# Files of a training directory (services/segmentation/worker.py's protocol).
SPEC_FILE = "spec.json"
PROGRESS_FILE = "progress.json"
RESULT_FILE = "result.json"
MODEL_FILE = "model.onnx"
WORKER_LOG = "worker.log"
RESOURCES_DIR = "resources"
_MAX_USER_ID_LENGTH = 128  # TrainingTaskRow.user_id
_DETAIL_LINES = 8  # of worker.log, in the detail of a failed training
# A stop is checked before every batch, so a worker normally ends within a batch; this bounds a stuck one.
_STOP_GRACE_SECONDS = 60.0
# run() is woken by start(); the idle poll only covers rows inserted by another process.
_IDLE_POLL_SECONDS = 5.0

# The document's progress fields, as reported before the first epoch has been validated.
_EMPTY_PROGRESS: dict[str, Any] = {
    "acc": 0.0,
    "loss": 0.0,
    "epoch": 0,
    "modelEpoch": 0,
    "labels": [],
    "singleAcc": [],
    "dataset_num": 0,
    "valAccList": [],
    "valLossList": [],
}


@dataclass(frozen=True)
class TrainingState:
    task_id: str
    user_id: str
    task_type: str
    task_status: int
    progress: dict[str, Any]  # the document's fields (acc, loss, epoch, modelEpoch, labels, ...)
    model_ready: bool  # task_id is usable as a model id
    heldout_acc: float | None  # accuracy on rendered images no epoch trained or validated on (built-in only)
    detail: str | None  # why it failed


@dataclass
class _Running:
    task_id: str
    process: asyncio.subprocess.Process
    progress: dict[str, Any] = field(default_factory=dict)  # the last one copied into the row
    stop_requested: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set once its row has its outcome


def document_progress(raw: dict[str, Any]) -> dict[str, Any]:
    """The worker's progress in the document's form: numbers where it has none yet (acc and loss before the
    first validation; singleAcc of a type without validation images reads 0)."""
    progress = {key: raw.get(key) if raw.get(key) is not None else empty for key, empty in _EMPTY_PROGRESS.items()}
    progress["singleAcc"] = [0.0 if value is None else value for value in progress["singleAcc"]]
    return progress


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-_DETAIL_LINES:])


def _check_user_id(user_id: str) -> None:
    """The document takes user_id as given (传入什么使用什么), but it must be there: it names the owner."""
    if not user_id.strip():
        raise EnvelopeError(Err.INVALID_PARAMETER, "user_id is required")
    if len(user_id) > _MAX_USER_ID_LENGTH:
        raise EnvelopeError(Err.INVALID_PARAMETER, f"user_id must have at most {_MAX_USER_ID_LENGTH} characters")


def _check_params(task_type: str, epochs: int, batch_size: int, learning_rate: float) -> None:
    if task_type != TASK_TYPE:
        raise EnvelopeError(Err.INVALID_PARAMETER, f"task_type must be {TASK_TYPE!r}, not {task_type!r}")
    if not 1 <= epochs <= MAX_EPOCHS:
        raise EnvelopeError(Err.INVALID_PARAMETER, f"epochs must be between 1 and {MAX_EPOCHS}, not {epochs}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise EnvelopeError(
            Err.INVALID_PARAMETER, f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}"
        )
    if not (math.isfinite(learning_rate) and 0 < learning_rate <= 1):
        raise EnvelopeError(Err.INVALID_PARAMETER, f"learning_rate must be in (0, 1], not {learning_rate}")


class TrainingManager:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: SegmentationFiles,
        *,
        repository: Path,
        triton: TritonSettings,
        on_model_ready: Callable[[str], Awaitable[None]],
        default_model_id: str = "",
        builtin_epochs: int,
        builtin_per_class: int,
        builtin_heldout_per_class: int,
        training_rendered_per_class: int,
        training_threads: int,
        training_max_attempts: int,
        stop_grace_seconds: float = _STOP_GRACE_SECONDS,
        poll_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self._files = files
        self._repository = repository
        self._triton = triton
        self._on_model_ready = on_model_ready
        self._default_model_id = default_model_id.strip() or DEFAULT_MODEL_ID
        self._builtin_epochs = builtin_epochs
        self._builtin_per_class = builtin_per_class
        self._builtin_heldout_per_class = builtin_heldout_per_class
        self._rendered_per_class = training_rendered_per_class
        self._threads = training_threads
        self._max_attempts = training_max_attempts
        self._stop_grace = stop_grace_seconds
        self._poll = poll_seconds
        self._running: _Running | None = None
        self._shutting_down = False
        # Held while a task is created, claimed and launched, or stopped before launch: a task stopped while
        # waiting is never launched, and only one task is ever created while none runs.
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()

    # -- the API -------------------------------------------------------------------------------------------

    async def start(
        self, user_id: str, task_type: str, *, epochs: int, batch_size: int, learning_rate: float
    ) -> TrainingState:
        """A new training of `user_id`'s resources and rendered components; err 800 while one is running."""
        _check_user_id(user_id)
        _check_params(task_type, epochs, batch_size, learning_rate)
        params = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
        async with self._lock:
            state = await asyncio.to_thread(self._create_user_training, user_id, params)
        self._wakeup.set()
        log.info("classifier training created", task_id=state.task_id, user_id=user_id, **params)
        return state

    async def query(self, task_id: str, user_id: str) -> TrainingState:
        """A training of `user_id` (or the built-in classifier's); err 803 for any other."""
        _check_user_id(user_id)
        return await asyncio.to_thread(self._state_for, task_id, user_id)

    async def stop(self, task_id: str, user_id: str) -> TrainingState:
        """Stop a training of `user_id`: a running worker gets SIGTERM (and keeps the best model so far, if any),
        a waiting training is marked stopped, a finished one is answered as it is. The built-in classifier's
        training cannot be stopped: requests naming no model depend on it."""
        _check_user_id(user_id)
        async with self._lock:
            state = await asyncio.to_thread(self._state_for, task_id, user_id)
            if state.task_id == DEFAULT_MODEL_ID:
                raise EnvelopeError(
                    Err.INVALID_PARAMETER,
                    f"{DEFAULT_MODEL_ID} is the platform's built-in classifier: it cannot be stopped",
                    http_status=403,
                )
            running = self._running
            if running is None or running.task_id != state.task_id:
                return await asyncio.to_thread(self._stop_waiting, state.task_id)
            running.stop_requested = True
            self._signal(running, signal.SIGTERM)
        log.info("classifier training stop requested", task_id=state.task_id)
        await self._wait_or_kill(running)
        return await asyncio.to_thread(self._state_of, state.task_id)

    def resolve_model(self, model_id: str) -> ClassifierModel:
        """The classifier a request names ("" = the default); err 805 when there is none to use, and why."""
        wanted = model_id.strip() or self._default_model_id
        with self._db() as session:
            row = self._find(session, wanted)
        if row is None:
            if wanted == DEFAULT_MODEL_ID and self._builtin_epochs <= 0:
                raise EnvelopeError(
                    Err.MODEL_ID_ERROR, "No default model: the built-in classifier is turned off (0 builtin epochs)"
                )
            raise EnvelopeError(Err.MODEL_ID_ERROR, f"Model {wanted!r} does not exist")
        if not row.model_ready:
            raise EnvelopeError(Err.MODEL_ID_ERROR, _not_ready_reason(row))
        return ClassifierModel(row.task_id, list(row.progress.get("labels") or []))

    # -- creating ------------------------------------------------------------------------------------------

    def ensure_builtin(self) -> None:
        """Create the built-in classifier's training unless it exists (or builtin epochs are 0: none). One that
        failed is queued again: without it requests naming no model have none, and it resumes from its last
        checkpoint."""
        if self._builtin_epochs <= 0:
            return
        with transaction(self._db) as session:
            builtin = session.get(TrainingTaskRow, DEFAULT_MODEL_ID)
            if builtin is not None:
                if builtin.task_status == TaskStatus.FAILED:
                    log.info("retrying the failed built-in classifier training", detail=builtin.detail)
                    builtin.task_status, builtin.attempts = int(TaskStatus.RUNNING), 0
                    builtin.finished_at = builtin.detail = None
                return
        params = {
            "epochs": self._builtin_epochs,
            "batch_size": BUILTIN_BATCH_SIZE,
            "learning_rate": BUILTIN_LEARNING_RATE,
        }
        self._create(
            DEFAULT_MODEL_ID,
            SYSTEM_USER,
            params,
            rendered_per_class=self._builtin_per_class,
            heldout_per_class=self._builtin_heldout_per_class,
            resources=[],
        )
        log.info("built-in classifier training created", task_id=DEFAULT_MODEL_ID, **params)

    def _create_user_training(self, user_id: str, params: dict[str, Any]) -> TrainingState:
        with self._db() as session:
            running = session.scalar(
                select(TrainingTaskRow).where(TrainingTaskRow.task_status == TaskStatus.RUNNING).limit(1)
            )
            resources = list(
                session.scalars(
                    select(TrainingResourceRow)
                    .where(TrainingResourceRow.user_id == user_id)
                    .order_by(TrainingResourceRow.created_at, TrainingResourceRow.key)
                )
            )
        if running is not None:
            # Named only to a user who may query it: another user's task id stays unknown to everyone else.
            which = f"Training {running.task_id}" if _visible(running, user_id) else "Another user's training"
            raise EnvelopeError(Err.TRAINING_RUNNING, f"{which} is running: one training runs at a time")
        return self._create(
            f"{TASK_PREFIX}{uuid.uuid4()}",
            user_id,
            params,
            rendered_per_class=self._rendered_per_class,
            heldout_per_class=0,
            resources=resources,
        )

    def _create(
        self,
        task_id: str,
        user_id: str,
        params: dict[str, Any],
        *,
        rendered_per_class: int,
        heldout_per_class: int,
        resources: list[TrainingResourceRow],
    ) -> TrainingState:
        """Write the training's directory, then its row (status 300): the files exist once the row does."""
        job_dir = self._files.training_dir(task_id)
        remove_tree(job_dir)  # a leftover of a creation that crashed before its row was written
        spec = {
            **params,
            "seed": TRAINING_SEED,
            "rendered_per_class": rendered_per_class,
            "heldout_per_class": heldout_per_class,
            "resources": self._snapshot_resources(resources, job_dir / RESOURCES_DIR),
            "threads": self._threads,
        }
        atomic_write_text(job_dir / SPEC_FILE, json.dumps(spec, indent=2))
        row = TrainingTaskRow(
            task_id=task_id,
            user_id=user_id,
            task_type=TASK_TYPE,
            task_status=int(TaskStatus.RUNNING),
            params=params,
            progress={},
            model_ready=0,
            attempts=0,
            created_at=utcnow_precise(),
        )
        try:
            with transaction(self._db) as session:
                session.add(row)
        except BaseException:
            remove_tree(job_dir)
            raise
        return _state(row)

    def _snapshot_resources(self, resources: list[TrainingResourceRow], directory: Path) -> list[dict[str, str]]:
        """Hard links (copies across file systems) of the resources' images in the training's directory."""
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for resource in resources:
            target = directory / f"{resource.resource_id}.png"
            try:
                link_or_copy(self._files.resource_file(resource.resource_id), target)
            except FileNotFoundError:
                continue  # replaced by the same key a moment ago: its successor's row was not read
            entries.append({"path": str(target), "label": resource.component_type})
        return entries

    # -- reading -------------------------------------------------------------------------------------------

    @staticmethod
    def _find(session: Session, task_id: str) -> TrainingTaskRow | None:
        """The row of a task id in any letter case (the document writes both Train-imgSeg- and Train-imgseg-)."""
        wanted = task_id.strip()
        if not wanted:
            return None
        row = session.get(TrainingTaskRow, wanted)
        if row is None:
            row = session.scalar(select(TrainingTaskRow).where(func.lower(TrainingTaskRow.task_id) == wanted.lower()))
        return row

    def _state_for(self, task_id: str, user_id: str) -> TrainingState:
        """The state of a training `user_id` may see; one of another user is answered as unknown."""
        with self._db() as session:
            row = self._find(session, task_id)
        if row is not None and not _visible(row, user_id):
            log.info("training task of another user asked for", task_id=row.task_id, user_id=user_id)
            row = None
        if row is None:
            raise EnvelopeError(Err.UNKNOWN_TASK, f"Training task {task_id.strip()!r} does not exist")
        return _state(row)

    def _state_of(self, task_id: str) -> TrainingState:
        """The state of a training found by the manager itself (no owner to check)."""
        with self._db() as session:
            row = session.get(TrainingTaskRow, task_id)
        if row is None:
            raise EnvelopeError(Err.UNKNOWN_TASK, f"Training task {task_id!r} does not exist")
        return _state(row)

    # -- running -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run waiting trainings one at a time, oldest first, until shut down (or cancelled)."""
        while not self._shutting_down:
            self._wakeup.clear()
            try:
                ran = await self._run_next()
            except Exception:  # the supervisor outlives any one training's trouble (a busy database, a full disk)
                log.exception("classifier training supervision failed")
                ran = False
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), _IDLE_POLL_SECONDS)

    async def _run_next(self) -> bool:
        """Run the next waiting training to its end; False when none waits."""
        async with self._lock:
            task_id = await asyncio.to_thread(self._claim_next)
            if task_id is None:
                return False
            try:
                running = await self._launch(task_id)
            except OSError as error:
                await self._fail(task_id, f"the training worker could not be started: {error}")
                return True
        try:
            await self._supervise(running)
        finally:
            self._running = None
            running.finished.set()
        return True

    def _claim_next(self) -> str | None:
        """The oldest waiting training, its launch counted; trainings out of attempts are marked failed."""
        with transaction(self._db) as session:
            while True:
                row = session.scalar(
                    select(TrainingTaskRow)
                    .where(TrainingTaskRow.task_status == TaskStatus.RUNNING)
                    .order_by(TrainingTaskRow.created_at, TrainingTaskRow.task_id)
                    .limit(1)
                )
                if row is None:
                    return None
                if row.attempts < self._max_attempts:
                    row.attempts += 1
                    return row.task_id
                row.task_status, row.finished_at = int(TaskStatus.FAILED), utcnow()
                row.detail = f"interrupted {row.attempts} times"
                session.flush()
                log.warning("classifier training failed: out of attempts", task_id=row.task_id)

    async def _launch(self, task_id: str) -> _Running:
        job_dir = self._files.training_dir(task_id)
        for leftover in (MODEL_FILE, RESULT_FILE):  # this launch's outcome only, not an earlier stop's
            (job_dir / leftover).unlink(missing_ok=True)
        command = [sys.executable, "-m", "services.segmentation.worker", str(job_dir)]
        with open(job_dir / WORKER_LOG, "ab") as worker_log:
            process = await asyncio.create_subprocess_exec(
                *dying_with_parent(command, signal.SIGKILL),  # a worker never outlives its supervisor
                stdin=asyncio.subprocess.DEVNULL,
                stdout=worker_log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is the service's to handle, not the worker's
            )
        log.info("classifier training worker started", task_id=task_id, pid=process.pid)
        self._running = _Running(task_id, process)
        return self._running

    async def _supervise(self, running: _Running) -> None:
        process = running.process
        try:
            while True:
                try:
                    code = await asyncio.wait_for(asyncio.shield(process.wait()), self._poll)
                    break
                except TimeoutError:
                    await self._record_progress(running)
        except BaseException:
            # Cancelled (the service goes away without a shut-down) or unable to go on supervising: the worker
            # goes too, as in a crash, so a later launch never finds a second worker in the directory.
            self._signal(running, signal.SIGKILL)
            await process.wait()
            raise
        await self._record_progress(running)
        task_id = running.task_id
        if code == 0:
            await self._finish(task_id, TaskStatus.DONE)
        elif running.stop_requested:
            await self._finish(task_id, TaskStatus.STOPPED)
        elif self._shutting_down:
            await asyncio.to_thread(self._update, task_id, attempts=TrainingTaskRow.attempts - 1)
            log.info("classifier training interrupted by shut-down; resumes at the next start", task_id=task_id)
        elif code == STOPPED_EXIT_CODE:  # someone else sent the worker SIGTERM: a stop all the same
            await self._finish(task_id, TaskStatus.STOPPED)
        else:
            tail = await asyncio.to_thread(_log_tail, self._files.training_dir(task_id) / WORKER_LOG)
            await self._fail(task_id, f"the training worker exited with code {code}" + (f": {tail}" if tail else ""))

    async def _record_progress(self, running: _Running) -> None:
        progress = await asyncio.to_thread(read_json_file, self._files.training_dir(running.task_id) / PROGRESS_FILE)
        if progress and progress != running.progress:
            await asyncio.to_thread(self._update, running.task_id, progress=progress)
            running.progress = progress

    async def _finish(self, task_id: str, status: TaskStatus) -> None:
        """Record a training that ended (done or stopped), its model in Triton's repository when it has one."""
        try:
            model_ready = await asyncio.to_thread(self._publish, task_id, status)
        except Exception as error:  # whatever went wrong is the training's failure detail
            log.exception("classifier model could not be published", task_id=task_id)
            await self._fail(task_id, f"the trained model could not be published: {error}")
            return
        log.info("classifier training finished", task_id=task_id, status=int(status), model_ready=model_ready)
        if model_ready:
            try:
                await self._on_model_ready(task_id)
            except Exception:  # the model is in the repository; the model server loads it on use
                log.exception("trained classifier could not be loaded now", task_id=task_id)

    def _publish(self, task_id: str, status: TaskStatus) -> bool:
        job_dir = self._files.training_dir(task_id)
        result = read_json_file(job_dir / RESULT_FILE)
        progress = read_json_file(job_dir / PROGRESS_FILE)
        model = job_dir / MODEL_FILE
        if status == TaskStatus.DONE and not model.exists():
            raise FileNotFoundError(f"the worker ended without writing {MODEL_FILE}")
        labels = list(result.get("labels") or progress.get("labels") or [])
        if model.exists():
            write_triton_model(self._repository, task_id, model, labels, IMAGE_SIZE, settings=self._triton)
        self._update(
            task_id,
            task_status=int(status),
            progress={**progress, "labels": labels},
            model_ready=int(model.exists()),
            heldout_acc=result.get("heldout_acc"),
            finished_at=utcnow(),
            detail=None,
        )
        return model.exists()

    async def _fail(self, task_id: str, detail: str) -> None:
        log.warning("classifier training failed", task_id=task_id, detail=detail)
        await asyncio.to_thread(
            self._update, task_id, task_status=int(TaskStatus.FAILED), finished_at=utcnow(), detail=detail
        )

    def _update(self, task_id: str, **changes: Any) -> None:
        with transaction(self._db) as session:
            row = session.get(TrainingTaskRow, task_id)
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)

    def _stop_waiting(self, task_id: str) -> TrainingState:
        """Mark a training that waits for its launch stopped; any other is returned as it is."""
        with transaction(self._db) as session:
            row = session.get(TrainingTaskRow, task_id)
            if row is not None and row.task_status == TaskStatus.RUNNING:
                row.task_status, row.finished_at = int(TaskStatus.STOPPED), utcnow()
                log.info("classifier training stopped before it was launched", task_id=task_id)
        return self._state_of(task_id)

    @staticmethod
    def _signal(running: _Running, signum: signal.Signals) -> None:
        if running.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                running.process.send_signal(signum)

    async def _wait_or_kill(self, running: _Running) -> None:
        """Wait until the run loop has recorded the worker's end; kill a worker that ignores SIGTERM."""
        try:
            await asyncio.wait_for(asyncio.shield(running.finished.wait()), self._stop_grace)
        except TimeoutError:
            log.warning("classifier training worker ignored SIGTERM: killing it", task_id=running.task_id)
            self._signal(running, signal.SIGKILL)
            await running.finished.wait()

    async def shutdown(self) -> None:
        """Stop the running worker (its training stays 300 and resumes at the next start); `run` returns."""
        self._shutting_down = True
        self._wakeup.set()
        running = self._running
        if running is not None:
            self._signal(running, signal.SIGTERM)
            await self._wait_or_kill(running)


def _visible(row: TrainingTaskRow, user_id: str) -> bool:
    """Whether `user_id` may see a training: their own, or the built-in classifier's (the platform's)."""
    return row.task_id == DEFAULT_MODEL_ID or row.user_id == user_id


def _state(row: TrainingTaskRow) -> TrainingState:
    return TrainingState(
        task_id=row.task_id,
        user_id=row.user_id,
        task_type=row.task_type,
        task_status=row.task_status,
        progress=document_progress(row.progress or {}),
        model_ready=bool(row.model_ready),
        heldout_acc=row.heldout_acc,
        detail=row.detail,
    )


def _not_ready_reason(row: TrainingTaskRow) -> str:
    if row.task_status == TaskStatus.RUNNING:
        epoch = (row.progress or {}).get("epoch") or 0
        return f"Model {row.task_id!r} is still training (epoch {epoch} of {row.params.get('epochs')})"
    if row.task_status == TaskStatus.FAILED:
        return f"Model {row.task_id!r} has no model: its training failed ({row.detail or 'no reason recorded'})"
    return f"Model {row.task_id!r} has no model: its training was stopped before the first epoch ended"
