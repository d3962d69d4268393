"""The training worker (`python -m services.training.worker <job_dir>`) as the training service runs it: a real
process, real Ultralytics training on a tiny generated dataset, offline. Every worker here runs with an audit
hook that records any attempt to reach the network, and the tests require that there is none."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.dataset.domain.data_yaml import render_data_yaml
from services.training.ultralytics_env import ultralytics_environment
from synthetic.datagen import CLASSES, dataset_members

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT = 180
LINE = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\] ")

# Loaded as sitecustomize by the worker (PYTHONPATH): records DNS look-ups, connects, URL requests and
# processes started (pip, git, curl).
_NETWORK_AUDIT = """
import os, sys

_log = os.environ["VM_TEST_NETWORK_LOG"]
_EVENTS = {
    "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "urllib.Request",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
}


def _hook(event, args):
    if event not in _EVENTS:
        return
    if event == "subprocess.Popen" and os.path.basename(str(args[0])) == "ldconfig":
        return  # ctypes.util.find_library looking for a shared library
    with open(_log, "a") as handle:
        handle.write(f"{event} {args!r}\\n")


sys.addaudithook(_hook)
"""


@dataclass
class Env:
    root: Path
    vars: dict[str, str]
    data_yaml: Path
    network_log: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("training")
    dataset = root / "dataset"
    # 16 train / 4 val images of 64x64 squares and circles, as the dataset service prepares them
    for name, data in dataset_members(count=20, layout="presplit", size=(64, 64), names_file="").items():
        path = dataset / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # ...and one that does not decode: Ultralytics skips it (and must not try to pip-install a decoder for it)
    (dataset / "images" / "train" / "img000.jpg").write_bytes(b"not an image" * 10)
    data_yaml = dataset / "data.yaml"
    data_yaml.write_text(render_data_yaml(list(CLASSES), ["train", "val"], str(dataset)), encoding="utf-8")
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_NETWORK_AUDIT)
    network_log = root / "network.log"
    variables = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    variables |= ultralytics_environment(root / "ultra")
    variables |= {"PYTHONPATH": str(hooks), "VM_TEST_NETWORK_LOG": str(network_log)}
    return Env(root, variables, data_yaml, network_log)


@pytest.fixture(autouse=True)
def no_network(env: Env) -> Iterator[None]:
    yield
    attempts = env.network_log.read_text() if env.network_log.exists() else ""
    env.network_log.unlink(missing_ok=True)  # each test answers for its own workers
    assert attempts == "", f"the worker tried the network:\n{attempts}"


def make_job(env: Env, job_dir: Path, **overrides: Any) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "job_id": job_dir.name,
        "data_yaml": str(env.data_yaml),
        "model": "yolov8n.pt",
        "weights_dir": str(env.root / "weights"),  # empty: no pretrained weights on this machine
        "epochs": 2,
        "imgsz": 64,
        "batch": 4,
        "resume": False,
        "log_file": str(job_dir.parent / f"{job_dir.name}.log"),
        "device": "cpu",
        "workers": 0,
        "threads": 1,  # more threads than free cores makes torch's OpenMP crawl on a busy 2-core machine
        "seed": 0,
    } | overrides
    (job_dir / "job.json").write_text(json.dumps(spec))
    return job_dir


def start(env: Env, job_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.training.worker", str(job_dir)],
        cwd=ROOT,
        env=env.vars,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@dataclass
class Finished:
    code: int
    output: str
    result: dict[str, Any]
    log: str


def finish(job_dir: Path, process: subprocess.Popen[str]) -> Finished:
    output, _ = process.communicate(timeout=WORKER_TIMEOUT)
    result_file = job_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    log = read_log(job_dir)
    # Ultralytics says "Downloading ..." when it fetches weights or fonts, "requirements: ..." when it would
    # pip-install something, and "offline" when it would have done either.
    for sign in ("Download", "requirements:", "offline"):
        assert sign not in output, output
    return Finished(process.returncode, output, result, log)


def run(env: Env, job_dir: Path) -> Finished:
    return finish(job_dir, start(env, job_dir))


def read_log(job_dir: Path) -> str:
    spec = json.loads((job_dir / "job.json").read_text())
    log_file = Path(spec["log_file"])
    text = log_file.read_text() if log_file.exists() else ""
    bad = [line for line in text.splitlines() if not LINE.match(line)]
    assert not bad, f"log lines without a [timestamp]: {bad}"
    return text


def wait_for_epoch(job_dir: Path, process: subprocess.Popen[str], epoch: int) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if json.loads((job_dir / "progress.json").read_text())["epoch"] >= epoch:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert process.poll() is None, f"the worker exited early:\n{process.communicate()[0]}"
        time.sleep(0.02)
    raise AssertionError(f"no progress.json for epoch {epoch}")


def results_epochs(job_dir: Path) -> list[int]:
    lines = (job_dir / "train" / "results.csv").read_text().splitlines()[1:]
    return [int(float(line.split(",")[0])) for line in lines]


@pytest.fixture(scope="module")
def completed(env: Env, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Finished]:
    job_dir = make_job(env, tmp_path_factory.mktemp("jobs") / "job_scratch")
    return job_dir, run(env, job_dir)


def test_trains_from_scratch_when_no_pretrained_weights(completed: tuple[Path, Finished]) -> None:
    job_dir, done = completed
    assert done.code == 0, done.output
    result = done.result
    assert result["status"] == "completed" and result["error"] is None
    assert result["epochs_completed"] == 2
    assert result["best"] == str(job_dir / "train" / "weights" / "best.pt") and Path(result["best"]).is_file()
    assert result["last"] == str(job_dir / "train" / "weights" / "last.pt") and Path(result["last"]).is_file()
    assert result["results_csv"] == str(job_dir / "train" / "results.csv")
    assert results_epochs(job_dir) == [1, 2]
    assert result["weights_source"] == "scratch:yolov8n.yaml"
    assert result["classes"] == list(CLASSES)
    assert result["imgsz"] == 64
    assert set(result["metrics"]) == {"precision", "recall", "mAP50", "mAP50-95"}

    progress = json.loads((job_dir / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["epochs"] == 2
    assert {"box_loss", "cls_loss", "dfl_loss", "mAP50", "mAP50-95"} <= set(progress["metrics"])

    log = done.log
    assert "pretrained weights yolov8n.pt not found in" in log and "training yolov8n from scratch" in log
    for epoch in (1, 2):
        assert re.search(
            rf"\] Epoch {epoch}/2 box_loss=[\d.]+ cls_loss=[\d.]+ dfl_loss=[\d.]+ precision=[\d.]+ recall=[\d.]+ "
            rf"mAP50=[\d.]+ mAP50-95=[\d.]+",
            log,
        ), log
    assert "Saved last.pt" in log and "Final validation" in log and "Training completed: 2 epoch(s)" in log
    assert re.search(r"Ultralytics: train: .*img000.jpg: ignoring corrupt image", log), log
    assert "Training on 15 train / 4 val images" in log


def test_trains_from_pretrained_weights_in_weights_dir(
    env: Env, completed: tuple[Path, Finished], tmp_path: Path
) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    pretrained = weights_dir / "yolov8n.pt"
    pretrained.write_bytes((completed[0] / "train" / "weights" / "best.pt").read_bytes())
    job_dir = make_job(env, tmp_path / "job_pretrained", weights_dir=str(weights_dir), epochs=1)

    done = run(env, job_dir)

    assert done.code == 0, done.output
    assert done.result["status"] == "completed"
    assert done.result["weights_source"] == f"pretrained:{pretrained}"
    assert f"Weights: pretrained:{pretrained}" in done.log and "from scratch" not in done.log
    assert Path(done.result["best"]).is_file()


def test_sigterm_stops_after_the_epoch_and_resume_finishes(env: Env, tmp_path: Path) -> None:
    job_dir = make_job(env, tmp_path / "job_stop", epochs=3)
    process = start(env, job_dir)
    wait_for_epoch(job_dir, process, 1)
    process.send_signal(signal.SIGTERM)
    stopped = finish(job_dir, process)

    assert stopped.code == 0, stopped.output
    assert stopped.result["status"] == "stopped" and stopped.result["error"] is None
    done_before = stopped.result["epochs_completed"]
    assert 1 <= done_before < 3
    assert json.loads((job_dir / "progress.json").read_text())["epoch"] == done_before
    assert stopped.result["last"] == str(job_dir / "train" / "weights" / "last.pt")
    assert "Stop requested" in stopped.log and f"Training stopped after {done_before} completed epoch(s)" in stopped.log
    assert "Final validation" not in stopped.log  # final_eval would have stripped last.pt

    make_job(env, job_dir, epochs=3, resume=True)
    resumed = run(env, job_dir)

    assert resumed.code == 0, resumed.output
    assert resumed.result["status"] == "completed"
    assert resumed.result["epochs_completed"] == 3
    assert resumed.result["weights_source"] == "scratch:yolov8n.yaml"
    assert f"Resuming from epoch {done_before + 1}/3 ({done_before} completed)" in resumed.log
    new_lines = resumed.log[len(stopped.log) :]
    assert "Epoch 1/3" not in new_lines and "Epoch 3/3" in new_lines  # continued, not restarted
    assert results_epochs(job_dir) == [1, 2, 3]


def test_resume_after_sigkill_mid_training(env: Env, tmp_path: Path) -> None:
    job_dir = make_job(env, tmp_path / "job_kill", epochs=4)
    process = start(env, job_dir)
    wait_for_epoch(job_dir, process, 1)
    time.sleep(0.2)  # into the second epoch; three more to go, so the kill cannot come after the end
    process.kill()
    process.communicate(timeout=WORKER_TIMEOUT)
    assert not (job_dir / "result.json").exists()

    make_job(env, job_dir, epochs=4, resume=True)
    resumed = run(env, job_dir)

    assert resumed.code == 0, resumed.output
    assert resumed.result["status"] == "completed"
    assert resumed.result["epochs_completed"] == 4
    assert re.search(r"Resuming from epoch [234]/4", resumed.log), resumed.log
    assert results_epochs(job_dir) == [1, 2, 3, 4]  # no epoch twice, none missing
    assert Path(resumed.result["best"]).is_file()


def test_unknown_model_fails_cleanly(env: Env, tmp_path: Path) -> None:
    job_dir = make_job(env, tmp_path / "job_foo", model="foo.pt")

    done = run(env, job_dir)

    assert done.code == 1, done.output
    assert done.result["status"] == "failed"
    assert "unknown model 'foo.pt'" in done.result["error"]
    assert f"Training failed: {done.result['error']}" in done.log
    assert done.result["best"] is None and done.result["epochs_completed"] == 0
    assert done.result["classes"] == list(CLASSES)


def test_missing_images_fail_cleanly(env: Env, tmp_path: Path) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(render_data_yaml(list(CLASSES), ["train", "val"], str(tmp_path / "gone")))
    job_dir = make_job(env, tmp_path / "job_missing", data_yaml=str(data_yaml))

    done = run(env, job_dir)

    assert done.code == 1, done.output
    assert done.result["status"] == "failed"
    assert "images not found" in done.result["error"] and str(tmp_path / "gone") in done.result["error"]
    assert "Training failed: " in done.log
    assert not (job_dir / "progress.json").exists()
