"""The queued task API of document 002 through the real Envoy, on both ports: a task runs the served shapes
model on the index-th entry of the sample set (natural order, hidden entries and other files skipped) and
publishes annotated images and H.264 videos; status, result, files, listing, system status and health."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import ISO_TIME, assert_error
from tests.e2e.conftest import TrainedModel
from tests.e2e.inference_data import shapes_image, shapes_video

pytestmark = [pytest.mark.e2e]

HEALTH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
STATUS_FIELDS = {"task_id", "index", "status", "created_at", "completed_at", "inference_time", "error_message"}
NOT_DONE = "任务尚未完成"
TASK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SampleSet:
    """What was written into the sample directory: the index of each sample and what its results must be."""

    street: bytes  # sample 1
    street_shapes: list[datagen.Shape]
    clip_frames: int  # sample 2
    clip_size: tuple[int, int]
    long_index: int  # a video long enough to be still running when it is looked at
    broken_index: int  # a .jpg that is not a whole image
    broken_name: str
    folder_index: int  # two images and a video
    folder_sizes: tuple[tuple[int, int], tuple[int, int]]  # its images, in natural order
    folder_clip_frames: int


@pytest.fixture(scope="module")
def samples(platform: PlatformInstance, shapes_model: TrainedModel, http: httpx.Client) -> SampleSet:
    # Tasks run the newest model ready for serving: the assertions about detections need it to be this one.
    newest = next(
        m for m in http.get("/models", params={"page_size": 100}).json()["models"] if m["export_status"] == "ready"
    )
    assert newest["model_id"] == shapes_model.model_id, "a model newer than the shapes model would run the tasks"

    root = platform.data_root / "samples"
    (root / "10_folder").mkdir(parents=True, exist_ok=True)
    (root / "6_no_media").mkdir(exist_ok=True)
    street, street_shapes = shapes_image(320, 240, seed=11)
    (root / "1_street.jpg").write_bytes(street)
    # Hidden: it would be sample 1 (it sorts first) if it counted.
    (root / ".0_hidden.jpg").write_bytes(shapes_image(64, 48, seed=1)[0])
    shapes_video(root / "2_clip.mp4", 30, (160, 128), 10)
    shapes_video(root / "3_long.mp4", 300, (192, 192), 25)
    # The start of a JPEG: its header is fine, most of its pixels are missing.
    (root / "4_broken.jpg").write_bytes(shapes_image(200, 150, seed=4)[0][:1500])
    (root / "5_notes.txt").write_text("not a sample\n")
    (root / "6_no_media" / "readme.txt").write_text("a folder without images or videos is not a sample\n")
    # Inside a folder the order is natural too: 2_b before 10_c.
    (root / "10_folder" / "10_c.jpg").write_bytes(shapes_image(192, 256, seed=3)[0])
    (root / "10_folder" / "2_b.jpg").write_bytes(shapes_image(256, 192, seed=2)[0])
    shapes_video(root / "10_folder" / "clip.mp4", 20, (128, 96), 10)
    return SampleSet(
        street=street,
        street_shapes=street_shapes,
        clip_frames=30,
        clip_size=(160, 128),
        long_index=3,
        broken_index=4,
        broken_name="4_broken.jpg",
        folder_index=5,
        folder_sizes=((256, 192), (192, 256)),
        folder_clip_frames=20,
    )


def submit(http: httpx.Client, index: int) -> str:
    response = http.post("/api/inference", params={"index": index})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def wait_for_task(http: httpx.Client, task_id: str, timeout: float = TASK_TIMEOUT_S) -> dict:
    """The task's status once it completed or failed."""
    deadline = time.monotonic() + timeout
    while (status := http.get(f"/api/task/{task_id}/status").json())["status"] in ("pending", "processing"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def completed(http: httpx.Client, task_id: str) -> dict:
    status = wait_for_task(http, task_id)
    assert status["status"] == "completed", status
    return http.get(f"/api/task/{task_id}/result").json()


def fetch(http: httpx.Client, url: str, content_type: str) -> bytes:
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type, response.headers
    return response.content


def file_entries(task_id: str, *names: str) -> list[dict]:
    kinds = {".jpg": "image", ".mp4": "video"}
    return [
        {"filename": name, "type": kinds[Path(name).suffix], "url": f"/api/task/{task_id}/file/{name}"}
        for name in names
    ]


def jpeg_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def video_frames(data: bytes) -> tuple[str, int, tuple[int, int]]:
    """(codec, frames decoded, (width, height)) of an MP4."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        return stream.codec_context.name, sum(1 for _ in container.decode(stream)), size


def border_band(shape: datagen.Shape, size: tuple[int, int], reach: int = 6) -> np.ndarray:
    """A mask of the pixels within `reach` of the shape's bounding box outline."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    outer = (xs >= shape.x1 - reach) & (xs < shape.x2 + reach) & (ys >= shape.y1 - reach) & (ys < shape.y2 + reach)
    inner = (xs >= shape.x1 + reach) & (xs < shape.x2 - reach) & (ys >= shape.y1 + reach) & (ys < shape.y2 - reach)
    return outer & ~inner


# -- a whole task ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def street_task(http: httpx.Client, samples: SampleSet) -> tuple[dict, dict]:
    """Sample 1 submitted and run: (the submit response, the final status)."""
    response = http.post("/api/inference", params={"index": 1})
    assert response.status_code == 200, response.text
    return response.json(), wait_for_task(http, response.json()["task_id"])


def test_submit_answers_a_uuid4_task_that_completes_with_the_documented_status(street_task: tuple[dict, dict]) -> None:
    submitted, status = street_task
    assert set(submitted) == {"task_id", "index", "message"}
    assert uuid.UUID(submitted["task_id"]).version == 4 and str(uuid.UUID(submitted["task_id"])) == submitted["task_id"]
    assert submitted["index"] == 1 and submitted["message"] == "任务已创建，正在处理中"

    assert set(status) == STATUS_FIELDS, status
    assert (status["task_id"], status["index"], status["status"]) == (submitted["task_id"], 1, "completed"), status
    assert ISO_TIME.match(status["created_at"]) and ISO_TIME.match(status["completed_at"]), status
    assert status["created_at"] <= status["completed_at"]
    assert isinstance(status["inference_time"], int | float) and not isinstance(status["inference_time"], bool)
    assert 0 < status["inference_time"] < TASK_TIMEOUT_S
    assert status["error_message"] is None


def test_an_image_sample_gives_an_annotated_jpeg_of_its_size_boxing_each_shape(
    http: httpx.Client, samples: SampleSet, street_task: tuple[dict, dict]
) -> None:
    task_id = street_task[0]["task_id"]
    result = http.get(f"/api/task/{task_id}/result").json()
    assert (result["task_id"], result["index"], result["status"]) == (task_id, 1, "completed")
    assert result["inference_time"] == street_task[1]["inference_time"]
    assert (result["created_at"], result["completed_at"]) == (
        street_task[1]["created_at"],
        street_task[1]["completed_at"],
    )
    assert result["files"] == file_entries(task_id, "result_001.jpg")

    annotated = jpeg_pixels(fetch(http, result["files"][0]["url"], "image/jpeg"))
    original = jpeg_pixels(samples.street)
    assert annotated.shape == original.shape == (240, 320, 3)  # sample 1 is 1_street.jpg, not the hidden file
    changed = np.abs(annotated - original).max(axis=2) > 80
    # A box is drawn around every shape: many strongly changed pixels on each outline, while re-encoding
    # alone changes next to nothing.
    for shape in samples.street_shapes:
        band = border_band(shape, (320, 240))
        assert changed[band].mean() > 0.1, (shape, changed[band].mean())
    far = np.ones_like(changed)
    for shape in samples.street_shapes:
        far &= ~border_band(shape, (320, 240), reach=30)
        far[max(shape.y1 - 30, 0) : shape.y2 + 30, max(shape.x1 - 30, 0) : shape.x2 + 30] = False
    assert changed[far].mean() < 0.01


def test_a_video_sample_gives_an_h264_mp4_with_every_frame(http: httpx.Client, samples: SampleSet) -> None:
    task_id = submit(http, 2)
    result = completed(http, task_id)
    assert result["files"] == file_entries(task_id, "output.mp4")
    video = fetch(http, result["files"][0]["url"], "video/mp4")
    assert video_frames(video) == ("h264", samples.clip_frames, samples.clip_size)


def test_a_folder_sample_gives_its_images_in_natural_order_and_its_video(
    http: httpx.Client, samples: SampleSet
) -> None:
    task_id = submit(http, samples.folder_index)  # 10_folder: after 4_broken.jpg, not before 2_clip.mp4
    result = completed(http, task_id)
    # The files come in name order (output.mp4 first), the document's example lists the images first:
    # the order is not part of the contract, the names, types and URLs are.
    by_name = {entry["filename"]: entry for entry in result["files"]}
    expected = file_entries(task_id, "result_001.jpg", "result_002.jpg", "output.mp4")
    assert len(result["files"]) == len(by_name) == 3 and [by_name.get(e["filename"]) for e in expected] == expected
    for name, (width, height) in zip(("result_001.jpg", "result_002.jpg"), samples.folder_sizes, strict=True):
        assert jpeg_pixels(fetch(http, by_name[name]["url"], "image/jpeg")).shape == (height, width, 3), name
    codec, frames, _ = video_frames(fetch(http, by_name["output.mp4"]["url"], "video/mp4"))
    assert (codec, frames) == ("h264", samples.folder_clip_frames)


def test_result_before_completion_says_not_done_and_lists_no_files(http: httpx.Client, samples: SampleSet) -> None:
    # Two long videos: the first runs for seconds, so the second is certainly still waiting behind it.
    first, second = submit(http, samples.long_index), submit(http, samples.long_index)
    for task_id, states in ((first, ("pending", "processing")), (second, ("pending",))):
        result = http.get(f"/api/task/{task_id}/result").json()
        assert result["status"] in states, result
        assert (result["task_id"], result["message"], result["files"]) == (task_id, NOT_DONE, []), result
        assert result["error_message"] is None and result["completed_at"] is None
        status = http.get(f"/api/task/{task_id}/status").json()
        assert status["completed_at"] is None and status["inference_time"] is None
        assert_error(http.get(f"/api/task/{task_id}/file/output.mp4"), 404)
    for task_id in (first, second):
        assert completed(http, task_id)["files"] == file_entries(task_id, "output.mp4")


# -- bad requests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?index=0", 400),
        ("?index=-1", 400),
        ("?index=abc", 400),
        ("?index=1.5", 400),
        ("?index=99999999999", 400),  # beyond int32
        ("", 400),
        ("?index=6", 404),  # 5 samples: 5_notes.txt and 6_no_media/ are not samples
        ("?index=99999", 404),
    ],
)
def test_a_bad_or_missing_index_is_refused(http: httpx.Client, samples: SampleSet, query: str, status: int) -> None:
    before = http.get("/api/tasks").json()["total"]
    assert_error(http.post(f"/api/inference{query}"), status)
    assert http.get("/api/tasks").json()["total"] == before


