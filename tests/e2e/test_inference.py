"""The inference service (seed document 000, section 推理服务) end to end through Envoy, with every prediction
executed by the platform's Triton server: detections on generated images and videos whose objects are known,
thresholds, batches, videos inline and as Server-Sent Events, export sessions, bad input, models Triton cannot
load or no longer has, and the native DetectStream."""

from __future__ import annotations

import base64
import csv
import io
import json
import queue
import random
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc
from PIL import Image
from visionmesh.inference.v1 import inference_pb2, inference_pb2_grpc

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e import inference_data
from tests.e2e.api import assert_error, unzip
from tests.e2e.conftest import TrainedModel, wait_for_export

pytestmark = [pytest.mark.e2e]

UNKNOWN_MODEL = "model_20000101_000000"
SESSION_ID = re.compile(r"^session_\d{8}_\d{6}_[0-9a-f]{8}$")
CSV_HEADER = [
    "image_uuid",
    "image_filename",
    "model_id",
    "image_width",
    "image_height",
    "detection_count",
    "detection_index",
    "class_id",
    "class_name",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
]
# Share of drawn shapes the shapes model must find (right class, IoU >= MATCH_IOU). Tests of a route's shape
# with only a few objects ask less: one miss must not fail them (accuracy is proven over many images above).
MIN_RECALL = 0.8
NON_SQUARE_RECALL = 0.6
ROUTE_RECALL = 0.5
MATCH_IOU = 0.5
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 30, (256, 256), 15
MIME = {"jpg": "image/jpeg", "png": "image/png"}


# -- helpers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    data: bytes
    truth: list[list[datagen.Shape]]


