"""Training jobs, logs and models through the real Envoy, with real (tiny) Ultralytics trainings."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import ISO_TIME, assert_error, prepared, unzip, uploaded
from tests.e2e.inference_data import shapes_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB_ID = re.compile(r"^job_\d{8}_\d{6}(_\d+)?$")
MODEL_ID = re.compile(r"^model_\d{8}_\d{6}(_\d+)?$")
TINY = {"epochs": 2, "imgsz": 64, "batch": 4}


def _wait_for(http: httpx.Client, job_id: str, done: Callable[[dict], bool], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/train/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in time: {job}")


def _finished(job: dict) -> bool:
    return job["status"] in ("completed", "failed", "stopped", "interrupted")


@pytest.fixture(scope="module")
def dataset_id(http: httpx.Client) -> str:
    dataset, _ = prepared(http, datagen.dataset_zip(count=16, size=(64, 64)))
    return dataset


@pytest.fixture(scope="module")
def trained(http: httpx.Client, dataset_id: str) -> dict:
    """One completed 2-epoch job, shared by the model tests."""
    response = http.post("/train/jobs", json={"dataset_id": dataset_id, **TINY})
    assert response.status_code == 200, response.text
    return _wait_for(http, response.json()["job_id"], _finished)


def test_a_job_trains_to_completion_and_registers_a_model(http: httpx.Client, trained: dict, dataset_id: str) -> None:
    assert trained["status"] == "completed", trained
    assert JOB_ID.match(trained["job_id"]) and MODEL_ID.match(trained["model_id"])
    assert trained["dataset_id"] == dataset_id and trained["version"] == "v1"
    assert (trained["model_name"], trained["epochs"], trained["imgsz"], trained["batch"]) == ("yolov8n.pt", 2, 64, 4)
    assert ISO_TIME.match(trained["created_at"]) and ISO_TIME.match(trained["completed_at"])
    assert trained["base_model_id"] is None and trained["epochs_completed"] == 2
    # No pretrained weights on this machine: the same architecture from scratch, and it says so.
    assert trained["weights_source"].startswith("scratch:")
    assert Path(trained["log_file"]).name == f"{trained['job_id']}.log"
    listed = http.get("/train/jobs").json()["jobs"]
    assert any(job["job_id"] == trained["job_id"] and job["model_id"] == trained["model_id"] for job in listed)

    lines = http.get("/logs/lines", params={"job_id": trained["job_id"], "n": 0}).json()
    text = "\n".join(lines["lines"])
    assert lines["total"] == lines["returned"] == len(lines["lines"])
    assert all(re.match(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\] ", line) for line in lines["lines"])
    assert "from scratch" in text and "Epoch 1/2" in text and "Epoch 2/2" in text and "mAP50" in text
    last_three = http.get("/logs/lines", params={"job_id": trained["job_id"], "n": 3}).json()
    assert last_three["lines"] == lines["lines"][-3:] and last_three["returned"] == 3


def test_model_registry_round_trip(http: httpx.Client, trained: dict, platform: PlatformInstance) -> None:
    model_id = trained["model_id"]
    model = http.get(f"/models/{model_id}").json()
    assert model["model_id"] == model_id and model["source"] == "trained"
    assert model["job_id"] == trained["job_id"] and model["dataset_id"] == trained["dataset_id"]
    assert model["classes"] == list(datagen.CLASSES)
    assert Path(model["weights_path"]).is_file() and model["file_size"] == Path(model["weights_path"]).stat().st_size
    assert model["file_size_mb"] == round(model["file_size"] / 1024 / 1024, 2)
    assert {"mAP50", "mAP50-95"} <= set(model["metrics"]) and len(model["history"]) == 2
    # The document's summary of the final validation, under its names.
    assert set(model["training_metrics"]) == {"mAP50", "mAP50-95", "precision", "recall"}
    assert all(model["training_metrics"][name] == model["metrics"][name] for name in model["training_metrics"])
    assert any(m["model_id"] == model_id for m in http.get("/models").json()["models"])

    updated = http.put(f"/models/{model_id}", json={"name": "shapes v1", "tags": ["demo"]}).json()
    assert (updated["name"], updated["tags"], updated["description"]) == ("shapes v1", ["demo"], model["description"])

    for chart_type in ("loss", "metrics", "all", None):
        response = http.get(f"/models/{model_id}/charts", params={"chart_type": chart_type} if chart_type else {})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as chart:
            assert chart.width >= 400 and chart.height >= 300
    assert_error(http.get(f"/models/{model_id}/charts", params={"chart_type": "pie"}), 400, "chart_type")

    exported = http.get(f"/models/{model_id}/export")
    assert exported.headers["content-type"] == "application/zip"
    files = unzip(exported.content)
    assert set(files) == {f"{model_id}/weights/best.pt", f"{model_id}/model.json"}
    assert json.loads(files[f"{model_id}/model.json"])["name"] == "shapes v1"

    # The export uploads back as is; its model_id is taken, so it gets a new one.
    again = http.post("/models/upload", files={"file": ("m.zip", exported.content, "application/zip")})
    assert again.status_code == 200, again.text
    copy = again.json()
    assert copy["model_id"] != model_id and MODEL_ID.match(copy["model_id"])
    assert (copy["source"], copy["name"], copy["classes"]) == ("uploaded", "shapes v1", list(datagen.CLASSES))
    assert copy["training_metrics"] == model["training_metrics"]  # from the exported model.json

    # Format 2 (no top folder), without model.json: new metadata is made.
    bare = io.BytesIO()
    with zipfile.ZipFile(bare, "w") as archive:
        archive.writestr("weights/best.pt", files[f"{model_id}/weights/best.pt"])
    plain = http.post("/models/upload", files={"file": ("plain.zip", bare.getvalue(), "application/zip")}).json()
    assert plain["classes"] == list(datagen.CLASSES) and plain["name"] and plain["training_metrics"] == {}

    # A model is exported to ONNX, into the Triton repository, before its job completes or its upload answers.
    for served in (model, copy, plain):
        assert served["export_status"] == "ready", served["export_error"]
    repository = platform.data_root / "triton" / "repository" / model_id
    assert (repository / "config.pbtxt").is_file() and (repository / "1" / "model.onnx").is_file()

    for doomed in (copy["model_id"], plain["model_id"]):
        assert http.delete(f"/models/{doomed}").json() == {"ok": True, "message": "Model deleted successfully"}
        assert_error(http.get(f"/models/{doomed}"), 404)


def test_bad_model_uploads(http: httpx.Client) -> None:
    before = http.get("/models").json()["total"]
    no_weights = datagen.zip_bytes({"model.json": b'{"name": "x"}', "weights/readme.txt": b"none"})
    assert_error(http.post("/models/upload", files={"file": ("a.zip", no_weights)}), 400, ".pt")
    not_torch = datagen.zip_bytes({"weights/best.pt": b"this is not a checkpoint"})
    assert_error(http.post("/models/upload", files={"file": ("b.zip", not_torch)}), 400)
    assert_error(http.post("/models/upload", files={"file": ("c.zip", b"not a zip")}), 400, "zip")
    assert http.get("/models").json()["total"] == before


def _infer(http: httpx.Client, model_id: str) -> httpx.Response:
    data, _ = shapes_image(64, 64, seed=3)
    return http.post(f"/infer/{model_id}", files={"file": ("shapes.jpg", data, "image/jpeg")})


def test_a_model_serves_as_soon_as_its_job_completes_or_its_upload_answers(http: httpx.Client, dataset_id: str) -> None:
    job_id = http.post("/train/jobs", json={"dataset_id": dataset_id, **TINY}).json()["job_id"]
    job = _wait_for(http, job_id, _finished)
    assert job["status"] == "completed", job
    # The documents' flow, with no waiting in between: completed -> infer.
    response = _infer(http, job["model_id"])
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["detections"], list)
    assert http.get(f"/models/{job['model_id']}").json()["export_status"] == "ready"
    log = http.get("/logs/lines", params={"job_id": job_id, "n": 0}).json()["lines"]
    exporting = next(n for n, line in enumerate(log) if "Exporting the model for serving" in line)
    assert f"Model {job['model_id']} is ready for serving" in log[exporting + 1]
    assert log[-1].endswith("Job completed")

    # upload -> infer.
    exported = http.get(f"/models/{job['model_id']}/export").content
    uploaded_model = http.post("/models/upload", files={"file": ("m.zip", exported, "application/zip")})
    assert uploaded_model.status_code == 200, uploaded_model.text
    assert uploaded_model.json()["export_status"] == "ready"
    response = _infer(http, uploaded_model.json()["model_id"])
    assert response.status_code == 200, response.text


def test_sse_follows_the_live_log_until_the_job_ends(http: httpx.Client, dataset_id: str) -> None:
    job_id = http.post("/train/jobs", json={"dataset_id": dataset_id, **TINY}).json()["job_id"]
    received: list[tuple[float, str]] = []
    with http.stream("GET", "/logs/stream", params={"job_id": job_id}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append((time.monotonic(), line.removeprefix("data: ")))
    job = http.get(f"/train/jobs/{job_id}").json()
    assert job["status"] == "completed"
    texts = [text for _, text in received]
    assert texts == http.get("/logs/lines", params={"job_id": job_id, "n": 0}).json()["lines"]
    # Lines arrived while the job ran, not all at the end.
    epoch_times = [at for at, text in received if "Epoch 1/2" in text or "Epoch 2/2" in text]
    assert epoch_times and received[-1][0] - epoch_times[0] > 0.5

    # Polling: at most 50 lines per call, offsets chain to the end.
    offset, polled = 0, []
    while True:
        page = http.get("/logs/tail", params={"job_id": job_id, "offset": offset}).json()
        assert len(page["lines"]) <= 50
        if not page["lines"]:
            break
        polled += page["lines"]
        offset = page["offset"]
    assert polled == texts
    assert_error(http.get("/logs/tail", params={"job_id": job_id, "offset": offset + 10}), 400, "offset")


def _worker_pids(job_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "services.training.worker" in cmdline and str(job_dir) in cmdline:
                found.append(int(proc.name))
    return found


def test_stop_then_resume_continues_from_the_last_epoch(
    http: httpx.Client, dataset_id: str, platform: PlatformInstance
) -> None:
    epochs = 20  # tiny epochs take about a second: enough of them that the stop lands mid-run
    job_id = http.post(
        "/train/jobs", json={"dataset_id": dataset_id, "epochs": epochs, "imgsz": 64, "batch": 4}
    ).json()["job_id"]
    _wait_for(http, job_id, lambda job: job["epochs_completed"] >= 1 or _finished(job))
    stopped = http.post(f"/train/jobs/{job_id}/stop")
    assert stopped.json() == {"ok": True, "message": "Training job stopped successfully"}
    job = http.get(f"/train/jobs/{job_id}").json()
    assert job["status"] == "stopped" and 1 <= job["epochs_completed"] < epochs and job["model_id"] is None
    assert (platform.data_root / "training" / "jobs" / job_id / "train" / "weights" / "last.pt").is_file()
    assert_error(http.post(f"/train/jobs/{job_id}/stop"), 400, "not running")

    resumed = http.post(f"/train/jobs/{job_id}/resume").json()
    assert resumed["ok"] is True and resumed["job_id"] == job_id and resumed["status"] in ("running", "queued")
    job = _wait_for(http, job_id, _finished)
    assert job["status"] == "completed" and job["epochs_completed"] == epochs and job["model_id"]
    log = "\n".join(http.get("/logs/lines", params={"job_id": job_id, "n": 0}).json()["lines"])
    assert "Resuming" in log and f"Epoch {epochs}/{epochs}" in log
    assert_error(http.post(f"/train/jobs/{job_id}/resume"), 400, "completed")


def test_a_killed_worker_is_resumed_after_a_service_restart(tmp_path: Path) -> None:
    with PlatformInstance(tmp_path / "data") as platform, httpx.Client(base_url=platform.base_url, timeout=120) as http:
        dataset, _ = prepared(http, datagen.dataset_zip(count=16, size=(64, 64)))
        job_id = http.post("/train/jobs", json={"dataset_id": dataset, "epochs": 12, "imgsz": 64, "batch": 4}).json()[
            "job_id"
        ]
        _wait_for(http, job_id, lambda job: job["epochs_completed"] >= 1 or _finished(job))
        job_dir = platform.data_root / "training" / "jobs" / job_id
        for pid in _worker_pids(job_dir):
            os.kill(pid, signal.SIGKILL)
        job = _wait_for(http, job_id, _finished)
        assert job["status"] == "failed" and "code -9" in job["error"]
        # The service itself dies and comes back: the job keeps its record and checkpoint.
        os.kill(platform.pid_of("training"), signal.SIGKILL)
        time.sleep(1)
        _wait_for(http, job_id, lambda job: "status" in job, timeout=120)
        assert http.post(f"/train/jobs/{job_id}/resume").json()["ok"] is True
        job = _wait_for(http, job_id, _finished)
        assert job["status"] == "completed" and job["epochs_completed"] == 12
        assert "Resuming" in "\n".join(http.get("/logs/lines", params={"job_id": job_id, "n": 0}).json()["lines"])


def test_jobs_running_when_the_service_dies_come_back_interrupted_with_their_saved_epochs(tmp_path: Path) -> None:
    with PlatformInstance(tmp_path / "data") as platform, httpx.Client(base_url=platform.base_url, timeout=120) as http:
        dataset, _ = prepared(http, datagen.dataset_zip(count=16, size=(64, 64)))
        job_id = http.post("/train/jobs", json={"dataset_id": dataset, "epochs": 12, "imgsz": 64, "batch": 4}).json()[
            "job_id"
        ]
        job_dir = platform.data_root / "training" / "jobs" / job_id
        _wait_for(http, job_id, lambda job: job["epochs_completed"] >= 2 or _finished(job))
        os.kill(platform.pid_of("training"), signal.SIGKILL)  # the worker dies with it
        job = _wait_for(http, job_id, lambda job: job.get("status") == "interrupted", timeout=120)
        assert not _worker_pids(job_dir)
        saved = json.loads((job_dir / "progress.json").read_text())["epoch"]
        assert job["epochs_completed"] == saved and 2 <= saved < 12, job
        http.post(f"/train/jobs/{job_id}/resume")
        _wait_for(http, job_id, lambda job: job["epochs_completed"] > saved or _finished(job))
        log = "\n".join(http.get("/logs/lines", params={"job_id": job_id, "n": 0}).json()["lines"])
        assert f"Resume requested: continuing after epoch {saved}" in log
        assert f"Resuming from epoch {saved + 1}/12 ({saved} completed)" in log  # what last.pt says

        # The service dies again while the finished job exports its model: the job is completed after the
        # restart, the export starts over, and the serving routes wait for it.
        _wait_for(http, job_id, lambda _: "Exporting the model for serving" in _log_text(http, job_id))
        os.kill(platform.pid_of("training"), signal.SIGKILL)
        job = _wait_for(http, job_id, lambda job: job.get("status") == "completed", timeout=120)
        assert job["epochs_completed"] == 12 and job["model_id"], job
        assert "the training service restarted while model" in _log_text(http, job_id)
        response = http.post(f"/infer/{job['model_id']}", files={"file": ("a.jpg", shapes_image(64, 64, 1)[0])})
        assert response.status_code == 200, response.text


def _log_text(http: httpx.Client, job_id: str) -> str:
    response = http.get("/logs/lines", params={"job_id": job_id, "n": 0})
    return "\n".join(response.json()["lines"]) if response.status_code == 200 else ""


def test_delete_stops_a_running_job_and_removes_it(
    http: httpx.Client, dataset_id: str, platform: PlatformInstance
) -> None:
    job_id = http.post("/train/jobs", json={"dataset_id": dataset_id, "epochs": 50, "imgsz": 64, "batch": 4}).json()[
        "job_id"
    ]
    _wait_for(http, job_id, lambda job: job["status"] == "running")
    assert http.delete(f"/train/jobs/{job_id}").json() == {"ok": True, "message": "Training job deleted successfully"}
    assert_error(http.get(f"/train/jobs/{job_id}"), 404)
    assert not (platform.data_root / "training" / "jobs" / job_id).exists()
    assert not (platform.data_root / "jobs" / f"{job_id}.log").exists()
    assert not _worker_pids(platform.data_root / "training" / "jobs" / job_id)


def test_bad_job_requests(http: httpx.Client, dataset_id: str) -> None:
    unprepared = uploaded(http, datagen.dataset_zip(count=4))
    base = {"dataset_id": dataset_id}
    for body, status, text in [
        ({"dataset_id": "ds_20000101_000000"}, 404, "ds_20000101_000000"),
        ({"dataset_id": unprepared}, 400, "not prepared"),
        ({**base, "version": "v9"}, 404, "v9"),
        ({**base, "epochs": 0}, 400, "epochs"),
        ({**base, "imgsz": 16}, 400, "imgsz"),
        ({**base, "batch": 0}, 400, "batch"),
        ({**base, "model_name": "resnet50.pt"}, 400, "model_name"),
        ({**base, "base_model_id": "model_20000101_000000"}, 404, "model_20000101_000000"),
        ({**base, "epochs": "many"}, 400, ""),
        ({}, 400, "dataset_id"),
    ]:
        assert_error(http.post("/train/jobs", json=body), status, text)
    missing = "job_20000101_000000"
    for method, url in [
        ("GET", f"/train/jobs/{missing}"),
        ("POST", f"/train/jobs/{missing}/stop"),
        ("POST", f"/train/jobs/{missing}/resume"),
        ("DELETE", f"/train/jobs/{missing}"),
        ("GET", f"/logs/tail?job_id={missing}"),
        ("GET", f"/logs/lines?job_id={missing}"),
        ("GET", f"/logs/stream?job_id={missing}"),
        ("GET", "/models/model_20000101_000000"),
        ("GET", "/models/model_20000101_000000/export"),
        ("GET", "/models/model_20000101_000000/charts"),
        ("DELETE", "/models/model_20000101_000000"),
    ]:
        assert_error(http.request(method, url), 404)


def test_jobs_wait_for_a_slot_and_a_failing_job_leaves_the_service_running(http: httpx.Client, dataset_id: str) -> None:
    running = http.post("/train/jobs", json={"dataset_id": dataset_id, "epochs": 50, "imgsz": 64, "batch": 4}).json()
    _wait_for(http, running["job_id"], lambda job: job["status"] == "running")
    doomed_dataset, _ = prepared(http, datagen.dataset_zip(count=8, size=(64, 64)))
    waiting = http.post("/train/jobs", json={"dataset_id": doomed_dataset, **TINY}).json()
    assert waiting["status"] == "queued"  # one slot (VM_TRAINING_MAX_CONCURRENT_JOBS=1), and it is taken
    assert http.get("/train/jobs", params={"status": "queued"}).json()["jobs"][0]["job_id"] == waiting["job_id"]
    # Its dataset disappears before the job gets its turn: the job fails with the reason, nothing else does.
    http.delete(f"/datasets/{doomed_dataset}")
    http.post(f"/train/jobs/{running['job_id']}/stop")
    failed = _wait_for(http, waiting["job_id"], _finished)
    assert failed["status"] == "failed" and doomed_dataset in failed["error"], failed
    log = http.get("/logs/lines", params={"job_id": waiting["job_id"]}).json()["lines"]
    assert "Job failed" in log[-1] and doomed_dataset in log[-1]
    assert http.get("/train/jobs").status_code == 200


def test_fine_tuning_from_a_registered_model(http: httpx.Client, dataset_id: str, trained: dict) -> None:
    for body in ({"base_model_id": trained["model_id"]}, {"model_name": trained["model_id"]}):
        job_id = http.post("/train/jobs", json={"dataset_id": dataset_id, **TINY, **body}).json()["job_id"]
        job = _wait_for(http, job_id, _finished)
        assert job["status"] == "completed", job
        assert job["base_model_id"] == trained["model_id"] and job["weights_source"].startswith("checkpoint:")


def test_native_clients_follow_the_log_by_grpc(platform: PlatformInstance, http: httpx.Client, trained: dict) -> None:
    import grpc
    from visionmesh.training.v1 import training_pb2, training_pb2_grpc

    with grpc.insecure_channel(platform.grpc_target) as channel:
        stub = training_pb2_grpc.LogServiceStub(channel)
        lines = list(stub.FollowLog(training_pb2.LogRequest(job_id=trained["job_id"]), timeout=60))
    expected = http.get("/logs/lines", params={"job_id": trained["job_id"], "n": 0}).json()["lines"]
    assert [line.line for line in lines] == expected
    log_size = Path(trained["log_file"]).stat().st_size
    assert lines[-1].offset == log_size
