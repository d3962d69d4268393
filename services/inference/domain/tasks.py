"""Queued inference tasks of the 002 document: POST /api/inference?index=N stores a pending task, workers run
the tasks oldest first through an injected runner, publish each task's result files with one rename and
record the outcome.

A committed row is the truth. A task's result directory is published before its row says `completed`; after
a crash, recover() queues interrupted tasks again (or fails them once they were interrupted max_attempts
times) and removes every directory no completed task vouches for.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow_precise
from services.common.downloads import Download, file_chunks
from services.common.errors import Conflict, InvalidArgument, NotFound, ServiceError, Unavailable
from services.common.storage.db import paged, transaction
from services.common.storage.files import discard_leftover, fsync_dir, staging_dir
from services.inference.domain.samples import Sample, SampleSet, natural_key
from services.inference.storage.files import InferenceFiles
from services.inference.storage.tables import TaskRow

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
# Pause of a worker after an error outside the runner (e.g. the database is unreachable) before it retries.
RETRY_SECONDS = 1.0


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class TaskRecord:
    """A snapshot of a task's row: callers never hold SQLAlchemy objects."""

    task_id: str
    index: int
    sample_name: str
    model_id: str
    status: str  # a TaskStatus value
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    inference_time: float | None  # seconds the runner took
    error_message: str | None

    @classmethod
    def of(cls, row: TaskRow) -> TaskRecord:
        return cls(**{field.name: getattr(row, field.name) for field in fields(cls)})


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


