"""The model registry: models registered by completed jobs or uploaded as ZIPs; export, charts, ONNX; and the
model service, the one path of a registered or deleted model to the model server.

A model is a directory models/<model_id>/ (weights/best.pt, model.json, results.csv, model.onnx) plus its
row. As everywhere in the mesh, the directory is built in staging and renamed into place, then the row is
committed; deletion goes the other way round.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.archives import ZipLimits, stream_zip
from services.common.clock import iso, timestamp_id, utcnow
from services.common.downloads import Download
from services.common.errors import InvalidArgument, NotFound
from services.common.metadata import MAX_DESCRIPTION_CHARS, check_description, clean_tags
from services.common.storage.db import paged, transaction
from services.common.storage.files import (
    TRASH_PREFIX,
    atomic_write_text,
    discard_leftover,
    is_transient,
    remove_tree,
    staging_dir,
)
from services.common.triton.repository import write_triton_model
from services.common.triton.settings import TritonSettings
from services.common.uploads import ReceivedFile
from services.training.domain.charts import read_history, render_training_chart
from services.training.domain.checkpoints import inspect_checkpoint
from services.training.domain.model_archive import model_zip_members, read_model_zip
from services.training.domain.onnx_export import ExportError, export_onnx
from services.training.storage.files import TrainingFiles
from services.training.storage.tables import JobRow, ModelRow

log = structlog.get_logger(__name__)

MODEL_ID = re.compile(r"^model_\d{8}_\d{6}(_\d+)?$")
_MAX_NAME_CHARS = 255


@dataclass(frozen=True)
class TrainedModel:
    """What a completed job hands to the registry."""

    job: JobRow
    best: Path
    results_csv: Path | None
    classes: list[str]
    metrics: dict[str, float]
    imgsz: int


class ModelRegistry:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: TrainingFiles,
        triton: TritonSettings,
        zip_limits: ZipLimits,
        ultralytics_env: dict[str, str],
    ) -> None:
        self._db = db
        self._files = files
        self._triton = triton
        self._triton_repository = triton.repository
        self._zip_limits = zip_limits
        self._ultralytics_env = ultralytics_env
        files.models_root.mkdir(parents=True, exist_ok=True)

    # -- reading -------------------------------------------------------------------------------------------

    def _load(self, session: Session, model_id: str) -> ModelRow:
        row = session.get(ModelRow, model_id) if MODEL_ID.match(model_id) else None
        if row is None:
            raise NotFound(f"Model {model_id!r} not found")
        return row

    def get(self, model_id: str) -> ModelRow:
        with self._db() as session:
            return self._load(session, model_id)

    def exists(self, model_id: str) -> bool:
        with self._db() as session:
            return MODEL_ID.match(model_id) is not None and session.get(ModelRow, model_id) is not None

    def list(self, page: int, page_size: int) -> tuple[list[ModelRow], int]:
        with self._db() as session:
            total = session.scalar(select(func.count()).select_from(ModelRow)) or 0
            query = select(ModelRow).order_by(ModelRow.created_at.desc(), ModelRow.model_id.desc())
            return list(session.scalars(paged(query, page, page_size, 1000))), total

    def weights_path(self, model_id: str) -> Path:
        return self._files.model_weights(model_id)

    def onnx_path(self, model_id: str) -> Path:
        return self._files.model_onnx(model_id)

    def upload_staging(self) -> AbstractContextManager[Path]:
        """A directory for receiving an upload, on the same file system as the models."""
        return staging_dir(self._files.models_root)

    def history(self, model_id: str) -> list[dict[str, float]]:
        """One {column: value} per epoch (empty for a model without training history)."""
        try:
            history = read_history(self._files.model_history(model_id))
        except NotFound:
            return []
        return [
            {
                "epoch": epoch,
                **{name: values[index] for name, values in history.columns.items() if math.isfinite(values[index])},
            }
            for index, epoch in enumerate(history.epochs)
        ]

    # -- registration ------------------------------------------------------------------------------------

    def _publish(self, staging: Path, build: dict[str, Any], preferred_id: str | None = None) -> ModelRow:
        """Rename `staging` to a new model directory and commit its row; returns the row."""
        created = utcnow()
        candidates = [preferred_id] if preferred_id else []
        candidates += [timestamp_id("model", created, attempt) for attempt in range(1000)]
        for model_id in candidates:
            target = self._files.model_dir(model_id)
            if target.exists() or self.exists(model_id):
                continue
            row = ModelRow(model_id=model_id, created_at=created, **build)
            atomic_write_text(staging / "model.json", json.dumps(self.model_json(row), indent=2, ensure_ascii=False))
            os.rename(staging, target)
            try:
                with transaction(self._db) as session:
                    session.add(row)
            except IntegrityError:
                remove_tree(target)
                continue
            except BaseException:
                remove_tree(target)
                raise
            return row
        raise InvalidArgument("Too many models registered in the same second; retry")

    def register_trained(self, trained: TrainedModel) -> ModelRow:
        with staging_dir(self._files.models_root) as staging:
            (staging / "weights").mkdir()
            shutil.copyfile(trained.best, staging / "weights" / "best.pt")
            if trained.results_csv is not None and trained.results_csv.exists():
                shutil.copyfile(trained.results_csv, staging / "results.csv")
            job = trained.job
            row = self._publish(
                staging,
                {
                    "name": f"{job.model_name.removesuffix('.pt')} on {job.dataset_id} {job.version}",
                    "description": f"Trained by job {job.job_id}: {job.epochs} epochs at imgsz {job.imgsz}",
                    "tags": [],
                    "source": "trained",
                    "job_id": job.job_id,
                    "dataset_id": job.dataset_id,
                    "classes": trained.classes,
                    "imgsz": trained.imgsz,
                    "metrics": trained.metrics,
                    "file_size": (staging / "weights" / "best.pt").stat().st_size,
                },
            )
        log.info("model registered", model_id=row.model_id, job_id=job.job_id)
        return row

    def register_upload(self, received: ReceivedFile) -> ModelRow:
        if received.size == 0:
            raise InvalidArgument("The uploaded file is empty")
        with staging_dir(self._files.models_root) as staging:
            uploaded = read_model_zip(received.path, staging, self._zip_limits)
            info = inspect_checkpoint(uploaded.weights)
            if info.task != "detect":
                raise InvalidArgument(
                    f"Only detection models can be registered; this checkpoint is a {info.task} model"
                )
            metadata = uploaded.metadata or {}
            imgsz = metadata.get("imgsz", info.imgsz or 640)
            if not isinstance(imgsz, int) or not 32 <= imgsz <= 4096:
                raise InvalidArgument(f"model.json imgsz must be a whole number between 32 and 4096 (got {imgsz!r})")
            tags = metadata.get("tags") if isinstance(metadata.get("tags"), list) else []
            original = uploaded.original_model_id
            row = self._publish(
                staging,
                {
                    "name": str(metadata.get("name") or Path(received.filename).stem or "uploaded model")[
                        :_MAX_NAME_CHARS
                    ],
                    "description": str(metadata.get("description") or "")[:MAX_DESCRIPTION_CHARS],
                    "tags": clean_tags([str(tag) for tag in tags]),
                    "source": "uploaded",
                    "job_id": None,
                    "dataset_id": metadata.get("dataset_id") if isinstance(metadata.get("dataset_id"), str) else None,
                    "classes": info.classes,
                    "imgsz": imgsz,
                    "metrics": metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {},
                    "file_size": uploaded.weights.stat().st_size,
                },
                # Keep the ZIP's model_id unless it is taken or malformed (then a new one, as documented).
                preferred_id=original if original and MODEL_ID.match(original) else None,
            )
        log.info("model uploaded", model_id=row.model_id, filename=received.filename)
        return row

    # -- changes -------------------------------------------------------------------------------------------

    def update(self, model_id: str, name: str | None, description: str | None, tags: list[str] | None) -> ModelRow:
        if name is not None and not (0 < len(name.strip()) <= _MAX_NAME_CHARS):
            raise InvalidArgument(f"name must be 1 to {_MAX_NAME_CHARS} characters")
        if description is not None:
            check_description(description)
        with transaction(self._db) as session:
            row = self._load(session, model_id)
            if name is not None:
                row.name = name.strip()
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = clean_tags(tags)
        atomic_write_text(
            self._files.model_dir(model_id) / "model.json",
            json.dumps(self.model_json(row), indent=2, ensure_ascii=False),
        )
        return row

    def delete(self, model_id: str) -> None:
        with transaction(self._db) as session:
            session.delete(self._load(session, model_id))
        remove_tree(self._files.model_dir(model_id))
        self._remove_from_repository(model_id)
        log.info("model deleted", model_id=model_id)

    def _remove_from_repository(self, model_id: str) -> None:
        """Triton treats every folder of its repository as a model, hidden ones too: the model is moved out
        of the repository (one rename) before it is deleted."""
        served = self._triton_repository / model_id
        if served.exists():
            aside = self._triton_repository.parent / f"{TRASH_PREFIX}{model_id}-{uuid.uuid4().hex[:8]}"
            os.rename(served, aside)
            shutil.rmtree(aside, ignore_errors=True)

    # -- files out -----------------------------------------------------------------------------------------

    def model_json(self, row: ModelRow) -> dict[str, Any]:
        return {
            "model_id": row.model_id,
            "name": row.name,
            "description": row.description,
            "tags": row.tags,
            "classes": row.classes,
            "imgsz": row.imgsz,
            "source": row.source,
            "job_id": row.job_id,
            "dataset_id": row.dataset_id,
            "metrics": row.metrics,
            "created_at": iso(row.created_at),
        }

    def export_zip(self, model_id: str) -> Download:
        row = self.get(model_id)
        members = model_zip_members(self._files.model_dir(model_id), model_id, self.model_json(row))
        return Download(f"{model_id}.zip", "application/zip", stream_zip(members))

    def chart(self, model_id: str, chart_type: str) -> bytes:
        self.get(model_id)
        return render_training_chart(self._files.model_history(model_id), chart_type or "all")

    # -- ONNX export into the Triton repository ----------------------------------------------------------

    def export_for_serving(self, model_id: str) -> ModelRow:
        """Export to ONNX and write the Triton model; the outcome is recorded on the model (and returned with
        it), not raised. NotFound if the model is deleted before or during the export."""
        row = self.get(model_id)
        try:
            onnx_file = export_onnx(
                self._files.model_weights(model_id), self._files.model_onnx(model_id), row.imgsz, self._ultralytics_env
            )
            write_triton_model(
                self._triton_repository, model_id, onnx_file, row.classes, row.imgsz, settings=self._triton
            )
        except ExportError as error:
            log.warning("onnx export failed", model_id=model_id, error=str(error), output=error.output)
            return self._set_export(model_id, "failed", str(error))
        except Exception:  # any failure is recorded on the model for users to see
            log.exception("writing the model for serving failed", model_id=model_id)
            return self._set_export(model_id, "failed", "The model could not be written into Triton's repository")
        row = self._set_export(model_id, "ready", "")
        log.info("model exported for serving", model_id=model_id)
        return row

    def _set_export(self, model_id: str, status: str, error: str) -> ModelRow:
        with transaction(self._db) as session:
            row = self._load(session, model_id)  # NotFound: deleted meanwhile
            row.export_status, row.export_error = status, error
            return row

    def pending_exports(self) -> list[str]:
        with self._db() as session:
            return list(session.scalars(select(ModelRow.model_id).where(ModelRow.export_status == "pending")))

    def recover(self) -> None:
        """Remove staging leftovers and model directories without a row."""
        with self._db() as session:
            known = set(session.scalars(select(ModelRow.model_id)))
        leftovers = [entry for entry in self._files.models_root.iterdir() if entry.name not in known]
        leftovers += [
            child
            for model_id in known
            if (folder := self._files.model_dir(model_id)).is_dir()
            for child in folder.iterdir()
            if is_transient(child.name)
        ]
        if self._triton_repository.parent.is_dir():
            leftovers += [e for e in self._triton_repository.parent.iterdir() if is_transient(e.name)]
        for entry in leftovers:
            discard_leftover(entry)


class ServingExporter:
    """Runs ONNX exports one at a time, each in a worker thread (an export takes seconds to minutes and a few
    hundred MB). A completed job and an upload wait for their model's export before they announce the model, so
    that the model they hand out can be served at once; exports the registry still has pending at start-up
    (interrupted by a restart) run first, with nobody waiting."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[ModelRow] | None]] = asyncio.Queue()

    async def export(self, model_id: str) -> ModelRow:
        """Export the model after the exports queued before it; returns the model once its export has finished
        (export_status ready or failed), NotFound if it is deleted first. A cancelled caller does not cancel
        the export."""
        finished: asyncio.Future[ModelRow] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((model_id, finished))
        return await asyncio.shield(finished)

    async def run(self) -> None:
        pending = await asyncio.to_thread(self._registry.pending_exports)
        # Ahead of any export requested meanwhile, and not twice (an upload's row is pending too).
        requested = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in [(model_id, None) for model_id in pending if model_id not in dict(requested)] + requested:
            self._queue.put_nowait(item)
        finished: asyncio.Future[ModelRow] | None = None
        try:
            while True:
                model_id, finished = await self._queue.get()
                with structlog.contextvars.bound_contextvars(model_id=model_id):
                    await self._export_one(model_id, finished)
        finally:  # stopped (service shut-down): nobody may wait for an export that will not run now
            waiting = [finished] + [self._queue.get_nowait()[1] for _ in range(self._queue.qsize())]
            for future in waiting:
                if future is not None:
                    future.cancel()  # no-op for one that has its outcome

    async def _export_one(self, model_id: str, finished: asyncio.Future[ModelRow] | None) -> None:
        try:
            row = await asyncio.to_thread(self._registry.export_for_serving, model_id)
        except Exception as error:  # its waiter gets it; the next export still runs
            if not isinstance(error, NotFound):  # NotFound: deleted before its turn
                log.exception("onnx export crashed")
            if finished is not None:
                finished.set_exception(error)
            return
        if finished is not None:
            finished.set_result(row)


