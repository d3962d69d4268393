"""Inference service entry point: `python -m services.inference`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import structlog
from visionmesh.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.grpc_server import run_service, serve
from services.common.heap import keep_large_buffers_on_the_heap
from services.common.storage.db import create_db_engine, database_probe, migrate, session_factory
from services.common.triton.link import TritonLink
from services.common.triton.settings import TritonSettings
from services.inference.clients import ModelCatalog
from services.inference.domain.engine import DetectionEngine, Thresholds
from services.inference.domain.samples import SampleSet
from services.inference.domain.service import InferenceService
from services.inference.domain.tasks import TaskQueue, TaskRecord
from services.inference.domain.uploads import UploadStore
from services.inference.domain.video import VideoLimits
from services.inference.servicer import InferenceServicer, ServingControlServicer, TaskServicer
from services.inference.settings import InferenceSettings
from services.inference.storage.files import InferenceFiles
from services.inference.storage.sessions import SessionStore
from services.inference.storage.tables import MIGRATIONS, VERSION_TABLE, Base
from services.registry import address_of

log = structlog.get_logger("inference")

_SWEEP_INTERVAL_S = 3600.0


async def sweep_uploads(uploads: UploadStore, retention_hours: float) -> None:
    while True:
        removed = await asyncio.to_thread(uploads.sweep, retention_hours)
        if removed:
            log.info("uploads removed", count=removed, retention_hours=retention_hours, kept_bytes=uploads.total_bytes)
        await asyncio.sleep(_SWEEP_INTERVAL_S)


async def main(settings: InferenceSettings) -> None:
    keep_large_buffers_on_the_heap()
    engine = create_db_engine(settings.sqlalchemy_url("inference"))
    migrate(engine, MIGRATIONS, Base.metadata, version_table=VERSION_TABLE)
    db = session_factory(engine)
    files = InferenceFiles(settings.data_root)
    catalog = ModelCatalog(address_of("training").grpc_address, export_wait_seconds=settings.export_wait_seconds)
    triton = TritonLink(TritonSettings())
    detection = DetectionEngine(
        catalog, triton, Thresholds(settings.default_conf, settings.default_iou), settings.max_image_pixels
    )
    uploads = await asyncio.to_thread(UploadStore, files.uploads_root, settings.upload_max_total_bytes)
    sessions = SessionStore(db, files.sessions_root)
    service = InferenceService(
        detection,
        triton,
        catalog,
        uploads=uploads,
        sessions=sessions,
        work_root=files.work_root,
        video_limits=VideoLimits(settings.max_video_pixels, settings.max_video_frames),
        video_pipeline_depth=settings.video_pipeline_depth,
        max_batch_images=settings.max_batch_images,
        max_inline_video_bytes=settings.max_inline_video_bytes,
    )

    async def run_task(task: TaskRecord, sample, output: Path) -> None:
        await service.run_sample(task.model_id, sample, output)

    async def resolve_task_model() -> str:
        if settings.task_model_id:
            return (await detection.model(settings.task_model_id)).model_id
        return (await catalog.newest_ready()).model_id

    tasks = TaskQueue(
        db,
        files,
        SampleSet(settings.sample_root),
        run_task,
        capacity=settings.task_queue_capacity,
        workers=settings.task_workers,
        max_attempts=settings.task_max_attempts,
        resolve_model=resolve_task_model,
    )
    await asyncio.to_thread(files.discard_leftovers)
    await asyncio.to_thread(sessions.recover)
    await asyncio.to_thread(tasks.recover)
    background = [
        asyncio.create_task(triton.watch(), name="triton-watch"),
        asyncio.create_task(tasks.run(), name="task-queue"),
        asyncio.create_task(sweep_uploads(uploads, settings.upload_retention_hours), name="upload-retention"),
    ]

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(service, settings), server)
        inference_pb2_grpc.add_ServingControlServicer_to_server(ServingControlServicer(service), server)
        inference_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(tasks, triton), server)
        return [s.full_name for s in inference_pb2.DESCRIPTOR.services_by_name.values()]

    async def shutdown() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await triton.close()
        await catalog.close()
        engine.dispose()

    await serve("inference", settings, register, readiness=database_probe(engine), on_shutdown=shutdown)


if __name__ == "__main__":
    inference_settings = InferenceSettings()
    run_service("inference", inference_settings, lambda: main(inference_settings))
