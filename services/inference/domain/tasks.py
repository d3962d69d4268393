"""Queued inference tasks of the 002 document, on the work engine (services.common.work): POST
/api/inference?index=N queues a work item, the workers of any replica run it through an injected runner,
publish its result files with one rename and record the outcome.

A committed row is the truth. A task's result directory is published before its row says `completed`; a task
whose run was cut off (its replica stopped or died) is queued again, up to max_attempts runs in all; at start-up
recover() removes every directory no completed task vouches for. The document's words (pending, processing)
are the engine's queued and running.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import structlog
from sqlalchemy.orm import Session, sessionmaker

from services.common.downloads import Download, file_chunks
from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.storage.files import discard_leftover, fsync_dir, staging_dir
from services.common.work import WorkContext, WorkerPool, WorkItem, WorkKind, WorkQueue, WorkStatus
from services.inference.domain.samples import Sample, SampleSet, natural_key
from services.inference.storage.files import InferenceFiles
from services.inference.storage.tables import WorkItemRow

log = structlog.get_logger(__name__)

# The canonical text of a UUID, the only form task IDs take (anything else is unknown, never a lookup).
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
# Result files that are served, by suffix; the part of the type before "/" is the documented file type.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".m4v": "video/x-m4v",
}
KIND = "inference_task"


class TaskStatus(StrEnum):
    """The document's words for a task's state."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


# The engine's states in the document's words; a task is never stopped or interrupted (it fails instead).
_DOCUMENT_STATUS = {
    WorkStatus.QUEUED: TaskStatus.PENDING,
    WorkStatus.RUNNING: TaskStatus.PROCESSING,
    WorkStatus.COMPLETED: TaskStatus.COMPLETED,
    WorkStatus.FAILED: TaskStatus.FAILED,
    WorkStatus.STOPPED: TaskStatus.FAILED,
    WorkStatus.INTERRUPTED: TaskStatus.FAILED,
}


@dataclass(frozen=True)
class TaskRecord:
    """A task as the document describes it."""

    task_id: str
    index: int
    sample_name: str
    model_id: str
    status: TaskStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None  # of its first run; None while it waits
    completed_at: datetime | None
    inference_time: float | None  # seconds the runner took
    error_message: str | None

    @classmethod
    def of(cls, item: WorkItem) -> TaskRecord:
        status = _DOCUMENT_STATUS[item.status]
        return cls(
            task_id=item.item_id,
            index=int(item.spec["index"]),
            sample_name=str(item.spec["sample_name"]),
            model_id=str(item.spec["model_id"]),
            status=status,
            attempts=item.attempts,
            created_at=item.created_at,
            started_at=None if status == TaskStatus.PENDING else item.started_at,
            completed_at=item.finished_at,
            inference_time=item.result.get("inference_time"),
            error_message=item.error,
        )


@dataclass(frozen=True)
class ResultFile:
    filename: str
    type: str  # image | video
    url: str  # the documented GET /api/task/{task_id}/file/{filename}


@dataclass(frozen=True)
class QueueStats:
    pending: int
    processing: int
    running: bool  # the workers are alive


# Does the inference of one task: writes its result files (images, videos) into the given directory, a staging
# directory published as the task's result directory once the runner returns. Raising fails the task with the
# exception's message.
TaskRunner = Callable[[TaskRecord, Sample, Path], Awaitable[None]]


