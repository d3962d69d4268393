"""Training jobs: validation, a queue with a fixed number of slots, one worker process per running job,
graceful stop, resume from last.pt, and recovery after a crash of the service.

Worker protocol (services/training/worker.py): the job directory holds job.json (what to train); the worker
appends to the job's log, writes progress.json after each epoch and result.json at the end
({"status": "completed" | "stopped" | "failed", ...}). SIGTERM asks it to stop after the current epoch with
last.pt resumable. Workers die with the service (SIGKILL on parent death), so after a service crash the
jobs that were running are marked `interrupted` and `resume` continues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import timestamp_id, utcnow
from services.common.errors import InvalidArgument, NotFound, ServiceError
from services.common.processes import dying_with_parent
from services.common.storage.db import paged, transaction
from services.common.storage.files import atomic_write_text, read_json_file, remove_tree
from services.training.domain.logs import append_line
from services.training.domain.models import MODEL_ID, ModelRegistry, TrainedModel
from services.training.domain.sources import DatasetSource
from services.training.storage.files import TrainingFiles
from services.training.storage.tables import JobRow, ModelRow

log = structlog.get_logger(__name__)

JOB_ID = re.compile(r"^job_\d{8}_\d{6}(_\d+)?$")
# Detection model names Ultralytics knows how to build (yolov8n.pt, yolo11s.pt, yolov5nu.pt, ...).
PRETRAINED_NAME = re.compile(r"^(yolov3|yolov5|yolov6|yolov8|yolov9|yolov10|yolo11|yolo12)[a-z]{0,2}u?\.pt$")
FINISHED = frozenset({"completed", "failed", "stopped", "interrupted"})
# A job's `error` when something other than the job itself failed (the details are in the service log).
_UNEXPECTED_FAILURE = "The training service could not run the job (an internal error; its log has the details)"


@dataclass(frozen=True)
class JobLimits:
    max_epochs: int
    max_imgsz: int
    max_batch: int


@dataclass(frozen=True)
class NewJob:
    dataset_id: str
    version: str
    model_name: str
    epochs: int
    imgsz: int
    batch: int
    base_model_id: str


@dataclass
class _Active:
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    stop_requested: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class JobManager:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: TrainingFiles,
        datasets: DatasetSource,
        models: ModelRegistry,
        *,
        slots: int,
        limits: JobLimits,
        worker_env: dict[str, str],
        weights_dir: Path,
        threads_per_job: int,
        stop_grace_seconds: float,
        export_for_serving: Callable[[str], Awaitable[ModelRow]],
    ) -> None:
        self._db = db
        self._files = files
        self._datasets = datasets
        self._models = models
        self._slots = slots
        self._limits = limits
        self._worker_env = worker_env
        self._weights_dir = weights_dir
        self._threads = threads_per_job
        self._stop_grace = stop_grace_seconds
        self._export_for_serving = export_for_serving
        self._active: dict[str, _Active] = {}
        self._shutting_down = False
        self._lock = asyncio.Lock()  # guards slot accounting and status changes of active jobs

    # -- reading -------------------------------------------------------------------------------------------

    def _load(self, session: Session, job_id: str) -> JobRow:
        row = session.get(JobRow, job_id) if JOB_ID.match(job_id) else None
        if row is None:
            raise NotFound(f"Training job {job_id!r} not found")
        return row

    def get(self, job_id: str) -> JobRow:
        with self._db() as session:
            return self._load(session, job_id)

    def list(self, page: int, page_size: int, status: str) -> tuple[list[JobRow], int]:
        with self._db() as session:
            query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.job_id.desc())
            count = select(func.count()).select_from(JobRow)
            if status:
                query, count = query.where(JobRow.status == status), count.where(JobRow.status == status)
            total = session.scalar(count) or 0
            return list(session.scalars(paged(query, page, page_size, 1000))), total

    def epochs_completed(self, row: JobRow) -> int:
        """Live for a running job (its worker's progress.json), as recorded otherwise."""
        return self._saved_epochs(row) if row.status == "running" else row.epochs_completed

    def _saved_epochs(self, row: JobRow) -> int:
        """The epochs the job's worker has completed and saved (its progress.json, written after each epoch's
        last.pt), or what the row recorded before this run."""
        progress = read_json_file(self._files.job_dir(row.job_id) / "progress.json")
        return max(int(progress.get("epoch") or 0), row.epochs_completed)

    def is_finished(self, job_id: str) -> bool:
        return self.get(job_id).status in FINISHED

    def log_file(self, job_id: str) -> Path:
        """The job's log; NotFound for an unknown job."""
        return self._files.log_file(self.get(job_id).job_id)

    def log_path(self, row: JobRow) -> Path:
        return self._files.log_file(row.job_id)

    # -- creating ------------------------------------------------------------------------------------------

    def _validate(self, new: NewJob) -> tuple[str, str | None]:
        """(model_name, base_model_id) after checking every parameter."""
        limits = self._limits
        if not 1 <= new.epochs <= limits.max_epochs:
            raise InvalidArgument(f"epochs must be between 1 and {limits.max_epochs} (got {new.epochs})")
        if not 32 <= new.imgsz <= limits.max_imgsz:
            raise InvalidArgument(f"imgsz must be between 32 and {limits.max_imgsz} (got {new.imgsz})")
        if new.batch != -1 and not 1 <= new.batch <= limits.max_batch:
            raise InvalidArgument(f"batch must be -1 (automatic) or between 1 and {limits.max_batch} (got {new.batch})")
        model_name = new.model_name or "yolov8n.pt"
        base = new.base_model_id or (model_name if MODEL_ID.match(model_name) else None)
        if base is not None:
            if not self._models.exists(base):
                raise NotFound(f"Base model {base!r} not found")
        elif not PRETRAINED_NAME.match(model_name):
            raise InvalidArgument(
                f"Unknown model_name {model_name!r}: use a YOLO detection model such as yolov8n.pt, yolov8s.pt, "
                "yolo11n.pt, or the ID of a registered model"
            )
        return model_name, base

    async def create(self, new: NewJob) -> JobRow:
        if not new.dataset_id:
            raise InvalidArgument("dataset_id is required")
        model_name, base = self._validate(new)
        version = new.version or "v1"
        await self._datasets.describe(new.dataset_id, version)
        created = utcnow()
        for attempt in range(1000):
            row = JobRow(
                job_id=timestamp_id("job", created, attempt),
                dataset_id=new.dataset_id,
                version=version,
                model_name=model_name,
                base_model_id=base,
                epochs=new.epochs,
                imgsz=new.imgsz,
                batch=new.batch,
                status="queued",
                resume=False,
                epochs_completed=0,
                weights_source="",
                error="",
                created_at=created,
            )
            try:
                await asyncio.to_thread(self._insert, row)
            except IntegrityError:
                continue
            break
        else:
            raise InvalidArgument("Too many jobs created in the same second; retry")
        append_line(
            self._files.log_file(row.job_id),
            f"Job {row.job_id} queued: {model_name} on {row.dataset_id} "
            f"{version}, {row.epochs} epochs, imgsz {row.imgsz}, batch {row.batch}",
        )
        log.info("training job created", job_id=row.job_id)
        await self.schedule()
        return self.get(row.job_id)

    def _insert(self, row: JobRow) -> None:
        with transaction(self._db) as session:
            session.add(row)

    def _update(self, job_id: str, **changes: Any) -> None:
        with transaction(self._db) as session:
            row = session.get(JobRow, job_id)
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)

    # -- scheduling ----------------------------------------------------------------------------------------

    async def schedule(self) -> None:
        """Start queued jobs, oldest first, while slots are free."""
        async with self._lock:
            free = self._slots - len(self._active)
            if free <= 0:
                return
            with self._db() as session:
                queued = list(
                    session.scalars(
                        select(JobRow)
                        .where(JobRow.status == "queued")
                        .order_by(JobRow.created_at, JobRow.job_id)
                        .limit(free)
                    )
                )
            for row in queued:
                self._update(row.job_id, status="running", started_at=row.started_at or utcnow(), error="")
                active = _Active()
                self._active[row.job_id] = active
                active.task = asyncio.create_task(self._run(row.job_id), name=f"training-{row.job_id}")

    async def _run(self, job_id: str) -> None:
        active = self._active[job_id]
        log_file = self._files.log_file(job_id)
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            try:
                await self._train(job_id, active)
            except Exception as error:
                log.exception("training job failed")
                reason = error.detail if isinstance(error, ServiceError) else _UNEXPECTED_FAILURE
                append_line(log_file, f"Job failed: {reason}")
                self._update(job_id, status="failed", error=reason, completed_at=utcnow())
            finally:
                async with self._lock:
                    self._active.pop(job_id, None)
                active.finished.set()
            await self.schedule()

    async def _train(self, job_id: str, active: _Active) -> None:
        job = self.get(job_id)
        job_dir = self._files.job_dir(job_id)
        log_file = self._files.log_file(job_id)
        last = job_dir / "train" / "weights" / "last.pt"
        resume = job.resume and last.exists()
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "result.json").unlink(missing_ok=True)
        data_yaml = job_dir / "dataset" / "data.yaml"
        if not data_yaml.exists():
            append_line(log_file, f"Fetching dataset {job.dataset_id} {job.version} from the dataset service")
            data_yaml = await self._datasets.fetch(job.dataset_id, job.version, job_dir / "dataset")
        model = str(self._models.weights_path(job.base_model_id)) if job.base_model_id else job.model_name
        spec = {
            "job_id": job_id,
            "data_yaml": str(data_yaml),
            "model": model,
            "weights_dir": str(self._weights_dir),
            "epochs": job.epochs,
            "imgsz": job.imgsz,
            "batch": job.batch,
            "resume": resume,
            "log_file": str(log_file),
            "device": "cpu",
            "workers": 0,
            "threads": self._threads,
            "seed": 0,
        }
        atomic_write_text(job_dir / "job.json", json.dumps(spec, indent=2))
        if active.stop_requested:
            return await self._finish(job_id, {"status": "stopped"}, log_file)
        # Ultralytics' console output (progress bars, tracebacks) goes to the job's own file, not the service log.
        with open(job_dir / "worker.out", "ab") as console:
            active.process = await asyncio.create_subprocess_exec(
                # A worker never outlives the service that supervises it.
                *dying_with_parent([sys.executable, "-m", "services.training.worker", str(job_dir)], signal.SIGKILL),
                env={**os.environ, **self._worker_env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("training worker started", pid=active.process.pid, resume=resume)
        code = await active.process.wait()
        if self._shutting_down:
            self._update(job_id, status="interrupted", resume=True, epochs_completed=self._saved_epochs(job))
            append_line(log_file, "Job interrupted: the training service is shutting down; resume continues it")
            return
        result = read_json_file(job_dir / "result.json")
        if not result:
            # Killed (out of memory, or by stop after its grace period) before it could write a result.
            reason = "stopped" if active.stop_requested else "failed"
            result = {"status": reason, "error": "" if active.stop_requested else f"worker exited with code {code}"}
        await self._finish(job_id, result, log_file)

    async def _finish(self, job_id: str, result: dict[str, Any], log_file: Path) -> None:
        progress = read_json_file(self._files.job_dir(job_id) / "progress.json")
        status = result.get("status", "failed")
        changes: dict[str, Any] = {
            "status": status,
            "error": result.get("error") or "",
            "epochs_completed": int(result.get("epochs_completed") or progress.get("epoch") or 0),
            "completed_at": utcnow(),
            "resume": status != "completed",
        }
        if result.get("weights_source"):
            changes["weights_source"] = result["weights_source"]
        if status == "completed":
            job = self.get(job_id)
            best = Path(result["best"])
            model = await asyncio.to_thread(
                self._models.register_trained,
                TrainedModel(
                    job=job,
                    best=best,
                    results_csv=Path(result["results_csv"]) if result.get("results_csv") else None,
                    classes=list(result.get("classes") or []),
                    metrics=dict(result.get("metrics") or {}),
                    imgsz=int(result.get("imgsz") or job.imgsz),
                ),
            )
            changes["model_id"] = model.model_id
            append_line(log_file, f"Registered model {model.model_id}")
            # The job records its model before the export: a restart meanwhile must not train or register it again
            # (recover completes it).
            self._update(
                job_id,
                **{key: changes[key] for key in ("model_id", "epochs_completed", "weights_source") if key in changes},
            )
            append_line(log_file, "Exporting the model for serving (ONNX into Triton's model repository) ...")
            append_line(log_file, await self._serving_outcome(model.model_id))
        self._update(job_id, **changes)
        append_line(log_file, f"Job {status}" + (f": {changes['error']}" if changes["error"] else ""))
        log.info("training job finished", status=status)

    async def _serving_outcome(self, model_id: str) -> str:
        """Wait for the model's export for serving (the job is `completed` only once its model can be served,
        or has failed to export); the log line that tells how it went."""
        try:
            model = await self._export_for_serving(model_id)
        except NotFound:
            return f"Model {model_id} was deleted before its export for serving finished"
        if model.export_status == "ready":
            return f"Model {model_id} is ready for serving"
        return f"Model {model_id} cannot be served: {model.export_error}"

    # -- stop, resume, delete ------------------------------------------------------------------------------

    async def stop(self, job_id: str) -> str:
        job = await asyncio.to_thread(self.get, job_id)
        if job.status == "queued":
            self._update(job_id, status="stopped", completed_at=utcnow())
            append_line(self._files.log_file(job_id), "Job stopped before it started")
            return "Training job stopped successfully"
        active = self._active.get(job_id)
        if job.status != "running" or active is None:
            raise InvalidArgument(f"Training job {job_id!r} is {job.status}, not running: nothing to stop")
        append_line(self._files.log_file(job_id), "Stop requested: stopping after the current epoch")
        active.stop_requested = True
        process = active.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(active.finished.wait()), timeout=self._stop_grace)
            except TimeoutError:
                append_line(self._files.log_file(job_id), "The epoch did not end in time: stopping the worker now")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await active.finished.wait()
        return "Training job stopped successfully"

    async def resume(self, job_id: str) -> JobRow:
        job = await asyncio.to_thread(self.get, job_id)
        if job.status == "completed":
            raise InvalidArgument(f"Training job {job_id!r} is completed: nothing to resume")
        if job.status in ("queued", "running"):
            raise InvalidArgument(f"Training job {job_id!r} is already {job.status}")
        last = self._files.job_dir(job_id) / "train" / "weights" / "last.pt"
        self._update(job_id, status="queued", resume=last.exists(), error="", completed_at=None)
        append_line(
            self._files.log_file(job_id),
            f"Resume requested: continuing after epoch {job.epochs_completed}"
            if last.exists()
            else "Resume requested: no checkpoint yet, starting over",
        )
        await self.schedule()
        return self.get(job_id)

    async def delete(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.get, job_id)
        if job.status == "running":
            await self.stop(job_id)
        with transaction(self._db) as session:
            session.delete(self._load(session, job_id))
        remove_tree(self._files.job_dir(job_id))
        self._files.log_file(job_id).unlink(missing_ok=True)
        log.info("training job deleted", job_id=job_id)

    # -- start-up and shut-down ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Jobs that were running when the service died have lost their worker: mark them interrupted, with the
        epochs their worker had saved (resume continues after those). A job that had registered its model was
        only waiting for the model's export, which the ServingExporter resumes: it is completed."""
        with transaction(self._db) as session:
            for row in session.scalars(select(JobRow).where(JobRow.status == "running")):
                row.epochs_completed = self._saved_epochs(row)
                if row.model_id:
                    row.status, row.resume, row.completed_at = "completed", False, utcnow()
                    message = f"Job completed: the training service restarted while model {row.model_id} was exported"
                else:
                    row.status, row.resume = "interrupted", True
                    message = (
                        f"Job interrupted after {row.epochs_completed} completed epoch(s): the training service "
                        "stopped while it ran; resume continues it"
                    )
                append_line(self._files.log_file(row.job_id), message)
                log.warning("training job recovered", job_id=row.job_id, status=row.status)

    async def shutdown(self) -> None:
        """Service shut-down: workers are stopped at once; their jobs resume from last.pt after a restart."""
        self._shutting_down = True
        for active in list(self._active.values()):
            if active.process is not None and active.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    active.process.kill()
        await asyncio.gather(*(active.finished.wait() for active in list(self._active.values())))