def _describe(error: Exception) -> str:
    """A failed task's error_message: a domain error's own words. Anything else is only named by its type: its
    text may name server paths or addresses (an OSError's file name, a connection's peer); the log has it."""
    if isinstance(error, ServiceError):
        return error.detail
    return f"internal error ({type(error).__name__}); the service log has the details"


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
        self._db = db
        self._files = files
        self._samples = samples
        self._runner = runner
        self._capacity = capacity
        self._workers = workers
        self._max_attempts = max_attempts
        self._resolve_model = resolve_model
        self._submit_lock = asyncio.Lock()  # counting the waiting tasks and adding one are a single step
        self._claim_lock = asyncio.Lock()  # one worker at a time takes the oldest pending task
        # Released once per task to run; a worker acquires it, then takes the oldest pending task. Extra
        # releases (a task submitted before run() started counts twice) only make a worker find nothing.
        self._to_run = asyncio.Semaphore(0)
        self._running = False

    # -- submitting ----------------------------------------------------------------------------------------

    async def submit(self, index: int) -> TaskRecord:
        """A new pending task on sample `index`. InvalidArgument / NotFound for a bad index, Unavailable when
        `capacity` tasks are already waiting; errors of resolve_model (no model to run) pass through."""
        sample = await asyncio.to_thread(self._samples.get, index)
        model_id = await self._resolve_model()
        async with self._submit_lock:
            record = await asyncio.to_thread(self._insert_within_capacity, sample, model_id)
        self._to_run.release()
        log.info("inference task queued", task_id=record.task_id, index=index, model_id=model_id)
        return record

    def _insert_within_capacity(self, sample: Sample, model_id: str) -> TaskRecord:
        with transaction(self._db) as session:
            waiting = self._count(session, TaskStatus.PENDING)
            if waiting >= self._capacity:
                raise Unavailable(f"任务队列已满 (task queue is full: {waiting} tasks waiting); retry later")
            row = TaskRow(
                task_id=str(uuid.uuid4()),
                index=sample.index,
                sample_name=sample.name,
                model_id=model_id,
                status=TaskStatus.PENDING,
                attempts=0,
                created_at=utcnow_precise(),  # tasks submitted within one second stay in order
            )
            session.add(row)
            return TaskRecord.of(row)

    @staticmethod
    def _count(session: Session, status: TaskStatus) -> int:
        return session.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.status == status)) or 0

    # -- reading -------------------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """NotFound for an unknown ID, including anything that is not a UUID."""
        with self._db() as session:
            row = session.get(TaskRow, task_id) if TASK_ID.fullmatch(task_id) else None
            if row is None:
                raise NotFound(f"Task {task_id} not found")
            return TaskRecord.of(row)

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
        query = select(TaskRow).order_by(TaskRow.created_at.desc(), TaskRow.task_id.desc())
        count = select(func.count()).select_from(TaskRow)
        if status:
            query, count = query.where(TaskRow.status == status), count.where(TaskRow.status == status)
        with self._db() as session:
            total = session.scalar(count) or 0
            rows = session.scalars(paged(query, page, page_size, MAX_PAGE_SIZE))
            return [TaskRecord.of(row) for row in rows], total, page, page_size

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
        with self._db() as session:
            pending = self._count(session, TaskStatus.PENDING)
            processing = self._count(session, TaskStatus.PROCESSING)
        return QueueStats(pending, processing, self._running)

    # -- running -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The workers, `workers` tasks at once, oldest first, until cancelled (service shutdown). A task the
        cancellation cuts off stays `processing`: recover() at the next start deals with it."""
        for _ in range((await asyncio.to_thread(self.stats)).pending):  # those waiting from before a restart
            self._to_run.release()
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(1, self._workers + 1):
                    group.create_task(self._work(), name=f"inference-task-worker-{number}")
        finally:
            self._running = False

    async def _work(self) -> None:
        while True:
            await self._to_run.acquire()
            try:
                async with self._claim_lock:
                    record = await asyncio.to_thread(self._claim_oldest)
                if record is not None:
                    await self._process(record)
            except Exception:  # bookkeeping errors (database down) must not stop the queue
                log.exception("inference task queue error; retrying")
                await asyncio.sleep(RETRY_SECONDS)
                self._to_run.release()  # the task it was about to take may still be pending

    def _claim_oldest(self) -> TaskRecord | None:
        with transaction(self._db) as session:
            row = session.scalars(
                select(TaskRow)
                .where(TaskRow.status == TaskStatus.PENDING)
                .order_by(TaskRow.created_at, TaskRow.task_id)
                .limit(1)
            ).first()
            if row is None:
                return None
            row.status, row.attempts, row.started_at = TaskStatus.PROCESSING, row.attempts + 1, utcnow_precise()
            return TaskRecord.of(row)

    async def _process(self, record: TaskRecord) -> None:
        with structlog.contextvars.bound_contextvars(task_id=record.task_id):
            log.info("inference task started", index=record.index, model_id=record.model_id, attempt=record.attempts)
            try:
                inference_time = await self._run_into_results(record)
            except Exception as error:  # whatever the runner raises fails its task only
                if isinstance(error, ServiceError):
                    log.warning("inference task failed", error=error.detail)
                else:
                    log.exception("inference task failed")
                await asyncio.to_thread(
                    self._finish, record.task_id, status=TaskStatus.FAILED, error_message=_describe(error)
                )
                return
            await asyncio.to_thread(
                self._finish, record.task_id, status=TaskStatus.COMPLETED, inference_time=inference_time
            )
            log.info("inference task completed", inference_time=inference_time)

    async def _run_into_results(self, record: TaskRecord) -> float:
        """Run the runner into a staging directory and publish it as the task's result directory; returns
        the runner's wall time in seconds. The staging directory goes whatever happens."""
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
        return inference_time

    def _publish(self, staging: Path, task_id: str) -> None:
        os.rename(staging, self._files.task_dir(task_id))
        fsync_dir(self._files.tasks_root)

    def _finish(self, task_id: str, **changes: Any) -> None:
        with transaction(self._db) as session:
            session.execute(
                update(TaskRow).where(TaskRow.task_id == task_id).values(completed_at=utcnow_precise(), **changes)
            )

    # -- start-up ------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up, before run(): tasks a crash cut off are queued again, or failed once they were
        interrupted max_attempts times (a task that brings the service down must not do so forever); staging
        leftovers and result directories without a completed task are removed. Pending tasks need nothing:
        run() takes them, oldest first."""
        with transaction(self._db) as session:
            interrupted = session.scalars(select(TaskRow).where(TaskRow.status == TaskStatus.PROCESSING)).all()
            for row in interrupted:
                if row.attempts < self._max_attempts:
                    row.status, row.started_at = TaskStatus.PENDING, None
                    log.warning("inference task interrupted; queued again", task_id=row.task_id, attempts=row.attempts)
                else:
                    row.status, row.completed_at = TaskStatus.FAILED, utcnow_precise()
                    row.error_message = f"interrupted {row.attempts} times (the service stopped while it ran)"
                    log.warning("inference task interrupted too often; failed", task_id=row.task_id)
            completed = set(session.scalars(select(TaskRow.task_id).where(TaskRow.status == TaskStatus.COMPLETED)))
        root = self._files.tasks_root
        # Staging and trash leftovers are never task IDs, so they go too.
        for entry in root.iterdir() if root.is_dir() else ():
            if entry.name not in completed:
                discard_leftover(entry)