@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid", "1", uuid.uuid4().hex])
@pytest.mark.parametrize("route", ["status", "result", "file/result_001.jpg"])
def test_an_unknown_task_is_404_on_every_route(http: httpx.Client, task_id: str, route: str) -> None:
    assert_error(http.get(f"/api/task/{task_id}/{route}"), 404)


@pytest.mark.parametrize(
    "filename", ["result_002.jpg", "output.mp4", "RESULT_001.JPG", "..%2F..%2Fetc%2Fpasswd", "..%2Fresult_001.jpg"]
)
def test_a_file_the_task_did_not_publish_is_404(
    http: httpx.Client, street_task: tuple[dict, dict], filename: str
) -> None:
    assert_error(http.get(f"/api/task/{street_task[0]['task_id']}/file/{filename}"), 404)


def test_a_corrupt_sample_fails_its_task_naming_the_file_and_the_queue_goes_on(
    http: httpx.Client, samples: SampleSet
) -> None:
    broken = submit(http, samples.broken_index)
    after = submit(http, 1)
    status = wait_for_task(http, broken)
    assert status["status"] == "failed", status
    assert samples.broken_name in status["error_message"], status
    assert ISO_TIME.match(status["completed_at"]), status
    result = http.get(f"/api/task/{broken}/result").json()
    assert (result["status"], result["files"], result["error_message"]) == ("failed", [], status["error_message"])
    assert_error(http.get(f"/api/task/{broken}/file/result_001.jpg"), 404)
    assert completed(http, after)["files"] == file_entries(after, "result_001.jpg")


