"""The inference service's use cases: detect on uploaded images, batches, videos and streams, keep the uploads,
write export sessions, and load or unload models on the model server."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import structlog

from services.common.clock import utcnow
from services.common.downloads import Download
from services.common.errors import InvalidArgument, NotFound, PayloadTooLarge
from services.common.storage.files import atomic_write_bytes, fsync_dir, staging_dir
from services.common.uploads import ReceivedFile
from services.inference.domain.detection import Detection, draw_detections, encode_jpeg
from services.inference.domain.engine import DetectedImage, DetectionEngine, Thresholds, run_bounded
from services.inference.domain.models import ServableModel
from services.inference.domain.samples import Sample
from services.inference.domain.sessions import (
    SessionImage,
    check_session_id,
    new_image_uuid,
    new_session_id,
    session_archive,
    write_annotated_image,
    write_session_files,
)
from services.inference.domain.uploads import UploadStore
from services.inference.domain.video import Mp4Writer, VideoInfo, VideoLimits

log = structlog.get_logger("inference")

_MAX_MODELS_PER_BATCH = 16
_IMAGES_IN_FLIGHT = 8
_STREAM_JPEG_QUALITY = 90  # DetectStream's annotated frames
_EVENT_JPEG_QUALITY = 80  # the frames of the Server-Sent Events video stream: smaller events


class ModelLoader(Protocol):
    async def ensure_loaded(self, model_id: str, *, retry_failed: bool = False) -> object: ...
    async def unload(self, model_id: str) -> None: ...


class ModelCache(Protocol):
    def forget(self, model_id: str) -> None: ...


class SessionIndex(Protocol):
    """Where sessions are recorded (the metadata store)."""

    def record(self, session_id: str, model_id: str, image_count: int) -> None: ...
    def exists(self, session_id: str) -> bool: ...
    def directory(self, session_id: str) -> Path: ...


@dataclass(frozen=True)
class ImageResult:
    model_id: str
    image_path: str
    detections: list[Detection]


@dataclass(frozen=True)
class VideoResult:
    info: VideoInfo
    video_path: Path
    detections_per_frame: list[int]


@dataclass(frozen=True)
class StreamRequest:
    """One message of a detection stream. The first message's model, thresholds and `annotate` hold for the
    whole stream; each message carries one encoded frame or the next chunk of one video (or neither)."""

    model_id: str
    conf: float | None
    iou: float | None
    annotate: bool
    image: bytes | None
    video_chunk: bytes | None


@dataclass(frozen=True)
class StreamedFrame:
    index: int
    width: int
    height: int
    detections: list[Detection]
    inference_ms: float  # from the frame's arrival (a video's: from the previous frame) to its detections
    annotated_jpeg: bytes  # the frame with its detections drawn; empty unless asked for


@dataclass(frozen=True)
class VideoStream:
    """A video checked before its first frame (errors until here can still be a status), then its frames."""

    model_id: str
    info: VideoInfo
    frames: AsyncIterator[StreamedFrame]


@dataclass(frozen=True)
class Session:
    session_id: str
    directory: Path
    images: list[SessionImage]


class VideoAssembly:
    """A video arriving in chunks (native DetectStream), written to a staging file under a size limit."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._size = 0
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()

    def append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_bytes:
            self._handle.close()
            raise PayloadTooLarge(f"The video is larger than the {self._max_bytes / 2**20:.0f} MiB limit")
        self._handle.write(chunk)

    def close(self) -> None:
        self._handle.close()


