"""Ingest tasks (POST /ingest): a screenshot in, its components out, as work items of the work engine
(services.common.work), so that a task survives restarts and any replica may run it.

The row is the truth: a task is 300 until its result file is written and the row says 200 (or 400 with its
err). A task a crash or a shut-down cut off runs again (at most `max_attempts` times in all, then it fails with
808). The document's task_status is the engine's state: queued or running 300, completed 200, failed 400.
"""

from __future__ import annotations

import asyncio
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
from sqlalchemy.orm import Session, sessionmaker

from services.common.downloads import Download, file_chunks
from services.common.envelope import EnvelopeError, Err, TaskStatus, as_envelope_error
from services.common.errors import InvalidArgument, NotFound
from services.common.image_urls import LoadedImage, load_image
from services.common.images import check_pixels, read_header
from services.common.storage.files import atomic_write_text, staging_dir
from services.common.work import Failed, WorkContext, WorkerPool, WorkItem, WorkKind, WorkQueue, WorkStatus
from services.segmentation.domain.service import PageAnalysis
from services.segmentation.domain.tree import NamedComponent, TreeNode
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import WorkItemRow

log = structlog.get_logger("segmentation.ingest")

_IMAGE_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp"}
_UPLOAD_NAME = re.compile(r"^ingest_[0-9a-f-]{36}\.[a-z]{3,4}$")
DOCUMENT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the document's created_at / finished_at
KIND = "ingest"
_TASK_STATUS = {WorkStatus.COMPLETED: TaskStatus.DONE, WorkStatus.FAILED: TaskStatus.FAILED}


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

    @classmethod
    def of(cls, item: WorkItem, result: dict[str, Any] | None) -> IngestState:
        status = _TASK_STATUS.get(item.status, TaskStatus.RUNNING)
        failed = status == TaskStatus.FAILED
        return cls(
            task_id=item.item_id,
            user_id=item.owner or "anonymous",
            task_status=int(status),
            created_at=item.created_at,
            finished_at=item.finished_at if status != TaskStatus.RUNNING else None,
            segmenter=item.spec["segmenter"],
            upload_name=item.spec.get("upload_name"),
            # A task whose attempts ran out has no err of its own: 808, unknown error.
            err=int(item.result.get("err", Err.UNKNOWN_ERROR)) if failed else None,
            detail=item.error if failed else None,
            result=result,
        )


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
        self._files = files
        self._analyse = analyse
        self._load_url = load_url
        self._segmenter = segmenter
        self._max_attempts = max_attempts
        self._max_pixels = max_image_pixels
        self._work = WorkQueue(db, WorkItemRow)
        self._workers = WorkerPool(self._work, [WorkKind(KIND, self._run_task, workers=workers)])

    # ---- submitting and reading ----

    def staging(self) -> AbstractContextManager[Path]:
        """A fresh directory for one request's upload; submit() moves the image out of it."""
        return staging_dir(self._files.work_root)

    def _store_upload(self, task_id: str, upload: Path) -> str:
        """The upload, checked to be an image (601 otherwise), under a name of our own for /uploads/{filename}."""
        try:
            header = read_header(upload.read_bytes())
            check_pixels(header, self._max_pixels)
        except InvalidArgument as error:
            raise EnvelopeError(Err.INVALID_IMAGE, f"The uploaded file is not a valid image: {error.detail}") from error
        name = f"{task_id}{_IMAGE_SUFFIXES[header.format]}"
        self._files.uploads_root.mkdir(parents=True, exist_ok=True)
        shutil.move(upload, self._files.uploads_root / name)
        return name

    async def submit(self, user_id: str, *, upload: Path | None, image_url: str) -> str:
        if upload is None and not image_url.strip():
            raise EnvelopeError(Err.INVALID_PARAMETER, "Send an image (multipart field `image`) or an `image_url`")
        task_id = f"ingest_{uuid.uuid4()}"
        upload_name = await asyncio.to_thread(self._store_upload, task_id, upload) if upload else None
        spec = {
            "upload_name": upload_name,
            "image_url": None if upload_name else image_url.strip(),
            "segmenter": self._segmenter,
        }
        await asyncio.to_thread(
            self._work.submit, task_id, KIND, spec, owner=user_id or "anonymous", max_attempts=self._max_attempts
        )
        self._workers.notify(KIND)
        log.info("ingest task created", task_id=task_id, upload=upload_name, image_url=spec["image_url"])
        return task_id

    def _item(self, task_id: str) -> WorkItem:
        item = self._work.find(task_id)
        if item is None or item.kind != KIND:
            raise EnvelopeError(Err.UNKNOWN_TASK, f"No ingest task {task_id!r}")
        return item

    def _state_of(self, item: WorkItem) -> IngestState:
        result = None
        if item.status == WorkStatus.COMPLETED:
            result = json.loads(self._files.result_file(item.item_id).read_text())
        return IngestState.of(item, result)

    def state(self, task_id: str) -> IngestState:
        return self._state_of(self._item(task_id))

    async def wait(self, task_id: str, seconds: float) -> IngestState:
        """The task's state once finished, or after `seconds` (still 300 then)."""
        await asyncio.to_thread(self._item, task_id)  # 803 for an unknown task
        item = await self._workers.wait_finished(task_id, seconds)
        return await asyncio.to_thread(self._state_of, item or self._item(task_id))

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

    async def run(self) -> None:
        """The workers, until cancelled (service shut-down): a task the shut-down cuts off is queued again."""
        await self._workers.run()

    async def _run_task(self, item: WorkItem, context: WorkContext) -> dict[str, Any]:
        try:
            image = await self._image(item)
            analysis = await self._analyse(image)
            document = result_json(analysis)
            await asyncio.to_thread(
                atomic_write_text, self._files.result_file(item.item_id), json.dumps(document, ensure_ascii=False)
            )
        except Exception as error:
            failure = as_envelope_error(error)
            if failure.err == Err.UNKNOWN_ERROR and not isinstance(error, EnvelopeError):
                log.exception("ingest task crashed")
            raise Failed(failure.detail, {"err": int(failure.err)}) from error
        log.info("ingest task done", components=len(analysis.schema.components), segmenter=analysis.segmenter)
        return {"components": len(analysis.schema.components)}

    async def _image(self, item: WorkItem) -> LoadedImage:
        if item.spec.get("upload_name"):
            data = await asyncio.to_thread((self._files.uploads_root / item.spec["upload_name"]).read_bytes)
            return await load_image(data, self._max_pixels)
        return await self._load_url(item.spec.get("image_url") or "")
