"""The inference service's streams (DetectStream, and the video of the Server-Sent Events route): the rules
that were the servicer's, run on the real service and detection engine with real images and a real video; only
the model server is a stand-in that finds one box in the middle of every input."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from services.common.errors import Conflict, InvalidArgument, NotFound, PayloadTooLarge
from services.common.images import read_header
from services.inference.domain.engine import DetectionEngine, Thresholds
from services.inference.domain.models import ServableModel
from services.inference.domain.service import InferenceService, StreamedFrame, StreamRequest
from services.inference.domain.uploads import UploadStore
from services.inference.domain.video import VideoLimits
from tests.unit.inference.test_video import moving_rectangle_frames, write_with_opencv

MODEL = ServableModel("model_20240115_123456", ("box",), 64, "ready", "")
FAILED = ServableModel("model_20240115_000000", ("box",), 64, "failed", "onnx said no")
BOX_CONFIDENCE = 0.8


class Registry:
    async def get(self, model_id: str) -> ServableModel:
        for model in (MODEL, FAILED):
            if model.model_id == model_id:
                return model
        raise NotFound(f"Model {model_id!r} not found")


class CentreBoxServer:
    """Answers every input with one 'box' of confidence 0.8 covering the middle quarter of the model input."""

    async def letterbox_stride(self, model_id: str) -> int:
        return 0

    async def infer(self, model_id: str, batch: np.ndarray) -> np.ndarray:
        _, _, height, width = batch.shape
        output = np.zeros((1, 5, 1), np.float32)
        output[0, :, 0] = (width / 2, height / 2, width / 2, height / 2, BOX_CONFIDENCE)
        return output


class Loader:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    async def ensure_loaded(self, model_id: str, *, retry_failed: bool = False) -> object:
        self.loaded.append(model_id)
        return None

    async def unload(self, model_id: str) -> None:
        raise AssertionError("not used by streams")


class Forgetful:
    def forget(self, model_id: str) -> None:
        raise AssertionError("not used by streams")


def service(tmp_path: Path, loader: Loader | None = None) -> InferenceService:
    engine = DetectionEngine(Registry(), CentreBoxServer(), Thresholds(0.25, 0.45), max_image_pixels=10_000_000)
    return InferenceService(
        engine,
        loader or Loader(),
        Forgetful(),
        uploads=UploadStore(tmp_path / "uploads", 0),
        sessions=None,  # type: ignore[arg-type]
        work_root=tmp_path / "work",
        video_limits=VideoLimits(max_pixels=1_000_000, max_frames=1000),
        video_pipeline_depth=2,
        max_batch_images=8,
        max_inline_video_bytes=1 << 20,
    )


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def request(
    *,
    model_id: str = "",
    conf: float | None = None,
    annotate: bool = False,
    image: bytes | None = None,
    video_chunk: bytes | None = None,
) -> StreamRequest:
    return StreamRequest(model_id, conf, None, annotate, image, video_chunk)


async def pulled(requests: Iterable[StreamRequest], log: list[str]) -> AsyncIterator[StreamRequest]:
    for index, item in enumerate(requests):
        log.append(f"read {index}")
        yield item


def run(inference: InferenceService, requests: Iterable[StreamRequest], max_video_bytes: int = 1 << 20):
    async def collect() -> list[StreamedFrame]:
        return [frame async for frame in inference.detect_stream(pulled(requests, []), max_video_bytes)]

    return asyncio.run(collect())


def video_bytes(tmp_path: Path, count: int, width: int = 96, height: int = 64) -> bytes:
    path = write_with_opencv(tmp_path / "clip.avi", "MJPG", moving_rectangle_frames(count, width, height), 25)
    return path.read_bytes()


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[offset : offset + size] for offset in range(0, len(data), size)]


# --- encoded frames -------------------------------------------------------------------------------------------


def test_each_frame_is_answered_before_the_next_is_read(tmp_path: Path) -> None:
    inference = service(tmp_path)
    sizes = [(80, 60), (64, 64), (40, 100)]
    log: list[str] = []

    async def collect() -> None:
        requests = [request(model_id=MODEL.model_id, image=png(*sizes[0]))]
        requests += [request(image=png(*size)) for size in sizes[1:]]
        async for frame in inference.detect_stream(pulled(requests, log), 1 << 20):
            log.append(f"answer {frame.index} {frame.width}x{frame.height}")

    asyncio.run(collect())
    assert log == ["read 0", "answer 0 80x60", "read 1", "answer 1 64x64", "read 2", "answer 2 40x100"]


def test_frames_carry_detections_in_their_own_pixels(tmp_path: Path) -> None:
    [frame] = run(service(tmp_path), [request(model_id=MODEL.model_id, image=png(128, 64))])
    [detection] = frame.detections
    assert (detection.class_name, round(detection.confidence, 3)) == ("box", BOX_CONFIDENCE)
    # The middle quarter of the square model input is the middle half of the 128x64 frame's height.
    assert (detection.x1, detection.y1, detection.x2, detection.y2) == pytest.approx((32, 0, 96, 64), abs=1)
    assert frame.inference_ms > 0 and frame.annotated_jpeg == b""


def test_annotated_frames_come_back_as_jpeg_of_the_frame_size(tmp_path: Path) -> None:
    frames = run(service(tmp_path), [request(model_id=MODEL.model_id, annotate=True, image=png(90, 70))] * 2)
    for frame in frames:
        assert read_header(frame.annotated_jpeg).format == "JPEG"
        annotated = cv2.imdecode(np.frombuffer(frame.annotated_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert annotated.shape == (70, 90, 3)
        assert not np.all(np.abs(annotated.astype(int) - (150, 90, 30)).max(axis=2) <= 8)  # the box is drawn


def test_the_first_request_sets_model_and_thresholds_for_the_whole_stream(tmp_path: Path) -> None:
    strict = request(model_id=MODEL.model_id, conf=0.9, image=png(64, 64))
    later = request(model_id="model_20991231_000000", conf=0.1, image=png(64, 64))  # ignored: not the first
    assert [frame.detections for frame in run(service(tmp_path), [strict, later])] == [[], []]


@pytest.mark.parametrize(
    ("first", "error", "reason"),
    [
        (request(model_id="model_20991231_000000", image=png(8, 8)), NotFound, "model_20991231_000000"),
        (request(model_id=FAILED.model_id, image=png(8, 8)), Conflict, "onnx said no"),
        (request(model_id=MODEL.model_id, conf=1.5, image=png(8, 8)), InvalidArgument, "conf"),
        (request(model_id=MODEL.model_id, image=b"not an image"), InvalidArgument, "not a readable image"),
    ],
    ids=["unknown-model", "unservable-model", "bad-threshold", "not-an-image"],
)
def test_refusals_come_before_any_answer(tmp_path: Path, first: StreamRequest, error: type, reason: str) -> None:
    with pytest.raises(error, match=reason):
        run(service(tmp_path), [first])


def test_an_empty_stream_answers_nothing(tmp_path: Path) -> None:
    assert run(service(tmp_path), []) == []
    assert run(service(tmp_path), [request(model_id=MODEL.model_id)]) == []  # neither a frame nor a chunk


# --- one video in chunks --------------------------------------------------------------------------------------


def test_a_chunked_video_is_answered_frame_by_frame_after_the_last_chunk(tmp_path: Path) -> None:
    loader = Loader()
    parts = chunks(video_bytes(tmp_path, 12), 4096)
    assert len(parts) > 2
    requests = [request(model_id=MODEL.model_id, video_chunk=parts[0])] + [request(video_chunk=p) for p in parts[1:]]
    frames = run(service(tmp_path, loader), requests)
    assert [frame.index for frame in frames] == list(range(12))
    assert all((frame.width, frame.height) == (96, 64) and len(frame.detections) == 1 for frame in frames)
    assert all(frame.annotated_jpeg == b"" for frame in frames)
    assert loader.loaded == [MODEL.model_id]  # loaded before the first frame


def test_an_annotated_video_stream_returns_each_frame_as_jpeg(tmp_path: Path) -> None:
    frames = run(
        service(tmp_path), [request(model_id=MODEL.model_id, annotate=True, video_chunk=video_bytes(tmp_path, 3))]
    )
    assert [read_header(frame.annotated_jpeg).size for frame in frames] == [(96, 64)] * 3


def test_a_video_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    data = video_bytes(tmp_path, 12)
    requests = [request(model_id=MODEL.model_id, video_chunk=part) for part in chunks(data, 1000)]
    with pytest.raises(PayloadTooLarge, match="larger than"):
        run(service(tmp_path), requests, max_video_bytes=len(data) - 1)


def test_a_chunked_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        run(service(tmp_path), [request(model_id=MODEL.model_id, video_chunk=b"not a video" * 100)])


@pytest.mark.parametrize("order", ["image-then-video", "video-then-image"])
def test_frames_and_a_video_are_never_mixed(tmp_path: Path, order: str) -> None:
    image = request(model_id=MODEL.model_id, image=png(16, 16))
    chunk = request(model_id=MODEL.model_id, video_chunk=video_bytes(tmp_path, 2))
    with pytest.raises(InvalidArgument, match="not both"):
        run(service(tmp_path), [image, chunk] if order == "image-then-video" else [chunk, image])


def test_the_stream_leaves_no_staging_files(tmp_path: Path) -> None:
    inference = service(tmp_path)
    run(inference, [request(model_id=MODEL.model_id, video_chunk=video_bytes(tmp_path, 2))])
    with pytest.raises(PayloadTooLarge):
        run(inference, [request(model_id=MODEL.model_id, video_chunk=b"x" * 100)], max_video_bytes=10)
    assert list((tmp_path / "work").iterdir()) == []


def test_a_client_that_goes_away_mid_video_leaves_no_staging_files(tmp_path: Path) -> None:
    inference = service(tmp_path)

    async def first_frame_only() -> int:
        requests = pulled([request(model_id=MODEL.model_id, video_chunk=video_bytes(tmp_path, 20))], [])
        frames = inference.detect_stream(requests, 1 << 20)
        first = await anext(frames)
        await frames.aclose()
        return first.index

    assert asyncio.run(first_frame_only()) == 0
    assert list((tmp_path / "work").iterdir()) == []


# --- the Server-Sent Events video stream ----------------------------------------------------------------------


def test_open_video_stream_checks_first_then_gives_jpeg_frames(tmp_path: Path) -> None:
    inference = service(tmp_path)
    source = tmp_path / "clip.avi"
    source.write_bytes(video_bytes(tmp_path, 4))

    async def streamed() -> tuple[str, float, list[StreamedFrame]]:
        stream = await inference.open_video_stream(MODEL.model_id, source, inference.thresholds(None, None))
        return stream.model_id, stream.info.fps, [frame async for frame in stream.frames]

    model_id, fps, frames = asyncio.run(streamed())
    assert (model_id, fps) == (MODEL.model_id, 25.0)
    assert [frame.index for frame in frames] == [0, 1, 2, 3]
    assert all(read_header(frame.annotated_jpeg).size == (96, 64) for frame in frames)
    with pytest.raises(NotFound):
        asyncio.run(inference.open_video_stream("model_20991231_000000", source, inference.thresholds(None, None)))
    source.write_bytes(b"not a video" * 100)
    with pytest.raises(InvalidArgument):
        asyncio.run(inference.open_video_stream(MODEL.model_id, source, inference.thresholds(None, None)))
