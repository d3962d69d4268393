"""Restarts and crashes: nothing stored is lost, nothing half-written survives, the launcher heals."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from visionmesh.dataset.v1 import dataset_pb2 as pb
from visionmesh.dataset.v1 import dataset_pb2_grpc

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.conftest import datasets_dir
from tests.e2e.api import assert_error, prepared, uploaded
from tests.e2e.segmentation_data import failure

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# Small upload limits, to see them at work (the session platform's are the defaults, which tests never reach).
UPLOAD_RATE_PER_SECOND, UPLOAD_BURST = 5, 10


@pytest.fixture(scope="module")
def own_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInstance]:
    limits = {
        "VM_GATEWAY_UPLOAD_RATE_PER_SECOND": str(UPLOAD_RATE_PER_SECOND),
        "VM_GATEWAY_UPLOAD_BURST": str(UPLOAD_BURST),
    }
    with PlatformInstance(tmp_path_factory.mktemp("resilience") / "data", extra_env=limits) as instance:
        yield instance


@pytest.fixture
def client(own_platform: PlatformInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=own_platform.base_url, timeout=120) as http:
        yield http


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _serving(http: httpx.Client) -> bool:
    try:
        return http.get("/datasets", params={"page_size": 1}).status_code == 200
    except httpx.HTTPError:
        return False


def _staging_dirs(platform: PlatformInstance) -> list[Path]:
    return [p for p in datasets_dir(platform).rglob(".*") if p.is_dir()]


def test_restart_keeps_datasets_versions_and_annotations(own_platform: PlatformInstance, client: httpx.Client) -> None:
    dataset_id, _ = prepared(client, datagen.dataset_zip(count=6))
    client.post(f"/datasets/{dataset_id}/prepare", json={"split_ratio": {"train": 0.5, "val": 0.5}})
    client.put(f"/datasets/{dataset_id}", json={"description": "kept", "tags": ["x"]})
    task_id = client.post("/annotations/tasks", json={"dataset_id": dataset_id, "version": "v2"}).json()["task_id"]
    boxes = [{"class_id": 1, "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}]
    client.post(f"/annotations/tasks/{task_id}/items/img003", json={"boxes": boxes})
    before = client.get(f"/datasets/{dataset_id}").json()

    own_platform.restart()

    with httpx.Client(base_url=own_platform.base_url, timeout=60) as http:
        assert http.get(f"/datasets/{dataset_id}").json() == before
        assert http.get(f"/annotations/tasks/{task_id}/items/img003").json()["boxes"] == boxes
        assert len(http.get(f"/annotations/tasks/{task_id}/items").json()["items"]) == 6


def test_a_crashed_service_answers_503_then_is_restarted(own_platform: PlatformInstance, client: httpx.Client) -> None:
    pid = own_platform.pid_of("dataset")
    os.kill(pid, signal.SIGKILL)
    _wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )
    # The launcher waits a second before restarting it, and it takes seconds to start: it is down now.
    # What a client can act on, not where the service listens or how the connection broke.
    detail = assert_error(client.get("/datasets"), 503, "The dataset service is not reachable right now")
    assert "upstream" not in detail and "reset reason" not in detail and "127.0.0.1" not in detail
    with grpc.insecure_channel(own_platform.grpc_target) as channel, pytest.raises(grpc.RpcError) as down:
        dataset_pb2_grpc.DatasetServiceStub(channel).ListDatasets(pb.ListDatasetsRequest(), timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not down.value.details().startswith("{")  # gRPC clients get Envoy's message, not a REST body
    _wait_until(lambda: _serving(client), timeout=60)
    assert own_platform.pid_of("dataset") != pid


def test_a_crashed_service_of_document_004_answers_in_its_envelope(
    own_platform: PlatformInstance, client: httpx.Client
) -> None:
    pid = own_platform.pid_of("ocr")
    os.kill(pid, signal.SIGKILL)
    _wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )
    payload = failure(client.post("/imgSeg/v1/predictText", json={"user_id": "u", "image_url_list": []}), 503, 808)
    assert payload["detail"] == "The ocr service is not reachable right now; try again shortly"
    _wait_until(lambda: own_platform.pid_of("ocr") != pid, timeout=60)


def test_killed_during_prepare_leaves_the_old_state_or_the_new(
    own_platform: PlatformInstance, client: httpx.Client
) -> None:
    dataset_id = uploaded(client, datagen.dataset_zip(count=400, size=(320, 240)))
    dataset_dir = datasets_dir(own_platform) / dataset_id
    outcome: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(response=_try_post(client, f"/datasets/{dataset_id}/prepare"))
    )
    worker.start()
    _wait_until(lambda: any(p.name.startswith(".staging-") for p in dataset_dir.iterdir()), timeout=30)
    os.kill(own_platform.pid_of("dataset"), signal.SIGKILL)
    worker.join(60)
    _wait_until(lambda: _serving(client), timeout=60)

    detail = client.get(f"/datasets/{dataset_id}").json()
    assert detail["versions"] in ([], ["v1"])
    for info in detail["version_info"]:  # a version that exists is whole
        images = list((dataset_dir / info["version"] / "images").rglob("*.jpg"))
        assert len(images) == info["train_count"] + info["val_count"] == 400
    assert _staging_dirs(own_platform) == []
    assert sorted(p.name for p in dataset_dir.iterdir()) == sorted(["upload.zip", *detail["versions"]])
    # And the dataset still works.
    again = client.post(f"/datasets/{dataset_id}/prepare", json={})
    assert again.status_code == 200 and again.json()["train_count"] + again.json()["val_count"] == 400


def test_killed_during_upload_leaves_nothing(own_platform: PlatformInstance, client: httpx.Client) -> None:
    before = client.get("/datasets").json()["total"]
    boundary = "vmtestboundary"
    payload = datagen.dataset_zip(count=50, size=(320, 240))
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def slow_body() -> Iterator[bytes]:
        yield head
        for offset in range(0, len(payload), 16384):
            yield payload[offset : offset + 16384]
            time.sleep(0.05)
        yield tail

    outcome: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            response=_try_post(
                client,
                "/datasets/upload",
                content=slow_body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        )
    )
    worker.start()
    _wait_until(lambda: any(p.name.startswith(".staging-") for p in datasets_dir(own_platform).iterdir()))
    time.sleep(0.3)
    os.kill(own_platform.pid_of("dataset"), signal.SIGKILL)
    worker.join(60)
    response = outcome["response"]
    assert not isinstance(response, httpx.Response) or response.status_code >= 500
    _wait_until(lambda: _serving(client), timeout=60)
    assert client.get("/datasets").json()["total"] == before
    assert _staging_dirs(own_platform) == []


def _try_post(http: httpx.Client, url: str, **kwargs: object) -> httpx.Response | Exception:
    try:
        if "content" not in kwargs:
            kwargs["json"] = {}
        return http.post(url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        return error


def test_uploads_are_rate_limited_per_client(client: httpx.Client) -> None:
    attempts = UPLOAD_BURST + 4 * UPLOAD_RATE_PER_SECOND

    def upload(_: int) -> httpx.Response:
        return client.post("/models/upload", files={"file": ("m.zip", b"not a zip", "application/zip")})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(upload, range(attempts)))
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited and {answer.status_code for answer in answers} <= {400, 429}, [a.status_code for a in answers]
    assert_error(limited[0], 429, "Too many uploads from this client (at most 5 a second, 10 at once)")
    assert limited[0].headers["retry-after"] == "1"
    # One bucket for every upload route, REST and native gRPC alike; other routes are not limited.
    assert_error(client.post("/datasets/upload", files={"file": ("d.zip", b"x", "application/zip")}), 429)
    assert client.get("/models").status_code == 200
    # The bucket refills.
    _wait_until(lambda: upload(0).status_code == 400, timeout=10)
    time.sleep(UPLOAD_BURST / UPLOAD_RATE_PER_SECOND)