# -- listing ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_tasks(http: httpx.Client, samples: SampleSet) -> list[str]:
    """Three tasks submitted in a row and finished; the newest last. Nothing else runs afterwards."""
    task_ids = [submit(http, 1) for _ in range(3)]
    for task_id in task_ids:
        wait_for_task(http, task_id)
    return task_ids


def test_task_list_defaults_to_page_1_of_10_newest_first(http: httpx.Client, three_tasks: list[str]) -> None:
    listing = http.get("/api/tasks").json()
    assert set(listing) == {"total", "page", "page_size", "tasks"}
    assert (listing["page"], listing["page_size"]) == (1, 10)
    assert listing["total"] >= 3 and len(listing["tasks"]) == min(listing["total"], 10)
    assert [task["task_id"] for task in listing["tasks"][:3]] == three_tasks[::-1]
    created = [task["created_at"] for task in listing["tasks"]]
    assert created == sorted(created, reverse=True)
    for task in listing["tasks"]:
        assert set(task) == {"task_id", "index", "status", "created_at", "completed_at"}, task
    newest = http.get(f"/api/task/{three_tasks[-1]}/status").json()
    assert listing["tasks"][0] == {
        key: newest[key] for key in ("task_id", "index", "status", "created_at", "completed_at")
    }


def test_task_list_pages_cover_every_task_once(http: httpx.Client, three_tasks: list[str]) -> None:
    total = http.get("/api/tasks").json()["total"]
    first = http.get("/api/tasks", params={"page": 1, "page_size": 2}).json()
    second = http.get("/api/tasks", params={"page": 2, "page_size": 2}).json()
    assert (first["page"], first["page_size"], second["page"], first["total"]) == (1, 2, 2, total)
    assert [t["task_id"] for t in first["tasks"]] == three_tasks[:0:-1]
    assert second["tasks"][0]["task_id"] == three_tasks[0]
    everything: list[str] = []
    page = 1
    while tasks := http.get("/api/tasks", params={"page": page, "page_size": 7}).json()["tasks"]:
        everything += [t["task_id"] for t in tasks]
        page += 1
    assert len(everything) == len(set(everything)) == total
    assert http.get("/api/tasks", params={"page": page + 5}).json()["tasks"] == []


