"""Training service entry point: `python -m services.training`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
from visionmesh.training.v1 import training_pb2, training_pb2_grpc

from services.common.archives import ZipLimits
from services.common.grpc_server import run_service, serve
from services.common.storage.db import create_db_engine, database_probe, migrate, session_factory
from services.common.triton.settings import TritonSettings
from services.registry import address_of
from services.training.clients import GrpcDatasetSource, GrpcServingControl
from services.training.domain.jobs import JobLimits, JobManager
from services.training.domain.models import ModelRegistry, ModelService, ServingExporter
from services.training.servicer import LogServicer, ModelServicer, TrainingServicer
from services.training.settings import TrainingSettings
from services.training.storage.files import TrainingFiles
from services.training.storage.tables import Base
from services.training.ultralytics_env import ultralytics_environment

MIGRATIONS = Path(__file__).parent / "storage" / "migrations"


async def main(settings: TrainingSettings) -> None:
    engine = create_db_engine(settings.sqlalchemy_url("training"))
    migrate(engine, MIGRATIONS, Base.metadata, version_table="alembic_version_training")
    db = session_factory(engine)
    files = TrainingFiles(settings.data_root)
    worker_env = await asyncio.to_thread(ultralytics_environment, files.ultralytics_config)
    # This process imports Ultralytics too (checkpoint inspection of uploaded models): offline as well.
    os.environ.update(worker_env)
    zip_limits = ZipLimits()
    models = ModelRegistry(db, files, TritonSettings(), zip_limits, worker_env)
    await asyncio.to_thread(models.recover)
    exporter = ServingExporter(models)
    datasets = GrpcDatasetSource(address_of("dataset").grpc_address, zip_limits)
    serving = GrpcServingControl(address_of("inference").grpc_address)
    model_service = ModelService(models, exporter, serving)
    # One core stays for the rest of the mesh: oversubscribed torch threads slow an epoch down many times over.
    threads = settings.worker_threads_per_job or max(1, (os.cpu_count() or 1) // settings.max_concurrent_jobs - 1)
    jobs = JobManager(
        db,
        files,
        datasets,
        models,
        slots=settings.max_concurrent_jobs,
        limits=JobLimits(settings.max_epochs, settings.max_imgsz, settings.max_batch),
        worker_env=worker_env,
        weights_dir=settings.pretrained_weights_dir,
        threads_per_job=threads,
        stop_grace_seconds=settings.stop_grace_seconds,
        export_for_serving=model_service.registered,  # the one path of every registered model
    )
    await asyncio.to_thread(jobs.recover)
    background = [asyncio.create_task(exporter.run(), name="onnx-exports")]

    def register(server: grpc.aio.Server) -> list[str]:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(jobs), server)
        training_pb2_grpc.add_LogServiceServicer_to_server(LogServicer(jobs), server)
        training_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(model_service, settings), server)
        return [service.full_name for service in training_pb2.DESCRIPTOR.services_by_name.values()]

    async def shutdown() -> None:
        for task in background:
            task.cancel()
        await jobs.shutdown()
        await datasets.close()
        await serving.close()
        engine.dispose()

    await jobs.schedule()  # queued jobs from before a restart start now
    await serve("training", settings, register, readiness=database_probe(engine), on_shutdown=shutdown)


if __name__ == "__main__":
    training_settings = TrainingSettings()
    run_service("training", training_settings, lambda: main(training_settings))