class InferenceService:
    def __init__(
        self,
        engine: DetectionEngine,
        loader: ModelLoader,
        models: ModelCache,
        *,
        uploads: UploadStore,
        sessions: SessionIndex,
        work_root: Path,
        video_limits: VideoLimits,
        video_pipeline_depth: int,
        max_batch_images: int,
        max_inline_video_bytes: int,
    ) -> None:
        self._engine = engine
        self._uploads = uploads
        self._video_limits = video_limits
        self._loader = loader
        self._models = models
        self._sessions = sessions
        self._work_root = work_root
        self._depth = video_pipeline_depth
        self._max_batch_images = max_batch_images
        self._max_inline_video_bytes = max_inline_video_bytes

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory for one request's files, removed when the request ends (whatever happens)."""
        self._work_root.mkdir(parents=True, exist_ok=True)
        with staging_dir(self._work_root) as directory:
            yield directory

    def thresholds(self, conf: float | None, iou: float | None) -> Thresholds:
        """The request's thresholds, defaults where it gave none; 400 when out of range."""
        return self._engine.thresholds(conf, iou)

    def open_upload(self, filename: str) -> Download:
        """A kept upload, as the documented image_path serves it."""
        return self._uploads.open(filename)

    # -- images ------------------------------------------------------------------------------------------

    async def _detect_file(self, model: ServableModel, received: ReceivedFile, thresholds: Thresholds) -> DetectedImage:
        if received.size == 0:
            raise InvalidArgument(f"{received.filename}: the file is empty")
        data = await asyncio.to_thread(received.path.read_bytes)
        try:
            return await self._engine.detect_encoded(model, data, thresholds)
        except InvalidArgument as error:
            raise InvalidArgument(f"{received.filename}: {error.detail}") from None

    async def infer_image(self, model_id: str, received: ReceivedFile, thresholds: Thresholds) -> ImageResult:
        model = await self._engine.model(model_id)
        detected = await self._detect_file(model, received, thresholds)
        stem = self._uploads.batch_prefix(utcnow())
        image_path = await asyncio.to_thread(self._uploads.keep, received.path, stem)
        return ImageResult(model.model_id, image_path, detected.detections)

    def _images(self, files: list[ReceivedFile]) -> list[ReceivedFile]:
        if not files:
            raise InvalidArgument('No images: send them as multipart form fields named "files"')
        if len(files) > self._max_batch_images:
            raise InvalidArgument(f"Too many images: {len(files)} (at most {self._max_batch_images} per request)")
        return files

    async def infer_batch(self, model_ids: str, files: list[ReceivedFile], thresholds: Thresholds) -> list[ImageResult]:
        ids = list(dict.fromkeys(part.strip() for part in model_ids.split(",") if part.strip()))
        if not ids:
            raise InvalidArgument('model_ids is required: a comma-separated list of model IDs, e.g. "model_1,model_2"')
        if len(ids) > _MAX_MODELS_PER_BATCH:
            raise InvalidArgument(f"Too many models: {len(ids)} (at most {_MAX_MODELS_PER_BATCH} per request)")
        images = self._images(files)
        models = [await self._engine.model(model_id) for model_id in ids]
        detected = await run_bounded(
            [
                (lambda model=model, image=image: self._detect_file(model, image, thresholds))
                for image in images
                for model in models
            ],
            _IMAGES_IN_FLIGHT,
        )
        stem = self._uploads.batch_prefix(utcnow())
        paths = [
            await asyncio.to_thread(self._uploads.keep, image.path, f"{stem}_{n}") for n, image in enumerate(images, 1)
        ]
        pairs = [(path, model) for path in paths for model in models]
        return [
            ImageResult(model.model_id, path, d.detections) for (path, model), d in zip(pairs, detected, strict=True)
        ]

    # -- videos ------------------------------------------------------------------------------------------

    async def open_video(self, model_id: str, path: Path) -> tuple[ServableModel, VideoInfo]:
        model = await self._engine.model(model_id)
        if path.stat().st_size == 0:
            raise InvalidArgument("The video file is empty")
        info = await asyncio.to_thread(self._engine.open_video, path, self._video_limits)
        # Loaded before the first frame: a model Triton cannot load is a 409 answer, not an error event.
        await self._loader.ensure_loaded(model.model_id)
        return model, info

    async def annotate_video_file(
        self, model_id: str, source: Path, thresholds: Thresholds, staging: Path
    ) -> VideoResult:
        """The annotated video as an H.264 MP4 in `staging`, written frame by frame."""
        model, info = await self.open_video(model_id, source)
        output = staging / "annotated.mp4"
        counts: list[int] = []
        writer = Mp4Writer(output, info.width, info.height, info.fps)
        try:
            async for frame in self._engine.annotate_video(model, source, self._video_limits, thresholds, self._depth):
                await asyncio.to_thread(writer.write, frame.image)
                counts.append(len(frame.detections))
        except BaseException as error:
            # The partial file goes; the error that stopped the video is what the caller hears about.
            await asyncio.to_thread(writer.__exit__, type(error), error, error.__traceback__)
            raise
        await asyncio.to_thread(writer.close)
        log.info("video annotated", model_id=model_id, frames=len(counts), detections=sum(counts))
        return VideoResult(info, output, counts)

    async def annotate_video_inline(
        self, model_id: str, source: Path, thresholds: Thresholds, staging: Path
    ) -> tuple[VideoResult, bytes]:
        """The annotated video's bytes, for an answer that carries it inline; 413 beyond the inline limit."""
        result = await self.annotate_video_file(model_id, source, thresholds, staging)
        size = result.video_path.stat().st_size
        if size > self._max_inline_video_bytes:
            raise PayloadTooLarge(
                f"The annotated video is {size / 2**20:.1f} MiB, over the {self._max_inline_video_bytes / 2**20:.0f}"
                f" MiB limit of an inline answer: use POST /infer/video/{model_id}/stream"
            )
        return result, await asyncio.to_thread(result.video_path.read_bytes)

    async def open_video_stream(self, model_id: str, source: Path, thresholds: Thresholds) -> VideoStream:
        """The video checked and its model loaded (the refusals come now, before any frame); its frames, drawn
        and as JPEG, come as they are annotated."""
        model, info = await self.open_video(model_id, source)
        return VideoStream(model.model_id, info, self._video_frames(model, source, thresholds, _EVENT_JPEG_QUALITY))

    async def _video_frames(
        self, model: ServableModel, source: Path, thresholds: Thresholds, jpeg_quality: int | None
    ) -> AsyncIterator[StreamedFrame]:
        started = time.perf_counter()
        frames = self._engine.annotate_video(model, source, self._video_limits, thresholds, self._depth)
        async with aclosing(frames):
            async for frame in frames:
                elapsed_ms = _ms_since(started)
                yield await _streamed_frame(frame.index, frame.image, frame.detections, elapsed_ms, jpeg_quality)
                started = time.perf_counter()

    # -- detection streams (native DetectStream) --------------------------------------------------------

    async def detect_stream(
        self, requests: AsyncIterator[StreamRequest], max_video_bytes: int
    ) -> AsyncIterator[StreamedFrame]:
        """A stream of encoded frames, each answered before the next is read, or of one video sent in chunks
        (at most `max_video_bytes`), answered frame by frame once the client has sent all of it; never both.
        The first request names the model (404/409 before anything is answered) and the thresholds."""
        with self.staging() as staging:
            model: ServableModel | None = None
            thresholds = self._engine.thresholds(None, None)
            quality: int | None = None
            frames = 0
            video: VideoAssembly | None = None
            try:
                async for request in requests:
                    if model is None:
                        model = await self._engine.model(request.model_id)
                        thresholds = self._engine.thresholds(request.conf, request.iou)
                        quality = _STREAM_JPEG_QUALITY if request.annotate else None
                    if request.image is not None:
                        if video is not None:
                            raise InvalidArgument("Send either encoded frames or one video, not both")
                        started = time.perf_counter()
                        detected = await self._engine.detect_encoded(model, request.image, thresholds)
                        elapsed_ms = _ms_since(started)
                        shown = detected.image
                        if quality:
                            shown = await asyncio.to_thread(draw_detections, detected.image, detected.detections)
                        yield await _streamed_frame(frames, shown, detected.detections, elapsed_ms, quality)
                        frames += 1
                    elif request.video_chunk is not None:
                        if frames:
                            raise InvalidArgument("Send either encoded frames or one video, not both")
                        video = video or VideoAssembly(staging / "video", max_video_bytes)
                        await asyncio.to_thread(video.append, request.video_chunk)
            finally:
                if video is not None:
                    video.close()
            if video is None or model is None:
                return
            await self.open_video(model.model_id, video.path)
            async with aclosing(self._video_frames(model, video.path, thresholds, quality)) as video_frames:
                async for frame in video_frames:
                    yield frame

    # -- export sessions ---------------------------------------------------------------------------------

    async def export_session(self, model_id: str, files: list[ReceivedFile], thresholds: Thresholds) -> Session:
        model = await self._engine.model(model_id)
        images = self._images(files)
        created = utcnow()
        session_id = new_session_id(created)
        target = self._sessions.directory(session_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(target.parent) as staging:

            async def one(received: ReceivedFile) -> SessionImage:
                detected = await self._detect_file(model, received, thresholds)
                image_uuid = new_image_uuid()
                annotated = await asyncio.to_thread(draw_detections, detected.image, detected.detections)
                await asyncio.to_thread(write_annotated_image, staging, image_uuid, annotated)
                height, width = detected.image.shape[:2]
                return SessionImage(image_uuid, received.filename, model.model_id, width, height, detected.detections)

            results = await run_bounded([(lambda r=r: one(r)) for r in images], _IMAGES_IN_FLIGHT)
            settings = {"conf": thresholds.conf, "iou": thresholds.iou}
            await asyncio.to_thread(
                lambda: write_session_files(
                    staging, session_id, model_id=model.model_id, created_at=created, images=results, settings=settings
                )
            )
            await asyncio.to_thread(_publish, staging, target)
        try:
            await asyncio.to_thread(self._sessions.record, session_id, model.model_id, len(results))
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, target, True)
            raise
        log.info("export session written", session_id=session_id, images=len(results))
        return Session(session_id, target, results)

    def session_archive(self, session_id: str) -> Download:
        if not self._sessions.exists(check_session_id(session_id)):
            raise NotFound(f"Session {session_id} not found")
        return session_archive(self._sessions.directory(session_id), session_id)

    # -- queued tasks (document 002) -------------------------------------------------------------------

    async def run_sample(self, model_id: str, sample: Sample, output: Path) -> None:
        """A task's work: every image of the sample annotated as result_001.jpg, ..., every video as
        output.mp4 (output_2.mp4, ...), written into `output`."""
        model = await self._engine.model(model_id)
        thresholds = self._engine.thresholds(None, None)
        for number, image_file in enumerate(sample.images, 1):
            data = await asyncio.to_thread(image_file.read_bytes)
            try:
                detected = await self._engine.detect_encoded(model, data, thresholds)
            except InvalidArgument as error:
                raise InvalidArgument(f"Sample file {image_file.name}: {error.detail}") from None
            annotated = await asyncio.to_thread(draw_detections, detected.image, detected.detections)
            await asyncio.to_thread(atomic_write_bytes, output / f"result_{number:03d}.jpg", encode_jpeg(annotated))
        for number, video_file in enumerate(sample.videos, 1):
            name = "output.mp4" if number == 1 else f"output_{number}.mp4"
            try:
                result = await self.annotate_video_file(model.model_id, video_file, thresholds, output)
            except InvalidArgument as error:
                raise InvalidArgument(f"Sample file {video_file.name}: {error.detail}") from None
            os.replace(result.video_path, output / name)

    # -- model lifecycle ---------------------------------------------------------------------------------

    async def load_model(self, model_id: str) -> None:
        self._models.forget(model_id)
        model = await self._engine.model(model_id)
        await self._loader.ensure_loaded(model.model_id, retry_failed=True)

    async def unload_model(self, model_id: str) -> None:
        self._models.forget(model_id)
        await self._loader.unload(model_id)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _streamed_frame(
    index: int, shown: np.ndarray, detections: list[Detection], inference_ms: float, jpeg_quality: int | None
) -> StreamedFrame:
    """`shown` (the frame as it is returned: with its detections drawn) as JPEG when a quality is given."""
    height, width = shown.shape[:2]
    jpeg = await asyncio.to_thread(encode_jpeg, shown, jpeg_quality) if jpeg_quality else b""
    return StreamedFrame(index, width, height, detections, inference_ms, jpeg)


def _publish(staging: Path, target: Path) -> None:
    os.rename(staging, target)
    fsync_dir(target.parent)