def _infer(http: httpx.Client, model_id: str, data: bytes, name: str = "image.jpg", **params: object) -> dict:
    ext = name.rsplit(".", 1)[-1]
    response = http.post(f"/infer/{model_id}", files={"file": (name, data, MIME.get(ext, "image/jpeg"))}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _number(value: object) -> bool:
    # Protobuf JSON prints a whole double as an integer (100.0 -> 100); JSON has one number type.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_detection(detection: dict, width: int, height: int) -> None:
    """One detection exactly as documented, with a box inside the original image."""
    assert set(detection) == {"class_id", "class_name", "confidence", "bbox"}, detection
    assert isinstance(detection["class_id"], int) and detection["class_id"] in (0, 1), detection
    assert detection["class_name"] == datagen.CLASSES[detection["class_id"]], detection
    assert _number(detection["confidence"]) and 0 < detection["confidence"] <= 1, detection
    box = detection["bbox"]
    assert set(box) == {"x1", "y1", "x2", "y2"} and all(_number(v) for v in box.values()), box
    assert 0 <= box["x1"] < box["x2"] <= width and 0 <= box["y1"] < box["y2"] <= height, (box, width, height)


def _box(detection: dict) -> tuple[float, float, float, float]:
    if "bbox" in detection:
        box = detection["bbox"]
        return (box["x1"], box["y1"], box["x2"], box["y2"])
    return (detection["x1"], detection["y1"], detection["x2"], detection["y2"])


def _found(detections: list[dict], shapes: list[datagen.Shape]) -> list[bool]:
    """For each drawn shape: whether a detection of its class overlaps it with IoU >= MATCH_IOU."""
    return [
        any(
            d["class_id"] == shape.class_id
            and inference_data.iou(_box(d), inference_data.shape_box(shape)) >= MATCH_IOU
            for d in detections
        )
        for shape in shapes
    ]


def _recall(found: list[bool]) -> float:
    return sum(found) / len(found)


def _pb_detections(detections: list[inference_pb2.Detection]) -> list[dict]:
    return [
        {
            "class_id": d.class_id,
            "class_name": d.class_name,
            "confidence": d.confidence,
            "bbox": {"x1": d.bbox.x1, "y1": d.bbox.y1, "x2": d.bbox.x2, "y2": d.bbox.y2},
        }
        for d in detections
    ]


def _decode_jpeg(data: bytes) -> np.ndarray:
    assert data[:3] == b"\xff\xd8\xff", data[:16]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _video_frames(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]


def _copy_of(http: httpx.Client, model_id: str) -> str:
    """A new model registered from the export of `model_id` (same weights, its own ID and Triton entry)."""
    exported = http.get(f"/models/{model_id}/export")
    assert exported.status_code == 200, exported.text
    response = http.post("/models/upload", files={"file": ("copy.zip", exported.content, "application/zip")})
    assert response.status_code == 200, response.text
    return response.json()["model_id"]


def _sse(response: httpx.Response) -> Iterator[tuple[str, dict, float]]:
    """(event name, parsed data, arrival time) of each Server-Sent Event as its lines arrive."""
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line == "" and data:
            yield event, json.loads("\n".join(data)), time.perf_counter()
            event, data = "message", []
    assert not data, f"unterminated event: {data}"


def _video_upload(data: bytes, name: str = "clip.mp4", content_type: str = "video/mp4") -> dict:
    return {"file": (name, data, content_type)}


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_id(shapes_model: TrainedModel) -> str:
    return shapes_model.model_id


@pytest.fixture(scope="module")
def copies(http: httpx.Client, model_id: str) -> Iterator[list[str]]:
    """Three copies of the shapes model (batch partner, unservable, deleted), registered together so their
    ONNX exports run side by side; each test waits for the one it uses. Removed at the end."""
    ids = [_copy_of(http, model_id) for _ in range(3)]
    yield ids
    for copy in ids:
        http.delete(f"/models/{copy}")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    truth = inference_data.shapes_video(path, CLIP_FRAMES, CLIP_SIZE, CLIP_FPS)
    return Clip(path.read_bytes(), truth)


# -- 1. images ----------------------------------------------------------------------------------------------


def test_infer_finds_drawn_shapes_with_the_documented_fields(http: httpx.Client, model_id: str) -> None:
    found: list[bool] = []
    for seed in range(10):
        data, shapes = inference_data.shapes_image(256, 256, seed)
        body = _infer(http, model_id, data)
        assert set(body) == {"model_id", "image_path", "detections"}, body
        assert body["model_id"] == model_id
        assert isinstance(body["detections"], list)
        for detection in body["detections"]:
            _check_detection(detection, 256, 256)
        confidences = [d["confidence"] for d in body["detections"]]
        assert confidences == sorted(confidences, reverse=True)
        found += _found(body["detections"], shapes)
    assert len(found) == 20
    assert _recall(found) >= MIN_RECALL, found


@pytest.mark.parametrize(("width", "height", "ext"), [(320, 200, "jpg"), (200, 320, "png"), (640, 400, "png")])
def test_boxes_are_in_original_image_pixels(
    http: httpx.Client, model_id: str, width: int, height: int, ext: str
) -> None:
    """Non-square images of other sizes than the model's 128 px input: the boxes land on the drawn shapes
    in the uploaded image's own pixels (not the letterboxed model input). Boxes left in model-input pixels
    would match next to none; the bar is below MIN_RECALL because the model only ever saw square images."""
    found: list[bool] = []
    for seed in range(10):
        data, shapes = inference_data.shapes_image(width, height, 100 + seed, ext)
        body = _infer(http, model_id, data, f"photo.{ext}")
        for detection in body["detections"]:
            _check_detection(detection, width, height)
        found += _found(body["detections"], shapes)
    assert _recall(found) >= NON_SQUARE_RECALL, found


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_image_path_serves_the_uploaded_bytes(http: httpx.Client, model_id: str, ext: str) -> None:
    data, _ = inference_data.shapes_image(160, 120, 5, ext)
    body = _infer(http, model_id, data, f"mine.{ext}")
    assert body["image_path"].startswith("uploads/") and body["image_path"].endswith(f".{ext}"), body
    served = http.get(f"/static/{body['image_path']}")
    assert served.status_code == 200
    assert served.headers["content-type"] == MIME[ext]
    assert served.content == data
    assert_error(http.get("/static/uploads/infer_20000101_000000_abcdef.jpg"), 404)
    assert_error(http.get("/static/uploads/..%2F..%2Finference.db"), 404)


# -- 2. thresholds ------------------------------------------------------------------------------------------


def test_conf_query_parameter_filters_detections(http: httpx.Client, model_id: str) -> None:
    data, _ = inference_data.shapes_image(256, 256, 3)
    low = _infer(http, model_id, data, conf=0.05)["detections"]
    default = _infer(http, model_id, data)["detections"]
    high = _infer(http, model_id, data, conf=0.99)["detections"]
    assert len(low) >= len(default) > len(high)
    assert all(d["confidence"] >= 0.05 for d in low)
    assert all(d["confidence"] >= 0.25 for d in default)
    assert all(d["confidence"] >= 0.99 for d in high)
    # The multipart field of the same name is honoured too.
    form = http.post(f"/infer/{model_id}", files={"file": ("a.jpg", data, "image/jpeg")}, data={"conf": "0.99"})
    assert form.status_code == 200 and len(form.json()["detections"]) == len(high)


def test_iou_query_parameter_sets_the_nms_overlap(http: httpx.Client, model_id: str) -> None:
    """At a low conf many overlapping candidates survive; NMS at iou=0.1 leaves no two boxes of one class
    overlapping more than that, NMS at iou=0.95 keeps overlapping ones."""
    data, _ = inference_data.shapes_image(256, 256, 4)

    def max_same_class_overlap(detections: list[dict]) -> float:
        return max(
            (
                inference_data.iou(_box(a), _box(b))
                for i, a in enumerate(detections)
                for b in detections[i + 1 :]
                if a["class_id"] == b["class_id"]
            ),
            default=0.0,
        )

    strict = _infer(http, model_id, data, conf=0.01, iou=0.1)["detections"]
    loose = _infer(http, model_id, data, conf=0.01, iou=0.95)["detections"]
    assert len(loose) > len(strict)
    assert max_same_class_overlap(strict) <= 0.1 + 1e-3
    assert max_same_class_overlap(loose) > 0.1


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"conf": "1.5"}, "conf"),
        ({"conf": "-0.1"}, "conf"),
        ({"conf": "abc"}, "conf"),
        ({"iou": "0"}, "iou"),
        ({"iou": "2"}, "iou"),
        ({"iou": "abc"}, "iou"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_parameter(
    http: httpx.Client, model_id: str, params: dict[str, str], name: str
) -> None:
    data, _ = inference_data.shapes_image(64, 64, 0)
    upload = {"file": ("a.jpg", data, "image/jpeg")}
    assert_error(http.post(f"/infer/{model_id}", files=upload, params=params), 400, name)
    assert_error(http.post(f"/infer/{model_id}", files=upload, data=params), 400, name)
    images = [("files", ("a.jpg", data, "image/jpeg"))]
    batch = http.post("/infer/batch/run", files=images, data={"model_ids": model_id, **params})
    assert_error(batch, 400, name)
    assert_error(http.post(f"/infer/{model_id}/export", files=images, params=params), 400, name)
    video = {"file": ("clip.mp4", b"checked before the video is read", "video/mp4")}
    assert_error(http.post(f"/infer/video/{model_id}", files=video, data=params), 400, name)
    assert_error(http.post(f"/infer/video/{model_id}/stream", files=video, data=params), 400, name)


def test_concurrent_requests_each_get_their_own_image_detections(http: httpx.Client, model_id: str) -> None:
    """Triton batches requests that arrive together: answers must still go to the request they belong to."""
    images = [inference_data.shapes_image(256, 256, 200 + n, count=1 + n % 2) for n in range(12)]
    one_by_one = [_infer(http, model_id, data)["detections"] for data, _ in images]
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda image: _infer(http, model_id, image[0])["detections"], images))
    assert together == one_by_one
    found = [
        hit for detections, (_, shapes) in zip(together, images, strict=True) for hit in _found(detections, shapes)
    ]
    assert _recall(found) >= ROUTE_RECALL, found


