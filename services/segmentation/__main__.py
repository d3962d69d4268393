"""Segmentation service entry point: `python -m services.segmentation`."""

from __future__ import annotations

import asyncio

import grpc
import structlog
from visionmesh.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.grpc_server import run_service, serve
from services.common.image_urls import fetch_policy
from services.common.storage.db import create_db_engine, database_probe, migrate, session_factory
from services.common.triton.link import TritonLink
from services.common.triton.settings import TritonSettings
from services.registry import address_of
from services.segmentation.clients import GrpcTextReader
from services.segmentation.domain.builtin_start import BuiltinClassifierStart
from services.segmentation.domain.classification import ComponentClassifier
from services.segmentation.domain.ingest import IngestTasks
from services.segmentation.domain.layout_segmenter import LayoutSegmenter
from services.segmentation.domain.resources import TrainingResources
from services.segmentation.domain.sam import SamSegmenter
from services.segmentation.domain.segmenters import LayoutAdapter, SamAdapter, Segmenter, Segmenters
from services.segmentation.domain.service import ComponentService
from services.segmentation.domain.training import TrainingManager
from services.segmentation.servicer import ClassifierTrainingServicer, ComponentServicer, IngestServicer
from services.segmentation.settings import SegmentationSettings
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import MIGRATIONS, VERSION_TABLE, Base

log = structlog.get_logger("segmentation")


def build_segmenters(settings: SegmentationSettings) -> Segmenters:
    layout: Segmenter = LayoutAdapter(LayoutSegmenter())
    if settings.sam_checkpoint is None:
        if settings.ingest_segmenter == "sam":
            raise SystemExit("VM_SEGMENTATION_INGEST_SEGMENTER=sam needs VM_SEGMENTATION_SAM_CHECKPOINT")
        log.info("no SAM checkpoint configured: the layout segmenter answers every route")
        return Segmenters(prompts=layout, ingest=layout)
    try:
        sam = SamSegmenter(
            settings.sam_model_type,
            settings.sam_checkpoint,
            threads=settings.sam_threads,
            points_per_side=settings.sam_points_per_side,
            pred_iou_thresh=settings.sam_pred_iou_thresh,
            stability_score_thresh=settings.sam_stability_score_thresh,
        )
    except ValueError as error:
        raise SystemExit(f"cannot load the SAM checkpoint: {error}") from error
    adapter: Segmenter = SamAdapter(sam, settings.sam_model_type)
    log.info("SAM loaded", model_type=settings.sam_model_type, checkpoint=str(settings.sam_checkpoint))
    return Segmenters(prompts=adapter, ingest=layout if settings.ingest_segmenter == "layout" else adapter)


async def main(settings: SegmentationSettings) -> None:
    engine = create_db_engine(settings.sqlalchemy_url("segmentation"))
    migrate(engine, MIGRATIONS, Base.metadata, version_table=VERSION_TABLE)
    db = session_factory(engine)
    files = SegmentationFiles(settings.data_root)
    await asyncio.to_thread(files.prepare)
    triton_settings = TritonSettings()
    triton = TritonLink(triton_settings)
    text_reader = GrpcTextReader(address_of("ocr").grpc_address, settings.grpc_max_message_bytes)
    policy = fetch_policy(settings)
    segmenters = await asyncio.to_thread(build_segmenters, settings)

    async def load_into_triton(model_id: str) -> None:
        await triton.ensure_loaded(model_id, retry_failed=True)

    manager = TrainingManager(
        db,
        files,
        repository=triton_settings.repository,
        # Classifier requests carry whole batches of component crops: Triton's batch limit must admit them.
        triton=triton_settings.model_copy(update={"max_batch_size": settings.classify_batch_size}),
        on_model_ready=load_into_triton,
        default_model_id=settings.default_model_id,
        builtin_epochs=settings.builtin_epochs,
        builtin_per_class=settings.builtin_per_class,
        builtin_heldout_per_class=settings.builtin_heldout_per_class,
        training_rendered_per_class=settings.training_rendered_per_class,
        training_threads=settings.training_threads,
        training_max_attempts=settings.training_max_attempts,
    )
    await asyncio.to_thread(manager.ensure_builtin)
    builtin = BuiltinClassifierStart(manager, files)
    resources = TrainingResources(db, files, policy, settings.max_image_pixels)
    service = ComponentService(
        segmenters,
        text_reader,
        ComponentClassifier(manager, triton, settings.classify_batch_size),
        policy=policy,
        max_image_pixels=settings.max_image_pixels,
        timeout_seconds=settings.segmentation_timeout_seconds,
        max_resnet_images=settings.max_resnet_images,
    )
    ingest = IngestTasks(
        db,
        files,
        analyse=service.analyse_page,
        load_url=service.load,
        segmenter=service.ingest_segmenter,
        workers=settings.ingest_workers,
        max_attempts=settings.ingest_max_attempts,
        max_image_pixels=settings.max_image_pixels,
    )
    background = [
        asyncio.create_task(triton.watch(), name="triton-watch"),
        asyncio.create_task(manager.run(), name="classifier-training"),
        asyncio.create_task(ingest.run(), name="ingest-tasks"),
        asyncio.create_task(builtin.follow(), name="builtin-classifier-progress"),
    ]
    database_ready = database_probe(engine)

    async def ready() -> bool:
        # Not before the built-in classifier is trained: until then requests that name no model answer 805.
        return await database_ready() and await builtin.settled()

    def register(server: grpc.aio.Server) -> list[str]:
        segmentation_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(ingest, settings), server)
        segmentation_pb2_grpc.add_ComponentServiceServicer_to_server(ComponentServicer(service), server)
        segmentation_pb2_grpc.add_ClassifierTrainingServicer_to_server(
            ClassifierTrainingServicer(manager, resources), server
        )
        return [s.full_name for s in segmentation_pb2.DESCRIPTOR.services_by_name.values()]

    async def shutdown() -> None:
        await manager.shutdown()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await text_reader.close()
        await triton.close()
        engine.dispose()

    await serve("segmentation", settings, register, readiness=ready, on_shutdown=shutdown)


if __name__ == "__main__":
    segmentation_settings = SegmentationSettings()
    run_service("segmentation", segmentation_settings, lambda: main(segmentation_settings))