class ServingControl(Protocol):
    """The model server's side (the inference service): a deleted model is unloaded there."""

    async def model_deleted(self, model_id: str) -> None: ...


class ModelService:
    """The model routes' use cases over the registry, with one path for each change the model server must
    follow: every registered model, trained by a job or uploaded, is exported for serving before it is
    announced (`registered`: the job manager calls it too), and every deleted model is unloaded (`delete`)."""

    def __init__(self, registry: ModelRegistry, exporter: ServingExporter, serving: ServingControl) -> None:
        self._registry = registry
        self._exporter = exporter
        self._serving = serving

    async def registered(self, model_id: str) -> ModelRow:
        """The model once its export for serving has finished (export_status ready or failed); NotFound if it
        is deleted first."""
        return await self._exporter.export(model_id)

    async def upload(self, receive: Callable[[Path], Awaitable[ReceivedFile]]) -> ModelRow:
        """Register the ZIP that `receive` writes into a staging directory (removed before the export: the
        export can take minutes); the model once it is exported for serving."""
        with self._registry.upload_staging() as staging:
            row = await asyncio.to_thread(self._registry.register_upload, await receive(staging))
        return await self.registered(row.model_id)

    async def delete(self, model_id: str) -> None:
        await asyncio.to_thread(self._registry.delete, model_id)
        await self._serving.model_deleted(model_id)

    # The registry's reads and edits, which the model server does not need to hear about.

    def list(self, page: int, page_size: int) -> tuple[list[ModelRow], int]:
        return self._registry.list(page, page_size)

    def get(self, model_id: str) -> ModelRow:
        return self._registry.get(model_id)

    def update(self, model_id: str, name: str | None, description: str | None, tags: list[str] | None) -> ModelRow:
        return self._registry.update(model_id, name, description, tags)

    def weights_path(self, model_id: str) -> Path:
        return self._registry.weights_path(model_id)

    def onnx_path(self, model_id: str) -> Path:
        return self._registry.onnx_path(model_id)

    def history(self, model_id: str) -> list[dict[str, float]]:
        return self._registry.history(model_id)

    def export_zip(self, model_id: str) -> Download:
        return self._registry.export_zip(model_id)

    def chart(self, model_id: str, chart_type: str) -> bytes:
        return self._registry.chart(model_id, chart_type)
