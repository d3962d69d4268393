"""Queued inference tasks, Triton and the disk under pressure, on a platform of their own (queue capacity 2, a
small cap on kept uploads): a full queue answers 503 and recovers, tasks survive a crash and a restart of the
platform, a killed Triton makes detection fail fast with 503 until the launcher has restarted it and the model
is served again, and uploads never fill more than their cap. Refusals name no server path or address."""

from __future__ import annotations

import io
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import assert_error
from tests.e2e.conftest import TrainedModel, wait_for_export
from tests.e2e.inference_data import shapes_image, shapes_video

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUEUE_CAPACITY = 2
# Bytes of kept uploads: four of the 320x240 BMPs the cap test sends (230,454 bytes each), not five.
UPLOAD_CAP = 1_000_000
# host:port, as in "127.0.0.1:8201", "localhost:50053" or "[::1]:8201".
ADDRESS = re.compile(r"(\d{1,3}(\.\d{1,3}){3}|localhost|\[[0-9a-f:]+\]|[\w.-]+\.\w+):\d{2,5}", re.IGNORECASE)
LONG_FRAMES = 300
LONG_INDEX, IMAGE_INDEX = 1, 2


@pytest.fixture(scope="module")
def own_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInstance]:
    instance = PlatformInstance(
        tmp_path_factory.mktemp("inference-resilience") / "data",
        extra_env={
            "VM_INFERENCE_TASK_QUEUE_CAPACITY": str(QUEUE_CAPACITY),
            "VM_INFERENCE_UPLOAD_MAX_TOTAL_BYTES": str(UPLOAD_CAP),
        },
    )
    with instance:
        yield instance