class TaskQueue:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: InferenceFiles,
        samples: SampleSet,
        runner: TaskRunner,
        *,
        capacity: int,
        workers: int,
        max_attempts: int,
        resolve_model: Callable[[], Awaitable[str]],
    ) -> None:
        self._files = files
        self._samples = samples
        self._runner = runner
        self._capacity = capacity
        self._max_attempts = max_attempts
        self._resolve_model = resolve_model
        self._work = WorkQueue(db, WorkItemRow)
        self._workers = WorkerPool(self._work, [WorkKind(KIND, self._run_task, workers=workers)])

    # -- submitting ----------------------------------------------------------------------------------------

    async def submit(self, index: int) -> TaskRecord:
        """A new pending task on sample `index`. InvalidArgument / NotFound for a bad index, Unavailable when
        `capacity` tasks are already waiting; errors of resolve_model (no model to run) pass through."""
        sample = await asyncio.to_thread(self._samples.get, index)
        model_id = await self._resolve_model()
        item = await asyncio.to_thread(
            self._work.submit,
            str(uuid.uuid4()),
            KIND,
            {"index": sample.index, "sample_name": sample.name, "model_id": model_id},
            max_attempts=self._max_attempts,
            capacity=self._capacity,
            full_message="任务队列已满 (task queue is full: {waiting} tasks waiting); retry later",
        )
        self._workers.notify(KIND)
        log.info("inference task queued", task_id=item.item_id, index=index, model_id=model_id)
        return TaskRecord.of(item)

    # -- reading -------------------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """NotFound for an unknown ID, including anything that is not a UUID."""
        item = self._work.find(task_id) if TASK_ID.fullmatch(task_id) else None
        if item is None or item.kind != KIND:
            raise NotFound(f"Task {task_id} not found")
        return TaskRecord.of(item)

    def list(
        self, page: int | None = None, page_size: int | None = None, status: str = ""
    ) -> tuple[list[TaskRecord], int, int, int]:
        """One page of tasks, newest first: (tasks, how many match in all, page, page_size).

        None means unset: page 1, page_size 10; an empty status means every status. InvalidArgument for a
        page below 1, a page_size outside 1-100 or an unknown status.
        """
        page = 1 if page is None else page
        page_size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if page < 1:
            raise InvalidArgument(f"page must be >= 1 (got {page})")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE} (got {page_size})")
        if status and status not in set(TaskStatus):
            raise InvalidArgument(f"status must be one of {', '.join(TaskStatus)} (got {status!r})")
        statuses = [engine for engine, word in _DOCUMENT_STATUS.items() if word == status] if status else []
        items, total = self._work.list([KIND], statuses=statuses, page=page, page_size=page_size)
        return [TaskRecord.of(item) for item in items], total, page, page_size

    def result_files(self, task_id: str) -> list[ResultFile]:
        """The images and videos a completed task published, in natural name order; none before it completed.
        NotFound for an unknown task."""
        return [
            ResultFile(
                name, CONTENT_TYPES[path.suffix.lower()].partition("/")[0], f"/api/task/{task_id}/file/{quote(name)}"
            )
            for name, path in self._published(task_id).items()
        ]

    def open_file(self, task_id: str, filename: str) -> Download:
        """One of result_files(). The name is only looked up among them, never joined to a path: `../x`,
        absolute or encoded paths are simply unknown names (NotFound)."""
        path = self._published(task_id).get(filename)
        if path is None:
            raise NotFound(f"File {filename} not found in the results of task {task_id}")
        return Download(filename, CONTENT_TYPES[path.suffix.lower()], file_chunks(path), inline=True)

    def _published(self, task_id: str) -> dict[str, Path]:
        record = self.get(task_id)
        folder = self._files.task_dir(record.task_id)
        if record.status != TaskStatus.COMPLETED or not folder.is_dir():
            return {}
        served = (
            entry
            for entry in folder.iterdir()
            if entry.suffix.lower() in CONTENT_TYPES
            and not entry.name.startswith(".")
            and entry.is_file()
            and not entry.is_symlink()
        )
        # Images first, then videos, as the document's example lists them; natural name order within each.
        ordered = sorted(
            served, key=lambda path: (CONTENT_TYPES[path.suffix.lower()].startswith("video/"), natural_key(path.name))
        )
        return {path.name: path for path in ordered}

    def stats(self) -> QueueStats:
        pending = self._work.count([KIND], WorkStatus.QUEUED)
        processing = self._work.count([KIND], WorkStatus.RUNNING)
        return QueueStats(pending, processing, self._workers.started)

    # -- running -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The workers, oldest task first, until cancelled (service shutdown): a task the shutdown cuts off is
        queued again at once (another replica, or this one after its restart, runs it)."""
        await self._workers.run()

    async def _run_task(self, item: WorkItem, context: WorkContext) -> dict[str, float]:
        """Run the runner into a staging directory and publish it as the task's result directory; the result
        is the runner's wall time in seconds. The staging directory goes whatever happens."""
        record = TaskRecord.of(item)
        log.info("inference task started", index=record.index, model_id=record.model_id, attempt=record.attempts)
        sample = await asyncio.to_thread(self._samples.get, record.index)
        if sample.name != record.sample_name:
            raise Conflict(
                f"The sample set changed after the task was submitted: sample {record.index} is now "
                f"{sample.name!r}, not {record.sample_name!r}"
            )
        with staging_dir(self._files.tasks_root) as staging:
            started = time.monotonic()
            await self._runner(record, sample, staging)
            inference_time = round(time.monotonic() - started, 3)
            await asyncio.to_thread(self._publish, staging, record.task_id)
        log.info("inference task completed", inference_time=inference_time)
        return {"inference_time": inference_time}

    def _publish(self, staging: Path, task_id: str) -> None:
        os.rename(staging, self._files.task_dir(task_id))
        fsync_dir(self._files.tasks_root)

    # -- start-up ------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up, before run(): staging leftovers and result directories that no completed task vouches
        for are removed; those of running tasks are left alone (another replica may be publishing one now, and
        its staging directories are its own). Tasks a crash cut off are the work engine's: run() queues them
        again, or fails them once they were cut off max_attempts times, so that a task that brings the service
        down does not do so forever."""
        self._workers.rescue()  # what is still running after this runs in a live replica
        statuses = [WorkStatus.COMPLETED, WorkStatus.RUNNING]
        vouched = {item.item_id for item in self._work.list([KIND], statuses=statuses)[0]}
        root = self._files.tasks_root
        # Staging and trash leftovers are never task IDs, so they go too (unless a live replica's: see
        # discard_leftover).
        for entry in root.iterdir() if root.is_dir() else ():
            if entry.name not in vouched:
                discard_leftover(entry)