def test_task_list_filters_by_status(http: httpx.Client, three_tasks: list[str]) -> None:
    total = http.get("/api/tasks", params={"page_size": 100}).json()["total"]
    counts = {}
    for status in ("pending", "processing", "completed", "failed"):
        listing = http.get("/api/tasks", params={"status": status, "page_size": 100}).json()
        assert {task["status"] for task in listing["tasks"]} <= {status}, listing
        counts[status] = listing["total"]
    assert sum(counts.values()) == total and counts["completed"] >= 3
    completed_ids = [t["task_id"] for t in http.get("/api/tasks", params={"status": "completed"}).json()["tasks"]]
    assert completed_ids[:3] == three_tasks[::-1]


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page": 0}, "page"),
        ({"page": "x"}, ""),
        ({"status": "done"}, "status"),
        ({"status": "COMPLETED"}, "status"),
    ],
)
def test_task_list_refuses_bad_parameters(http: httpx.Client, params: dict, mentions: str) -> None:
    assert_error(http.get("/api/tasks", params=params), 400, mentions)


def test_task_list_accepts_the_page_size_bounds(http: httpx.Client) -> None:
    for page_size in (1, 100):
        listing = http.get("/api/tasks", params={"page_size": page_size}).json()
        assert listing["page_size"] == page_size and len(listing["tasks"]) <= page_size


# -- system --------------------------------------------------------------------------------------------------


def test_system_status_reports_triton_connected_and_the_queue_running(http: httpx.Client) -> None:
    status = http.get("/api/system/status").json()
    assert {"status", "ssh_connected", "queue_size", "queue_running"} <= set(status), status
    assert (status["status"], status["ssh_connected"], status["queue_running"]) == ("running", True, True)
    assert isinstance(status["queue_size"], int) and not isinstance(status["queue_size"], bool)
    assert status["queue_size"] == http.get("/api/tasks", params={"status": "pending"}).json()["total"]


def test_health_is_healthy_with_a_current_timestamp_in_microseconds(http: httpx.Client) -> None:
    health = http.get("/api/health").json()
    assert set(health) == {"status", "timestamp"} and health["status"] == "healthy"
    assert HEALTH_TIME.match(health["timestamp"]), health
    stamp = datetime.fromisoformat(health["timestamp"]).replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


@pytest.fixture
def task_port(platform: PlatformInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{platform.task_api_port}", timeout=60) as client:
        yield client


def test_the_task_api_port_serves_the_same_routes(
    task_port: httpx.Client, http: httpx.Client, samples: SampleSet
) -> None:
    health = task_port.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert task_port.get("/api/system/status").json()["ssh_connected"] is True
    task_id = submit(task_port, 1)
    result = completed(task_port, task_id)
    assert result["files"] == file_entries(task_id, "result_001.jpg")
    image = fetch(task_port, result["files"][0]["url"], "image/jpeg")
    assert image == fetch(http, result["files"][0]["url"], "image/jpeg")  # one service behind both ports
    assert task_port.get("/api/tasks").json()["tasks"][0]["task_id"] == task_id
    assert_error(task_port.post("/api/inference", params={"index": 0}), 400)
    assert_error(task_port.get(f"/api/task/{uuid.uuid4()}/status"), 404)
