"""Ingest tasks (POST /ingest): a screenshot in, its components out, as a task that survives restarts.

The row is the truth: a task is 300 until its result file is written and the row says 200 (or 400 with its
err). Workers take tasks from an in-memory queue that start-up refills from the rows still at 300, so a task a
crash interrupted runs again (at most `max_attempts` times in all, then it fails with 808).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow
from services.common.downloads import Download, file_chunks
from services.common.envelope import EnvelopeError, Err, TaskStatus, as_envelope_error
from services.common.errors import InvalidArgument, NotFound
from services.common.image_urls import LoadedImage, load_image
from services.common.images import read_header
from services.common.storage.db import transaction
from services.common.storage.files import atomic_write_text, staging_dir
from services.segmentation.domain.service import PageAnalysis
from services.segmentation.domain.tree import NamedComponent, TreeNode
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import IngestTaskRow

log = structlog.get_logger("segmentation.ingest")

_IMAGE_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tiff"}
_UPLOAD_NAME = re.compile(r"^ingest_[0-9a-f-]{36}\.[a-z]{3,4}$")
DOCUMENT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the document's created_at / finished_at


@dataclass(frozen=True)
class IngestState:
    task_id: str
    user_id: str
    task_status: int
    created_at: datetime
    finished_at: datetime | None
    segmenter: str
    upload_name: str | None
    err: int | None
    detail: str | None
    result: dict[str, Any] | None  # components_map, components_tree, page_meta (the document's JSON)


def _component_json(component: NamedComponent) -> dict[str, Any]:
    box = component.box
    return {
        "component_name": component.name,
        "component_type": component.component_type,
        "props": {
            "style": {"left": box.x0, "top": box.y0, "width": box.width, "height": box.height},
            "text": component.text,
        },
    }


def _tree_json(node: TreeNode) -> dict[str, Any]:
    return {"id": node.id, "children": [_tree_json(child) for child in node.children]}


def result_json(analysis: PageAnalysis) -> dict[str, Any]:
    return {
        "components_map": {name: _component_json(c) for name, c in analysis.schema.components.items()},
        "components_tree": _tree_json(analysis.schema.tree),
        "page_meta": {"width": analysis.width, "height": analysis.height},
    }


Analyse = Callable[[LoadedImage], Awaitable[PageAnalysis]]
LoadUrl = Callable[[str], Awaitable[LoadedImage]]


class IngestTasks:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: SegmentationFiles,
        *,
        analyse: Analyse,
        load_url: LoadUrl,
        segmenter: str,
        workers: int,
        max_attempts: int,
        max_image_pixels: int,
    ) -> None:
        self._db = db
        self._files = files
        self._analyse = analyse
        self._load_url = load_url
        self._segmenter = segmenter
        self._workers = workers
        self._max_attempts = max_attempts
        self._max_pixels = max_image_pixels
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._finished: dict[str, asyncio.Event] = {}

    # ---- submitting and reading ----

    def staging(self) -> AbstractContextManager[Path]:
        """A fresh directory for one request's upload; submit() moves the image out of it."""
        return staging_dir(self._files.work_root)

    def _store_upload(self, task_id: str, upload: Path) -> str:
        """The upload, checked to be an image (601 otherwise), under a name of our own for /uploads/{filename}."""
        try:
            header = read_header(upload.read_bytes())
        except InvalidArgument as error:
            raise EnvelopeError(Err.INVALID_IMAGE, f"The uploaded file is not a valid image: {error.detail}") from error
        if header.width * header.height > self._max_pixels:
            detail = f"The image is {header.width}x{header.height}, more than the {self._max_pixels} pixels allowed"
            raise EnvelopeError(Err.INVALID_IMAGE, detail)
        name = f"{task_id}{_IMAGE_SUFFIXES[header.format]}"
        self._files.uploads_root.mkdir(parents=True, exist_ok=True)
        shutil.move(upload, self._files.uploads_root / name)
        return name

    async def submit(self, user_id: str, *, upload: Path | None, image_url: str) -> str:
        if upload is None and not image_url.strip():
            raise EnvelopeError(Err.INVALID_PARAMETER, "Send an image (multipart field `image`) or an `image_url`")
        task_id = f"ingest_{uuid.uuid4()}"
        upload_name = await asyncio.to_thread(self._store_upload, task_id, upload) if upload else None
        row = IngestTaskRow(
            task_id=task_id,
            user_id=user_id or "anonymous",
            task_status=int(TaskStatus.RUNNING),
            upload_name=upload_name,
            image_url=None if upload_name else image_url.strip(),
            segmenter=self._segmenter,
            attempts=0,
            created_at=utcnow(),
        )
        await asyncio.to_thread(self._insert, row)
        self._finished[task_id] = asyncio.Event()
        await self._queue.put(task_id)
        log.info("ingest task created", task_id=task_id, upload=upload_name, image_url=row.image_url)
        return task_id

    def _insert(self, row: IngestTaskRow) -> None:
        with transaction(self._db) as session:
            session.add(row)

    def _row(self, task_id: str) -> IngestTaskRow:
        with self._db() as session:
            row = session.get(IngestTaskRow, task_id)
            if row is None:
                raise EnvelopeError(Err.UNKNOWN_TASK, f"No ingest task {task_id!r}")
            session.expunge(row)
            return row

    def state(self, task_id: str) -> IngestState:
        row = self._row(task_id)
        result = None
        if row.task_status == TaskStatus.DONE:
            result = json.loads(self._files.result_file(task_id).read_text())
        return IngestState(
            row.task_id, row.user_id, row.task_status, row.created_at, row.finished_at, row.segmenter,
            row.upload_name, row.err, row.detail, result,
        )  # fmt: skip

    async def wait(self, task_id: str, seconds: float) -> IngestState:
        """The task's state once finished, or after `seconds` (still 300 then)."""
        event = self._finished.get(task_id)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        return await asyncio.to_thread(self.state, task_id)

    def open_upload(self, filename: str) -> Download:
        """An uploaded image for GET /uploads/{filename}: only names this service gave, inside uploads/."""
        if not _UPLOAD_NAME.match(filename):
            raise NotFound("file not found")
        path = self._files.uploads_root / filename
        try:
            chunks = file_chunks(path)
        except FileNotFoundError:
            raise NotFound("file not found") from None
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return Download(filename, content_type, chunks, inline=True)

    # ---- running ----

    def recover(self) -> list[str]:
        """Tasks a previous process left at 300, oldest first: queued again by run()."""
        with self._db() as session:
            pending = session.scalars(
                select(IngestTaskRow.task_id)
                .where(IngestTaskRow.task_status == int(TaskStatus.RUNNING))
                .order_by(IngestTaskRow.created_at)
            ).all()
        return list(pending)

    async def run(self) -> None:
        for task_id in await asyncio.to_thread(self.recover):
            self._finished.setdefault(task_id, asyncio.Event())
            await self._queue.put(task_id)
        await asyncio.gather(*(self._work() for _ in range(self._workers)))

    async def _work(self) -> None:
        while True:
            task_id = await self._queue.get()
            try:
                await self._process(task_id)
            finally:
                self._queue.task_done()
                event = self._finished.pop(task_id, None)
                if event is not None:
                    event.set()

    def _start_attempt(self, task_id: str) -> IngestTaskRow | None:
        with transaction(self._db) as session:
            row = session.get(IngestTaskRow, task_id)
            if row is None or row.task_status != TaskStatus.RUNNING:
                return None
            row.attempts += 1
            session.flush()
            session.expunge(row)
            return row

    async def _process(self, task_id: str) -> None:
        row = await asyncio.to_thread(self._start_attempt, task_id)
        if row is None:
            return
        structlog.contextvars.bind_contextvars(task_id=task_id)
        try:
            if row.attempts > self._max_attempts:
                detail = f"interrupted {row.attempts - 1} times; not run again"
                raise EnvelopeError(Err.UNKNOWN_ERROR, detail)
            image = await self._image(row)
            analysis = await self._analyse(image)
            document = result_json(analysis)
            await asyncio.to_thread(
                atomic_write_text, self._files.result_file(task_id), json.dumps(document, ensure_ascii=False)
            )
            await asyncio.to_thread(self._finish, task_id, TaskStatus.DONE, None, None)
            log.info("ingest task done", components=len(analysis.schema.components), segmenter=analysis.segmenter)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failure = as_envelope_error(error)
            if failure.err == Err.UNKNOWN_ERROR and not isinstance(error, EnvelopeError):
                log.exception("ingest task crashed")
            await asyncio.to_thread(self._finish, task_id, TaskStatus.FAILED, int(failure.err), failure.detail)
            log.warning("ingest task failed", err=int(failure.err), detail=failure.detail)
        finally:
            structlog.contextvars.unbind_contextvars("task_id")

    async def _image(self, row: IngestTaskRow) -> LoadedImage:
        if row.upload_name:
            data = await asyncio.to_thread((self._files.uploads_root / row.upload_name).read_bytes)
            return await load_image(data, self._max_pixels)
        return await self._load_url(row.image_url or "")

    def _finish(self, task_id: str, status: TaskStatus, err: int | None, detail: str | None) -> None:
        with transaction(self._db) as session:
            row = session.get(IngestTaskRow, task_id)
            if row is not None:
                row.task_status = int(status)
                row.err = err
                row.detail = detail
                row.finished_at = utcnow()