# -- 3. batches ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_runs_every_model_on_every_image_in_image_then_model_order(
    http: httpx.Client, model_id: str, copies: list[str]
) -> None:
    partner = copies[0]
    wait_for_export(http, partner)
    images = [inference_data.shapes_image(256, 256, 20 + n, count=1 + n % 2) for n in range(3)]
    files = [("files", (f"b{n}.jpg", data, "image/jpeg")) for n, (data, _) in enumerate(images)]
    response = http.post("/infer/batch/run", data={"model_ids": f"{model_id},{partner}"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["results"] and len(body["results"]) == 6
    found: list[bool] = []
    for n, (data, shapes) in enumerate(images):
        first, second = body["results"][2 * n], body["results"][2 * n + 1]
        assert set(first) == set(second) == {"model_id", "image_path", "detections"}
        assert (first["model_id"], second["model_id"]) == (model_id, partner)
        assert first["image_path"] == second["image_path"] and first["image_path"].startswith("uploads/")
        assert http.get(f"/static/{first['image_path']}").content == data
        # Same weights, same image: the same detections, and they are this image's shapes.
        assert first["detections"] == second["detections"]
        for detection in first["detections"]:
            _check_detection(detection, 256, 256)
        found += _found(first["detections"], shapes)
    assert len({result["image_path"] for result in body["results"]}) == 3
    assert _recall(found) >= ROUTE_RECALL, found


def test_batch_refuses_missing_models_unknown_models_and_no_files(http: httpx.Client, model_id: str) -> None:
    data, _ = inference_data.shapes_image(64, 64, 0)
    files = [("files", ("a.jpg", data, "image/jpeg"))]
    assert_error(http.post("/infer/batch/run", files=files), 400, "model_ids")
    assert_error(http.post("/infer/batch/run", data={"model_ids": " , "}, files=files), 400, "model_ids")
    unknown = http.post("/infer/batch/run", data={"model_ids": f"{model_id},{UNKNOWN_MODEL}"}, files=files)
    assert UNKNOWN_MODEL in assert_error(unknown, 404)
    no_files = http.post("/infer/batch/run", data={"model_ids": model_id}, files={"other": ("x.txt", b"x")})
    assert_error(no_files, 400, "files")


# -- 4. videos ----------------------------------------------------------------------------------------------


def test_video_comes_back_annotated_as_h264_with_per_frame_counts(
    http: httpx.Client, model_id: str, clip: Clip, tmp_path: Path
) -> None:
    response = http.post(f"/infer/video/{model_id}", files=_video_upload(clip.data), data={"conf": "0.25"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model_id", "video_data", "stats"} and body["model_id"] == model_id
    stats = body["stats"]
    assert stats["total_frames"] == CLIP_FRAMES
    assert len(stats["detections_per_frame"]) == CLIP_FRAMES
    assert (stats["width"], stats["height"]) == CLIP_SIZE and stats["fps"] == pytest.approx(CLIP_FPS)
    # Two shapes are drawn on every frame.
    assert sum(count >= 1 for count in stats["detections_per_frame"]) >= 0.9 * CLIP_FRAMES
    assert sum(count == 2 for count in stats["detections_per_frame"]) >= 0.7 * CLIP_FRAMES

    output = tmp_path / "annotated.mp4"
    output.write_bytes(base64.b64decode(body["video_data"], validate=True))
    codec, frames = _video_frames(output)
    assert codec == "h264" and len(frames) == CLIP_FRAMES
    assert all(frame.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3) for frame in frames)
    # Annotated: the boxes of class 1 are drawn in Ultralytics' cyan, a colour the clip itself has none of.
    _, originals = _video_frames(_write(tmp_path / "source.mp4", clip.data))
    assert _cyan_pixels(frames[CLIP_FRAMES // 2]) > 100 > _cyan_pixels(originals[CLIP_FRAMES // 2])

    fewer = http.post(f"/infer/video/{model_id}", files=_video_upload(clip.data), data={"conf": "0.99"})
    assert fewer.status_code == 200, fewer.text
    assert sum(fewer.json()["stats"]["detections_per_frame"]) < sum(stats["detections_per_frame"])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cyan_pixels(frame: np.ndarray) -> int:
    """Pixels near (B, G, R) = (235, 219, 11), the colour draw_detections gives class 1."""
    distance = np.abs(frame.astype(np.int16) - np.array([235, 219, 11], np.int16)).sum(axis=2)
    return int((distance < 90).sum())


def test_mjpeg_avi_video_is_accepted(http: httpx.Client, model_id: str, tmp_path: Path) -> None:
    data = inference_data.video_bytes(tmp_path / "clip.avi", 12, (320, 240), fourcc="MJPG")
    response = http.post(f"/infer/video/{model_id}", files=_video_upload(data, "clip.avi", "video/x-msvideo"))
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    assert stats["total_frames"] == 12 and (stats["width"], stats["height"]) == (320, 240)
    assert sum(count >= 1 for count in stats["detections_per_frame"]) >= 10


# -- 5. Server-Sent Events ----------------------------------------------------------------------------------


def test_video_stream_sends_one_event_per_frame_then_end(http: httpx.Client, model_id: str, clip: Clip) -> None:
    inline = http.post(f"/infer/video/{model_id}", files=_video_upload(clip.data)).json()["stats"]
    with http.stream("POST", f"/infer/video/{model_id}/stream", files=_video_upload(clip.data)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [(event, data) for event, data, _ in _sse(response)]
    frames, (end_name, end) = events[:-1], events[-1]
    assert end_name == "end", end_name
    assert (end["model_id"], end["total_frames"], end["fps"]) == (model_id, CLIP_FRAMES, pytest.approx(CLIP_FPS))
    assert all(name == "message" for name, _ in frames)
    assert [data["frame"] for _, data in frames] == list(range(CLIP_FRAMES))
    found: list[bool] = []
    for (_, data), shapes in zip(frames, clip.truth, strict=True):
        assert set(data) == {"frame", "image_data", "detections"}
        image = _decode_jpeg(base64.b64decode(data["image_data"], validate=True))
        assert image.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
        for detection in data["detections"]:
            _check_detection(detection, *CLIP_SIZE)
        found += _found(data["detections"], shapes)
    # Frame by frame where the shapes are at that moment, and the same counts as the inline route.
    assert _recall(found) >= MIN_RECALL
    assert [len(data["detections"]) for _, data in frames] == inline["detections_per_frame"]


def test_video_stream_is_incremental_not_buffered(http: httpx.Client, model_id: str, tmp_path: Path) -> None:
    frames = 150
    data = inference_data.video_bytes(tmp_path / "long.mp4", frames, (320, 320), fps=25)
    started = time.perf_counter()
    with http.stream("POST", f"/infer/video/{model_id}/stream", files=_video_upload(data)) as response:
        assert response.status_code == 200
        arrivals = [(event, body, arrived - started) for event, body, arrived in _sse(response)]
    assert len(arrivals) == frames + 1 and arrivals[-1][0] == "end"
    first, last = arrivals[0][2], arrivals[-1][2]
    assert first < 0.5 * last, (first, last)
    # Spread over the run, not in one burst at the end.
    middle = arrivals[frames // 2][2]
    assert first < middle < last and middle - first > 0.2 * (last - first), (first, middle, last)


def test_video_stream_abandoned_by_the_client_stops_and_leaves_no_staging_files(
    http: httpx.Client, model_id: str, platform: PlatformInstance, tmp_path: Path
) -> None:
    """A 1200-frame video takes the service 10+ s to stream in full; the client leaves after 3 frames, and
    the work stops: its staged upload is gone within 3 s."""
    data = inference_data.video_bytes(tmp_path / "long.mp4", 1200, (256, 256))
    work = platform.data_root / "inference" / "work"
    with http.stream("POST", f"/infer/video/{model_id}/stream", files=_video_upload(data)) as response:
        events = _sse(response)
        assert [next(events)[1]["frame"] for _ in range(3)] == [0, 1, 2]
        assert list(work.iterdir()), "the video being processed is staged"
    deadline = time.monotonic() + 3
    while list(work.iterdir()):
        assert time.monotonic() < deadline, list(work.iterdir())
        time.sleep(0.2)
    assert http.get("/api/health").status_code == 200


# -- 6. export sessions -------------------------------------------------------------------------------------


def test_export_session_saves_results_and_downloads_as_zip(
    http: httpx.Client, model_id: str, platform: PlatformInstance
) -> None:
    square, square_shapes = inference_data.shapes_image(256, 256, 31)
    wide, wide_shapes = inference_data.shapes_image(320, 200, 32, "png")
    empty = datagen.draw_image(200, 150, [], seed=33)
    uploads = [("first.jpg", square, (256, 256)), ("wide.png", wide, (320, 200)), ("blank.jpg", empty, (200, 150))]
    response = http.post(
        f"/infer/{model_id}/export",
        files=[("files", (name, data, MIME[name[-3:]])) for name, data, _ in uploads],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id", "results", "session_dir"}
    session_id = body["session_id"]
    assert SESSION_ID.match(session_id), session_id
    session_dir = Path(body["session_dir"])
    assert session_dir.name == session_id and session_dir.is_dir()
    assert session_dir.is_relative_to(platform.data_root)

    results = body["results"]
    assert [r["image_filename"] for r in results] == [name for name, _, _ in uploads]
    for result, (_, _, (width, height)) in zip(results, uploads, strict=True):
        assert set(result) == {
            "image_uuid",
            "image_filename",
            "model_id",
            "image_width",
            "image_height",
            "detection_count",
            "detections",
        }
        assert str(uuid.UUID(result["image_uuid"])) == result["image_uuid"]
        assert (result["model_id"], result["image_width"], result["image_height"]) == (model_id, width, height)
        assert result["detection_count"] == len(result["detections"])
        for detection in result["detections"]:
            assert set(detection) == {"class_id", "class_name", "conf", "x1", "y1", "x2", "y2"}, detection
            assert detection["class_name"] == datagen.CLASSES[detection["class_id"]]
            assert 0 < detection["conf"] <= 1 and 0 <= detection["x1"] < detection["x2"] <= width
    assert _recall(_found(results[0]["detections"], square_shapes) + _found(results[1]["detections"], wide_shapes)) >= (
        ROUTE_RECALL
    )
    assert results[2]["detection_count"] == 0
    assert len({r["image_uuid"] for r in results}) == 3

    download = http.get(f"/infer/results/{session_id}/export")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    members = unzip(download.content)
    assert set(members) == {f"images/{r['image_uuid']}.jpg" for r in results} | {"results.csv", "metadata.json"}
    for result, (_, original, (width, height)) in zip(results, uploads, strict=True):
        annotated = _decode_jpeg(members[f"images/{result['image_uuid']}.jpg"])
        assert annotated.shape == (height, width, 3)
        source = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
        difference = np.abs(annotated.astype(np.int16) - source.astype(np.int16)).max(axis=2)
        # Boxes and labels are drawn where there are detections; re-encoding alone changes pixels little.
        assert ((difference > 100).sum() > 200) == (result["detection_count"] > 0), result

    _check_results_csv(members["results.csv"].decode("utf-8"), results)
    metadata = json.loads(members["metadata.json"])
    assert (metadata["session_id"], metadata["model_id"]) == (session_id, model_id)
    assert metadata["image_count"] == 3


def _check_results_csv(text: str, results: list[dict]) -> None:
    """The documented header, then one row per detection (one row with empty detection columns for an image
    without any) agreeing with the JSON results."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CSV_HEADER
    expected: list[list[str]] = []
    for r in results:
        head = [r["image_uuid"], r["image_filename"], r["model_id"]]
        head += [str(r["image_width"]), str(r["image_height"]), str(r["detection_count"])]
        if not r["detections"]:
            expected.append([*head, "", "", "", "", "", "", "", ""])
        for index, d in enumerate(r["detections"]):
            values = [d["conf"], d["x1"], d["y1"], d["x2"], d["y2"]]
            expected.append([*head, str(index), str(d["class_id"]), d["class_name"], *map(str, values)])
    assert len(rows) - 1 == len(expected)
    for row, want in zip(rows[1:], expected, strict=True):
        assert row[:9] == want[:9], (row, want)
        if want[9]:
            assert [float(v) for v in row[9:]] == pytest.approx([float(v) for v in want[9:]], abs=0.006), (row, want)
        else:
            assert row[9:] == want[9:], row


def test_export_session_honours_conf_and_records_it(http: httpx.Client, model_id: str) -> None:
    data, _ = inference_data.shapes_image(256, 256, 7)
    files = [("files", ("a.jpg", data, "image/jpeg"))]
    low = http.post(f"/infer/{model_id}/export", files=files, params={"conf": 0.3, "iou": 0.6}).json()
    high = http.post(f"/infer/{model_id}/export", files=files, params={"conf": 0.99}).json()
    assert low["results"][0]["detection_count"] > high["results"][0]["detection_count"]
    assert all(d["conf"] >= 0.99 for d in high["results"][0]["detections"])
    metadata = json.loads(unzip(http.get(f"/infer/results/{low['session_id']}/export").content)["metadata.json"])
    assert metadata["settings"] == {"conf": 0.3, "iou": 0.6}
    assert low["session_id"] != high["session_id"]


def test_export_session_csv_neutralises_formula_cells(http: httpx.Client, model_id: str) -> None:
    """Upload names a spreadsheet would run as formulas come back quoted in results.csv (OWASP: a leading
    single quote), and unchanged in the JSON answer, which no spreadsheet evaluates."""
    data, _ = inference_data.shapes_image(128, 128, 9)
    names = ["=1+1.jpg", "@SUM(1+1).jpg", "+cmd.jpg", "-2+3.jpg", "plain.jpg"]
    response = http.post(f"/infer/{model_id}/export", files=[("files", (name, data, "image/jpeg")) for name in names])
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["image_filename"] for r in body["results"]] == names
    csv_text = unzip(http.get(f"/infer/results/{body['session_id']}/export").content)["results.csv"].decode()
    rows = list(csv.reader(io.StringIO(csv_text)))[1:]
    written = list(dict.fromkeys(row[1] for row in rows))
    assert written == ["'=1+1.jpg", "'@SUM(1+1).jpg", "'+cmd.jpg", "'-2+3.jpg", "plain.jpg"], written
    assert all(not cell or cell[0] not in "=+-@\t\r" for row in rows for cell in row), rows


@pytest.mark.parametrize(
    "session_id", ["session_20000101_000000_deadbeef", "..%2F..", "..%2F..%2Finference", "not-a-session"]
)
def test_unknown_or_malformed_session_is_not_found(http: httpx.Client, session_id: str) -> None:
    assert_error(http.get(f"/infer/results/{session_id}/export"), 404)


# -- 7. bad input -------------------------------------------------------------------------------------------


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "GIF")
    return buffer.getvalue()


BAD_IMAGES = {
    "text": (b"hello, this is not an image\n" * 20, "not an image"),
    "empty": (b"", "empty"),
    "truncated": (datagen.truncated_jpeg(), "truncated"),
    "bomb": (datagen.decompression_bomb_png(), "pixels"),
    "gif": (_gif(), "gif"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_are_refused_on_every_image_route(http: httpx.Client, model_id: str, kind: str) -> None:
    data, reason = BAD_IMAGES[kind]
    good, _ = inference_data.shapes_image(64, 64, 0)
    assert_error(http.post(f"/infer/{model_id}", files={"file": ("bad.jpg", data, "image/jpeg")}), 400, reason)
    batch = [("files", ("ok.jpg", good, "image/jpeg")), ("files", ("bad.jpg", data, "image/jpeg"))]
    detail = assert_error(http.post("/infer/batch/run", data={"model_ids": model_id}, files=batch), 400, reason)
    assert "bad.jpg" in detail
    assert_error(http.post(f"/infer/{model_id}/export", files=batch), 400, "bad.jpg")


def test_missing_file_field_is_refused(http: httpx.Client, model_id: str) -> None:
    data, _ = inference_data.shapes_image(64, 64, 0)
    wrong_field = {"image": ("a.jpg", data, "image/jpeg")}
    assert_error(http.post(f"/infer/{model_id}", files=wrong_field), 400, "file")
    assert_error(http.post(f"/infer/{model_id}/export", files=wrong_field), 400, "files")
    assert_error(http.post(f"/infer/video/{model_id}", files=wrong_field), 400, "file")
    assert_error(http.post(f"/infer/video/{model_id}/stream", files=wrong_field), 400, "file")


def test_unknown_model_is_not_found_on_every_route(http: httpx.Client, clip: Clip) -> None:
    data, _ = inference_data.shapes_image(64, 64, 0)
    image = {"file": ("a.jpg", data, "image/jpeg")}
    images = [("files", ("a.jpg", data, "image/jpeg"))]
    responses = [
        http.post(f"/infer/{UNKNOWN_MODEL}", files=image),
        http.post("/infer/batch/run", data={"model_ids": UNKNOWN_MODEL}, files=images),
        http.post(f"/infer/{UNKNOWN_MODEL}/export", files=images),
        http.post(f"/infer/video/{UNKNOWN_MODEL}", files=_video_upload(clip.data)),
        http.post(f"/infer/video/{UNKNOWN_MODEL}/stream", files=_video_upload(clip.data)),
    ]
    for response in responses:
        assert UNKNOWN_MODEL in assert_error(response, 404)


def _truncated_mp4(tmp_path: Path) -> bytes:
    """cv2's mp4v output keeps its index (moov) at the end: cut in half, the index is gone."""
    data = inference_data.video_bytes(tmp_path / "cut.mp4", 30, (256, 256))
    assert data.rfind(b"moov") > len(data) // 2
    return data[: len(data) // 2]


@pytest.mark.parametrize("route", ["/infer/video/{}", "/infer/video/{}/stream"])
def test_bad_videos_are_refused_never_500(http: httpx.Client, model_id: str, route: str, tmp_path: Path) -> None:
    png, _ = inference_data.shapes_image(64, 64, 0, "png")
    bad = {  # name -> (bytes, part of the reason)
        "random.mp4": (random.Random(0).randbytes(64 * 1024), ""),
        "empty.mp4": (b"", "empty"),
        "picture.mp4": (png, ""),
        "song.m4a": (inference_data.audio_only_m4a(), "no video stream"),
        "truncated.mp4": (_truncated_mp4(tmp_path), ""),
    }
    for name, (data, reason) in bad.items():
        response = http.post(route.format(model_id), files=_video_upload(data, name))
        assert response.status_code == 400, (name, response.status_code, response.text)
        assert_error(response, 400, reason)


def test_upload_over_the_image_limit_is_refused_with_413(
    http: httpx.Client, model_id: str, platform: PlatformInstance, tmp_path: Path
) -> None:
    """A sparse file one byte over VM_INFERENCE_MAX_IMAGE_UPLOAD_BYTES (256 MiB unless configured): cheap to
    make and to read, so the real limit is tested."""
    limit = int(platform.env.get("VM_INFERENCE_MAX_IMAGE_UPLOAD_BYTES", 256 * 1024**2))
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:
        handle.write(b"\xff\xd8\xff")
        handle.truncate(limit + 1)
    with open(big, "rb") as handle:
        response = http.post(f"/infer/{model_id}", files={"file": ("big.jpg", handle, "image/jpeg")})
    assert_error(response, 413, "limit")


def test_service_is_healthy_and_staging_is_empty_after_bad_input(
    http: httpx.Client, model_id: str, platform: PlatformInstance
) -> None:
    """Runs after the bad-input tests above (file order): nothing they did broke the service or left files."""
    health = http.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    data, shapes = inference_data.shapes_image(256, 256, 1)
    assert _recall(_found(_infer(http, model_id, data)["detections"], shapes)) >= 0.5
    _assert_no_staging(platform)


def _assert_no_staging(platform: PlatformInstance) -> None:
    """No request's staging directory is left: neither per-request work dirs nor half-written sessions."""
    work = platform.data_root / "inference" / "work"
    assert not work.exists() or list(work.iterdir()) == []
    sessions = platform.data_root / "inference" / "sessions"
    assert all(SESSION_ID.match(entry.name) for entry in sessions.iterdir()), list(sessions.iterdir())


# -- 8. a model Triton cannot load --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unservable(http: httpx.Client, copies: list[str], platform: PlatformInstance) -> str:
    """A copy of the shapes model whose export is ready but whose ONNX file is gone from Triton's repository
    before anything asked Triton to load it."""
    broken = copies[1]
    wait_for_export(http, broken)
    weights = platform.data_root / "triton" / "repository" / broken / "1" / "model.onnx"
    assert weights.is_file()
    weights.unlink()
    return broken


def _about_triton_load(detail: str, model: str) -> None:
    assert "triton" in detail.lower() and "load" in detail.lower() and model in detail, detail


@pytest.mark.slow
def test_model_triton_cannot_load_answers_409_and_others_still_work(
    http: httpx.Client, model_id: str, unservable: str, clip: Clip, platform: PlatformInstance
) -> None:
    data, shapes = inference_data.shapes_image(256, 256, 2)
    response = http.post(f"/infer/{unservable}", files={"file": ("a.jpg", data, "image/jpeg")})
    _about_triton_load(assert_error(response, 409), unservable)
    # It stays unservable, with the same answer, on every route.
    images = [("files", ("a.jpg", data, "image/jpeg"))]
    batch = http.post("/infer/batch/run", data={"model_ids": f"{model_id},{unservable}"}, files=images)
    _about_triton_load(assert_error(batch, 409), unservable)
    _about_triton_load(assert_error(http.post(f"/infer/{unservable}/export", files=images), 409), unservable)

    # The stream loads the model before its first event, so the refusal is still a 409.
    with http.stream("POST", f"/infer/video/{unservable}/stream", files=_video_upload(clip.data)) as response:
        response.read()
        detail = assert_error(response, 409)
    _about_triton_load(detail, unservable)

    with grpc.insecure_channel(platform.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.DetectStream(iter([inference_pb2.FrameRequest(model_id=unservable, image=data)]), timeout=60))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _about_triton_load(refused.value.details(), unservable)

    assert _recall(_found(_infer(http, model_id, data)["detections"], shapes)) >= 0.5
    assert http.get("/api/health").status_code == 200
    _assert_no_staging(platform)


def test_video_with_a_model_triton_cannot_load_answers_409(http: httpx.Client, unservable: str, clip: Clip) -> None:
    response = http.post(f"/infer/video/{unservable}", files=_video_upload(clip.data))
    _about_triton_load(assert_error(response, 409), unservable)


# -- 9. native gRPC DetectStream ----------------------------------------------------------------------------


@pytest.fixture
def detect_stub(platform: PlatformInstance) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(platform.grpc_target) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def test_detect_stream_answers_each_frame_before_the_next_is_sent(
    detect_stub: inference_pb2_grpc.InferenceServiceStub, model_id: str
) -> None:
    sizes = [(256, 256), (320, 200), (200, 320), (256, 256), (160, 120)]
    frames = [inference_data.shapes_image(w, h, 40 + n) for n, (w, h) in enumerate(sizes)]
    answered: queue.Queue[None] = queue.Queue()
    sent: list[int] = []

    def requests() -> Iterator[inference_pb2.FrameRequest]:
        for index, (data, _) in enumerate(frames):
            if index:
                answered.get(timeout=30)  # the previous frame's result has been read
            sent.append(index)
            if index == 0:
                yield inference_pb2.FrameRequest(model_id=model_id, annotate=True, image=data)
            else:
                yield inference_pb2.FrameRequest(image=data)

    responses = detect_stub.DetectStream(requests(), timeout=120)
    found: list[bool] = []
    for index, ((_, shapes), (width, height)) in enumerate(zip(frames, sizes, strict=True)):
        result = next(responses)
        assert sent == list(range(index + 1)), "a result must come before the next frame is sent"
        assert (result.frame, result.width, result.height) == (index, width, height)
        assert result.inference_ms > 0
        detections = _pb_detections(result.detections)
        for detection in detections:
            _check_detection(detection, width, height)
        found += _found(detections, shapes)
        assert _decode_jpeg(result.annotated_jpeg).shape == (height, width, 3)
        answered.put(None)
    assert next(responses, None) is None
    assert _recall(found) >= ROUTE_RECALL, found


def test_detect_stream_reads_a_chunked_video_after_half_close(
    detect_stub: inference_pb2_grpc.InferenceServiceStub, model_id: str, tmp_path: Path
) -> None:
    frames, size = 90, (480, 480)
    path = tmp_path / "chunked.mp4"
    truth = inference_data.shapes_video(path, frames, size, 25)
    data = path.read_bytes()
    chunk = 64 * 1024
    assert len(data) > 2 * chunk, len(data)

    def requests() -> Iterator[inference_pb2.FrameRequest]:
        yield inference_pb2.FrameRequest(model_id=model_id, conf=0.25, video_chunk=data[:chunk])
        for offset in range(chunk, len(data), chunk):
            yield inference_pb2.FrameRequest(video_chunk=data[offset : offset + chunk])

    results = list(detect_stub.DetectStream(requests(), timeout=120))
    assert [r.frame for r in results] == list(range(frames))
    assert all((r.width, r.height) == size and not r.annotated_jpeg for r in results)
    found: list[bool] = []
    for result, shapes in zip(results, truth, strict=True):
        found += _found(_pb_detections(result.detections), shapes)
    assert _recall(found) >= MIN_RECALL


def test_detect_stream_errors_carry_grpc_status_codes(
    detect_stub: inference_pb2_grpc.InferenceServiceStub, model_id: str, clip: Clip
) -> None:
    image, _ = inference_data.shapes_image(64, 64, 0)
    with pytest.raises(grpc.RpcError) as unknown:
        list(detect_stub.DetectStream(iter([inference_pb2.FrameRequest(model_id=UNKNOWN_MODEL, image=image)])))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and UNKNOWN_MODEL in unknown.value.details()

    image_then_video = [
        inference_pb2.FrameRequest(model_id=model_id, image=image),
        inference_pb2.FrameRequest(video_chunk=clip.data),
    ]
    video_then_image = [
        inference_pb2.FrameRequest(model_id=model_id, video_chunk=clip.data),
        inference_pb2.FrameRequest(image=image),
    ]
    for messages in (image_then_video, video_then_image):
        with pytest.raises(grpc.RpcError) as mixed:
            list(detect_stub.DetectStream(iter(messages), timeout=60))
        assert mixed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, mixed.value.details()
        assert "not both" in mixed.value.details()

    invalid = {
        "conf": [inference_pb2.FrameRequest(model_id=model_id, conf=1.5, image=image)],
        "iou": [inference_pb2.FrameRequest(model_id=model_id, iou=0, image=image)],
        "not an image": [inference_pb2.FrameRequest(model_id=model_id, image=b"not an image")],
        "video": [inference_pb2.FrameRequest(model_id=model_id, video_chunk=b"not a video" * 100)],
    }
    for reason, messages in invalid.items():
        with pytest.raises(grpc.RpcError) as refused:
            list(detect_stub.DetectStream(iter(messages), timeout=60))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (reason, refused.value.details())
        assert reason in refused.value.details(), refused.value.details()


# -- 10. deleting a model that Triton serves ----------------------------------------------------------------


@pytest.mark.slow
def test_deleted_model_is_unloaded_from_triton_and_not_found(
    http: httpx.Client, model_id: str, copies: list[str], platform: PlatformInstance
) -> None:
    doomed = copies[2]
    wait_for_export(http, doomed)
    data, _ = inference_data.shapes_image(256, 256, 6)
    # First use by several requests at once: Triton loads it, every request is answered, like the original.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _infer(http, doomed, data)["detections"], range(6)))
    assert answers == [_infer(http, model_id, data)["detections"]] * 6
    triton = tritonclient.grpc.InferenceServerClient(platform.triton_target)
    try:
        assert triton.is_model_ready(doomed)
        assert http.delete(f"/models/{doomed}").status_code == 200
        assert doomed in assert_error(http.post(f"/infer/{doomed}", files={"file": ("a.jpg", data, "image/jpeg")}), 404)
        deadline = time.monotonic() + 10
        while triton.is_model_ready(doomed):
            assert time.monotonic() < deadline, f"Triton still serves {doomed}"
            time.sleep(0.25)
    finally:
        triton.close()
