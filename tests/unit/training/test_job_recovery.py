"""JobManager.recover: what a restarted training service makes of the jobs that were running when it died."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.common.archives import ZipLimits
from services.common.storage.db import create_db_engine, migrate, session_factory, transaction
from services.common.triton.settings import TritonSettings
from services.training.__main__ import MIGRATIONS
from services.training.domain.jobs import JobLimits, JobManager
from services.training.domain.models import ModelRegistry
from services.training.domain.sources import DatasetVersion
from services.training.storage.files import TrainingFiles
from services.training.storage.tables import Base, JobRow, ModelRow


class _NoDatasets:
    """Recovery never fetches a dataset."""

    async def describe(self, dataset_id: str, version: str) -> DatasetVersion:
        raise AssertionError("not used")

    async def fetch(self, dataset_id: str, version: str, destination: Path) -> Path:
        raise AssertionError("not used")


async def _no_export(model_id: str) -> ModelRow:
    raise AssertionError("not used")


Setup = tuple[JobManager, sessionmaker[Session], TrainingFiles]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'training.sqlite3'}")
    migrate(engine, MIGRATIONS, Base.metadata, version_table="alembic_version_training")
    db = session_factory(engine)
    files = TrainingFiles(tmp_path / "data")
    models = ModelRegistry(db, files, TritonSettings(data_root=tmp_path / "data"), ZipLimits(), {})
    jobs = JobManager(
        db,
        files,
        _NoDatasets(),
        models,
        slots=0,  # nothing is started: these tests are about the records
        limits=JobLimits(100, 1024, 64),
        worker_env={},
        weights_dir=tmp_path / "weights",
        threads_per_job=1,
        stop_grace_seconds=1,
        export_for_serving=_no_export,
    )
    return jobs, db, files


def _running(db: sessionmaker[Session], job_id: str, **fields: object) -> None:
    row = {
        "job_id": job_id,
        "dataset_id": "ds_20240101_000000",
        "version": "v1",
        "model_name": "yolov8n.pt",
        "epochs": 12,
        "imgsz": 64,
        "batch": 4,
        "status": "running",
        "resume": False,
        "epochs_completed": 0,
        "weights_source": "",
        "error": "",
        "created_at": datetime(2024, 1, 1),
        "started_at": datetime(2024, 1, 1),
    }
    with transaction(db) as session:
        session.add(JobRow(**(row | fields)))


def _saved(files: TrainingFiles, job_id: str, epoch: int) -> None:
    """What a worker leaves after `epoch` epochs: last.pt and progress.json."""
    weights = files.job_dir(job_id) / "train" / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes(b"checkpoint")
    (files.job_dir(job_id) / "progress.json").write_text(json.dumps({"epoch": epoch, "epochs": 12, "metrics": {}}))


def test_an_interrupted_job_reports_the_epochs_its_worker_saved(setup: Setup) -> None:
    jobs, db, files = setup
    _running(db, "job_20240101_000001")
    _saved(files, "job_20240101_000001", epoch=2)

    jobs.recover()

    job = jobs.get("job_20240101_000001")
    assert (job.status, job.resume, job.epochs_completed) == ("interrupted", True, 2)
    assert jobs.epochs_completed(job) == 2
    log = files.log_file(job.job_id).read_text()
    assert "Job interrupted after 2 completed epoch(s)" in log

    asyncio.run(jobs.resume(job.job_id))
    assert "Resume requested: continuing after epoch 2" in files.log_file(job.job_id).read_text()
    assert jobs.get(job.job_id).status == "queued"


def test_a_job_without_progress_keeps_what_it_recorded(setup: Setup) -> None:
    jobs, db, _ = setup
    _running(db, "job_20240101_000002", epochs_completed=3)  # stopped after 3 epochs, resumed, then the crash

    jobs.recover()

    job = jobs.get("job_20240101_000002")
    assert (job.status, job.epochs_completed) == ("interrupted", 3)


def test_a_job_that_was_exporting_its_model_is_completed(setup: Setup) -> None:
    jobs, db, files = setup
    _running(db, "job_20240101_000003", model_id="model_20240101_000003", epochs_completed=12)
    _saved(files, "job_20240101_000003", epoch=12)

    jobs.recover()

    job = jobs.get("job_20240101_000003")
    assert (job.status, job.resume, job.model_id, job.epochs_completed) == (
        "completed",
        False,
        "model_20240101_000003",
        12,
    )
    assert job.completed_at is not None
    assert "model_20240101_000003 was exported" in files.log_file(job.job_id).read_text()
