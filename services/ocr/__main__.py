"""OCR service entry point: `python -m services.ocr`."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog
from visionmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from services.common.grpc_server import run_service, serve
from services.common.image_urls import fetch_policy
from services.ocr.domain.engine import OcrEngine
from services.ocr.domain.service import OcrService
from services.ocr.servicer import OcrServicer, TextReaderServicer
from services.ocr.settings import OcrSettings

log = structlog.get_logger("ocr")


async def main(settings: OcrSettings) -> None:
    engine = OcrEngine(
        det_limit_side_len=settings.det_limit_side_len,
        threads=settings.threads,
        min_score=settings.min_score,
        use_angle_cls=settings.use_angle_cls,
    )
    started = time.monotonic()
    # Model loading happens on the first read: pay it now, not in the first request.
    await asyncio.to_thread(engine.warm_up)
    log.info("ocr models ready", seconds=round(time.monotonic() - started, 2))
    service = OcrService(
        engine, fetch_policy(settings), max_images=settings.max_images, max_image_pixels=settings.max_image_pixels
    )

    def register(server: grpc.aio.Server) -> list[str]:
        ocr_pb2_grpc.add_OcrServiceServicer_to_server(OcrServicer(service), server)
        ocr_pb2_grpc.add_TextReaderServicer_to_server(TextReaderServicer(service), server)
        return [s.full_name for s in ocr_pb2.DESCRIPTOR.services_by_name.values()]

    await serve("ocr", settings, register)


if __name__ == "__main__":
    ocr_settings = OcrSettings()
    run_service("ocr", ocr_settings, lambda: main(ocr_settings))
