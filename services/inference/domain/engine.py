"""Detection with a registered model: decode and letterbox here, execute on the model server (Triton),
decode the boxes here. Images and video frames take the same path; videos keep a few frames in flight so the
model server's instances stay busy while frames are decoded and drawn."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from services.common.aio import iterate_in_thread
from services.common.images import decode_image
from services.inference.domain.detection import (
    Detection,
    check_thresholds,
    draw_detections,
    letterbox,
    postprocess,
)
from services.inference.domain.models import ServableModel
from services.inference.domain.video import VideoInfo, VideoLimits, probe_video, read_frames

T = TypeVar("T")


class ModelRegistry(Protocol):
    async def get(self, model_id: str) -> ServableModel: ...


class ModelServer(Protocol):
    async def infer(self, model_id: str, batch: np.ndarray) -> np.ndarray: ...
    async def letterbox_stride(self, model_id: str) -> int: ...


@dataclass(frozen=True)
class Thresholds:
    conf: float
    iou: float


@dataclass(frozen=True)
class DetectedImage:
    image: np.ndarray  # BGR, original size
    detections: list[Detection]


@dataclass(frozen=True)
class AnnotatedFrame:
    index: int
    image: np.ndarray  # BGR with the detections drawn
    detections: list[Detection]


class DetectionEngine:
    def __init__(
        self, registry: ModelRegistry, server: ModelServer, defaults: Thresholds, max_image_pixels: int
    ) -> None:
        self._registry = registry
        self._server = server
        self._defaults = defaults
        self._max_image_pixels = max_image_pixels

    def thresholds(self, conf: float | None, iou: float | None) -> Thresholds:
        """The request's thresholds, defaults where it gave none; 400 when out of range."""
        chosen = Thresholds(self._defaults.conf if conf is None else conf, self._defaults.iou if iou is None else iou)
        check_thresholds(chosen.conf, chosen.iou)
        return chosen

    async def model(self, model_id: str) -> ServableModel:
        """The model, if it exists (404) and can be served (409 with the reason)."""
        model = await self._registry.get(model_id)
        model.require_ready()
        return model

    async def detect_encoded(self, model: ServableModel, data: bytes, thresholds: Thresholds) -> DetectedImage:
        """Detect on an encoded image (JPEG, PNG, ...); 400 if it is not a readable image."""
        image = await asyncio.to_thread(decode_image, data, self._max_image_pixels)
        return DetectedImage(image, await self.detect(model, image, thresholds))

    async def detect(self, model: ServableModel, image: np.ndarray, thresholds: Thresholds) -> list[Detection]:
        stride = await self._server.letterbox_stride(model.model_id)
        tensor, box = await asyncio.to_thread(letterbox, image, model.imgsz, stride)
        output = await self._server.infer(model.model_id, tensor[np.newaxis])
        return await asyncio.to_thread(postprocess, output[0], box, model.classes, thresholds.conf, thresholds.iou)

    async def annotate(
        self, model: ServableModel, index: int, frame: np.ndarray, thresholds: Thresholds
    ) -> AnnotatedFrame:
        detections = await self.detect(model, frame, thresholds)
        return AnnotatedFrame(index, await asyncio.to_thread(draw_detections, frame, detections), detections)

    def open_video(self, path: Path, limits: VideoLimits) -> VideoInfo:
        """Check the video before anything is sent (400 for corrupt, empty or unsupported files)."""
        return probe_video(path, limits)

    async def annotate_video(
        self, model: ServableModel, path: Path, limits: VideoLimits, thresholds: Thresholds, depth: int
    ) -> AsyncIterator[AnnotatedFrame]:
        """Annotated frames in order, decoded one at a time (never the whole video in memory), with up to
        `depth` frames at the model server at once."""
        in_flight: deque[asyncio.Task[AnnotatedFrame]] = deque()
        frames = iterate_in_thread(read_frames(path, limits))
        try:
            index = 0
            async for frame in frames:
                in_flight.append(asyncio.create_task(self.annotate(model, index, frame, thresholds)))
                index += 1
                if len(in_flight) >= depth:
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            await _cancel_all(in_flight)
            await frames.aclose()


async def _cancel_all(tasks: deque[asyncio.Task[AnnotatedFrame]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


async def run_bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the calls concurrently, at most `limit` at once (the model server batches them; decoded images
    of a large batch are not all in memory together); results in call order. The first failure cancels the
    rest and is raised as itself (a 400 stays a 400)."""
    gate = asyncio.Semaphore(limit)

    async def gated(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    tasks = [asyncio.ensure_future(gated(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