@pytest.fixture
def client(own_platform: PlatformInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=own_platform.base_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def model_id(own_platform: PlatformInstance, http: httpx.Client, shapes_model: TrainedModel) -> str:
    """The session's shapes model, exported from the session platform and uploaded here, ready for serving;
    and the sample set: a video that takes seconds per task, then an image."""
    exported = http.get(f"/models/{shapes_model.model_id}/export")
    assert exported.status_code == 200, exported.text
    with httpx.Client(base_url=own_platform.base_url, timeout=120) as own:
        uploaded = own.post("/models/upload", files={"file": ("shapes.zip", exported.content, "application/zip")})
        assert uploaded.status_code == 200, uploaded.text
        model = wait_for_export(own, uploaded.json()["model_id"])
    samples = own_platform.data_root / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    shapes_video(samples / "1_long.mp4", LONG_FRAMES, (320, 320), 25)
    (samples / "2_image.jpg").write_bytes(shapes_image(320, 240, seed=5)[0])
    return model["model_id"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.05)


def submit(http: httpx.Client, index: int = LONG_INDEX) -> str:
    response = http.post("/api/inference", params={"index": index})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def status_of(http: httpx.Client, task_id: str) -> str:
    return http.get(f"/api/task/{task_id}/status").json()["status"]


def answering(http: httpx.Client, path: str = "/api/health") -> bool:
    try:
        return http.get(path, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_tasks(http: httpx.Client, task_ids: list[str], timeout: float) -> dict[str, dict]:
    """The final status of each task once none is pending or processing."""
    deadline = time.monotonic() + timeout
    final: dict[str, dict] = {}
    while len(final) < len(task_ids):
        for task_id in set(task_ids) - set(final):
            status = http.get(f"/api/task/{task_id}/status").json()
            if status["status"] not in ("pending", "processing"):
                final[task_id] = status
        assert time.monotonic() < deadline, {t: status_of(http, t) for t in set(task_ids) - set(final)}
        time.sleep(0.2)
    return final


def assert_no_internals(detail: str, platform: PlatformInstance) -> None:
    """An answer a client sees: no server path (these answers need no "/" at all) and no host:port."""
    assert "/" not in detail and str(platform.data_root) not in detail, detail
    assert not ADDRESS.search(detail), detail


def crash_inference(platform: PlatformInstance, http: httpx.Client) -> None:
    """kill -9 the inference service, then wait until the launcher has started it again."""
    pid = platform.pid_of("inference")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: platform.pid_of("inference") != pid and answering(http), 60, "inference restarted")


def frame_count(video: bytes) -> int:
    with av.open(io.BytesIO(video)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def busy_queue(http: httpx.Client) -> list[str]:
    """One long task processing and QUEUE_CAPACITY waiting behind it: the queue is full."""
    running = submit(http)
    wait_until(lambda: status_of(http, running) == "processing", 30, "the first task started")
    waiting = [submit(http) for _ in range(QUEUE_CAPACITY)]
    assert [status_of(http, task_id) for task_id in waiting] == ["pending"] * QUEUE_CAPACITY
    return [running, *waiting]


def test_a_full_queue_answers_503_until_a_task_is_taken(client: httpx.Client, model_id: str) -> None:
    accepted = busy_queue(client)
    system = client.get("/api/system/status").json()
    assert (system["queue_size"], system["queue_running"]) == (QUEUE_CAPACITY, True), system
    before = client.get("/api/tasks").json()["total"]
    for index in (LONG_INDEX, IMAGE_INDEX):
        assert_error(client.post("/api/inference", params={"index": index}), 503, "queue")
    assert client.get("/api/tasks").json()["total"] == before  # refused submits leave nothing behind

    # The worker takes the next task as soon as the first ends: there is room for one again.
    wait_until(lambda: status_of(client, accepted[0]) == "completed", 120, "the first task completed")
    wait_until(lambda: client.get("/api/system/status").json()["queue_size"] < QUEUE_CAPACITY, 10, "room")
    accepted.append(submit(client, IMAGE_INDEX))
    final = wait_for_tasks(client, accepted, 180)
    assert {task_id: status["status"] for task_id, status in final.items()} == dict.fromkeys(accepted, "completed")
    assert client.get("/api/system/status").json()["queue_size"] == 0


def test_tasks_survive_a_killed_inference_service(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    total_before = client.get("/api/tasks").json()["total"]
    submitted = busy_queue(client)
    killed_at = client.get("/api/health").json()["timestamp"][:19]
    crash_inference(own_platform, client)

    final = wait_for_tasks(client, submitted, 240)
    assert {task_id: status["status"] for task_id, status in final.items()} == dict.fromkeys(submitted, "completed")
    interrupted = final[submitted[0]]
    assert interrupted["error_message"] is None and interrupted["completed_at"] > killed_at, interrupted
    for task_id in submitted:  # the interrupted one re-ran from the start: a whole video, not half of one
        result = client.get(f"/api/task/{task_id}/result").json()
        assert [f["filename"] for f in result["files"]] == ["output.mp4"], result
        assert frame_count(client.get(result["files"][0]["url"]).content) == LONG_FRAMES
    assert client.get("/api/tasks").json()["total"] == total_before + len(submitted)  # none lost, none doubled
    # Result directories are exactly those of completed tasks: the interrupted run left no staging behind.
    completed = client.get("/api/tasks", params={"status": "completed", "page_size": 100}).json()["tasks"]
    published = own_platform.data_root / "inference" / "tasks"
    assert sorted(p.name for p in published.iterdir()) == sorted(t["task_id"] for t in completed)


def test_a_task_interrupted_twice_fails_and_the_queue_goes_on(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    doomed, behind = submit(client), []
    for _ in range(2):  # VM_INFERENCE_TASK_MAX_ATTEMPTS is 2: the task ran twice, and crashed twice
        wait_until(lambda: status_of(client, doomed) == "processing", 60, "the task (re)started")
        behind.append(submit(client, IMAGE_INDEX))
        crash_inference(own_platform, client)
    final = wait_for_tasks(client, [doomed, *behind], 60)
    assert final[doomed]["status"] == "failed" and "interrupted 2 times" in final[doomed]["error_message"], final
    assert [final[task_id]["status"] for task_id in behind] == ["completed", "completed"], final
    result = client.get(f"/api/task/{doomed}/result").json()
    assert (result["status"], result["files"]) == ("failed", [])


def test_a_platform_restart_keeps_completed_tasks_and_their_files(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    task_id = submit(client, IMAGE_INDEX)
    assert wait_for_tasks(client, [task_id], 60)[task_id]["status"] == "completed"
    listing = client.get("/api/tasks", params={"page_size": 100}).json()
    results = {t["task_id"]: client.get(f"/api/task/{t['task_id']}/result").json() for t in listing["tasks"]}
    files = {f["url"]: client.get(f["url"]).content for result in results.values() for f in result["files"]}
    assert files and all(files.values())

    own_platform.restart()

    with httpx.Client(base_url=own_platform.base_url, timeout=60) as http:
        assert http.get("/api/tasks", params={"page_size": 100}).json() == listing
        for task_id, result in results.items():
            assert http.get(f"/api/task/{task_id}/result").json() == result
        for url, content in files.items():
            assert http.get(url).content == content, url
        assert submit(http, IMAGE_INDEX)  # and the queue takes new tasks


@dataclass(frozen=True)
class Call:
    at: float  # seconds since Triton was killed
    route: str
    status: int
    seconds: float  # how long the answer took
    body: dict


def test_a_killed_triton_fails_detection_fast_then_serves_again(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    image, shapes = shapes_image(320, 240, seed=21)
    calls: list[Call] = []
    killed = 0.0

    def call(route: str) -> Call:
        started = time.monotonic()
        if route == "infer":
            files = {"file": ("shapes.jpg", image, "image/jpeg")}
            response = client.post(f"/infer/{model_id}", files=files, timeout=30)
        else:
            response = client.get("/api/system/status", timeout=30)
        calls.append(Call(started - killed, route, response.status_code, time.monotonic() - started, response.json()))
        return calls[-1]

    before = call("infer")
    assert before.status == 200 and len(before.body["detections"]) >= len(shapes), before
    assert call("status").body["ssh_connected"] is True

    pid = own_platform.pid_of("triton")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), 5, "dead"
    )
    # The launcher waits a second before it restarts Triton: it is down now, and the service does not know
    # yet. The request fails at once all the same.
    first = call("infer")
    assert first.status == 503 and first.seconds < 3, first
    assert list(first.body) == ["detail"] and "triton" in first.body["detail"].lower(), first

    wait_until(lambda: call("status").body.get("ssh_connected") is False, 10, "ssh_connected false")
    assert calls[-1].at < 2.5, calls
    # Now the service knows: 503 without even asking Triton.
    known = call("infer")
    assert known.status == 503 and known.seconds < 3, known
    assert list(known.body) == ["detail"] and "triton" in known.body["detail"].lower(), known

    # The launcher restarts it, the model is loaded into the new server and detection works again.
    wait_until(
        lambda: call("infer").status == 200 and call("status").body["ssh_connected"] is True, 60, "detection back"
    )
    assert own_platform.pid_of("triton") != pid
    assert len(calls[-2].body["detections"]) >= len(shapes), calls[-2]
    # Never a 500 on the way; every refusal was quick and said why.
    assert {c.status for c in calls if c.route == "infer"} == {200, 503}, calls
    assert {c.status for c in calls if c.route == "status"} == {200}, calls
    refusals = [c for c in calls if c.status == 503]
    assert all(c.seconds < 3 and "triton" in c.body["detail"].lower() for c in refusals), refusals
    # What the client can act on (retry), not where Triton listens.
    for refusal in refusals:
        assert_no_internals(refusal.body["detail"], own_platform)
        assert "retry" in refusal.body["detail"], refusal


def test_an_unknown_sample_says_which_indexes_exist_not_where_they_are(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    detail = assert_error(client.post("/api/inference", params={"index": 99999}), 404, "99999")
    assert_no_internals(detail, own_platform)
    assert "1 to 2" in detail, detail  # the sample set holds two samples


def test_kept_uploads_stay_under_their_byte_cap_oldest_removed_first(
    own_platform: PlatformInstance, client: httpx.Client, model_id: str
) -> None:
    kept_dir = own_platform.data_root / "inference" / "uploads"
    image = datagen.draw_image(320, 240, [], "bmp")  # uncompressed: every upload is the same size

    def kept_bytes() -> int:
        return sum(path.stat().st_size for path in kept_dir.iterdir())

    paths: list[str] = []
    for number in range(6):
        response = client.post(f"/infer/{model_id}", files={"file": (f"{number}.bmp", image, "image/bmp")})
        assert response.status_code == 200, response.text
        paths.append(response.json()["image_path"])
        assert kept_bytes() <= UPLOAD_CAP, sorted(kept_dir.iterdir())
    batch = client.post(
        "/infer/batch/run",
        data={"model_ids": model_id},
        files=[("files", (f"b{n}.bmp", image, "image/bmp")) for n in range(3)],
    )
    assert batch.status_code == 200, batch.text
    paths += [result["image_path"] for result in batch.json()["results"]]
    assert kept_bytes() <= UPLOAD_CAP

    # The newest four are served; everything older went, oldest first.
    newest = UPLOAD_CAP // len(image)
    for path in paths[-newest:]:
        assert client.get(f"/static/{path}").content == image, path
    for path in paths[:-newest]:
        assert_error(client.get(f"/static/{path}"), 404)
    assert sorted(p.name for p in kept_dir.iterdir()) == sorted(p.removeprefix("uploads/") for p in paths[-newest:])
