"""The classifier training worker as a process: spec.json in; progress.json, model.onnx and result.json out;
SIGTERM stops it with exit code 3 and a job that a second run completes from work/last.pt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.segmentation.domain.classifier import BEST_CHECKPOINT, LAST_CHECKPOINT
from services.segmentation.domain.rendering import COMPONENT_TYPES
from services.segmentation.worker import (
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_USAGE,
    MODEL_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    WORK_DIR,
    WorkerSpec,
)

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT = 240


def make_job(job_dir: Path, **overrides: Any) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    button = Image.new("RGB", (90, 32), (255, 255, 255))
    button.paste(Image.new("RGB", (84, 26), (22, 119, 255)), (3, 3))
    button.save(job_dir / "button.png")
    spec = {
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "seed": 0,
        "rendered_per_class": 3,
        "heldout_per_class": 2,
        "resources": [{"path": "button.png", "label": "Button"}, {"path": "missing.png", "label": "Input"}],
        "threads": 1,  # more threads than free cores makes torch crawl on a busy 2-core machine
    } | overrides
    (job_dir / "spec.json").write_text(json.dumps(spec))
    return job_dir


def start(job_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.segmentation.worker", str(job_dir)],
        cwd=ROOT,
        env=os.environ | {"VM_LOG_FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stderr


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_job_trains_exports_and_reports(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path / "job")
    code, stderr = finish(start(job_dir))
    assert code == EXIT_COMPLETED, stderr
    result = read(job_dir / RESULT_FILE)
    assert result["stopped"] is False and result["model"] == MODEL_FILE
    assert result["labels"] == sorted(COMPONENT_TYPES)
    assert result["dataset_num"] == 31  # 3 rendered per type and the readable resource
    assert result["epoch"] == 2 and len(result["valAccList"]) == 2 and len(result["valLossList"]) == 2
    assert result["acc"] == result["valAccList"][result["modelEpoch"] - 1]
    assert isinstance(result["heldout_acc"], float) and 0.0 <= result["heldout_acc"] <= 1.0
    progress = read(job_dir / PROGRESS_FILE)
    assert progress == {key: value for key, value in result.items() if key in progress}
    assert (job_dir / MODEL_FILE).stat().st_size > 1_000_000
    assert (job_dir / WORK_DIR / BEST_CHECKPOINT).is_file()

    events = log_events(stderr)
    skipped = [event for event in events if event["event"] == "skipping an unreadable resource"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("missing.png") and skipped[0]["level"] == "warning"
    finished = [event for event in events if event["event"] == "epoch finished"]
    assert [event["epoch"] for event in finished] == [1, 2]
    assert all(isinstance(event["acc"], float) and isinstance(event["loss"], float) for event in finished)


def test_sigterm_stops_with_code_3_and_a_second_run_completes_the_job(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path / "job", epochs=1000, heldout_per_class=0)
    process = start(job_dir)
    deadline = time.monotonic() + TIMEOUT
    while not (job_dir / PROGRESS_FILE).exists() or read(job_dir / PROGRESS_FILE)["epoch"] < 2:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no second epoch"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == EXIT_STOPPED, stderr
    stopped = read(job_dir / RESULT_FILE)
    assert stopped["stopped"] is True and stopped["heldout_acc"] is None
    assert stopped["model"] == MODEL_FILE and (job_dir / MODEL_FILE).is_file()  # epoch 1's model
    assert len(stopped["valAccList"]) >= 1 and (job_dir / WORK_DIR / LAST_CHECKPOINT).is_file()

    completed_epochs = len(stopped["valAccList"])
    make_job(job_dir, epochs=completed_epochs + 1, heldout_per_class=0)
    code, stderr = finish(start(job_dir))
    assert code == EXIT_COMPLETED, stderr
    resumed = read(job_dir / RESULT_FILE)
    assert resumed["stopped"] is False
    assert resumed["valAccList"][:completed_epochs] == stopped["valAccList"]
    assert len(resumed["valAccList"]) == completed_epochs + 1
    started = [event["epoch"] for event in log_events(stderr) if event["event"] == "epoch started"]
    assert started == [completed_epochs + 1]


def test_failures_exit_1_with_the_reason_and_usage_errors_2(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path / "job", rendered_per_class=0)  # only the one resource: a single type
    code, stderr = finish(start(job_dir))
    assert code == EXIT_FAILED and "at least 2 component types" in stderr
    assert not (job_dir / RESULT_FILE).exists()
    usage = subprocess.run(
        [sys.executable, "-m", "services.segmentation.worker", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert usage.returncode == EXIT_USAGE and "usage" in usage.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": "8"}, "batch_size"),
        ({"learning_rate": True}, "learning_rate"),
        ({"rendered_per_class": -1}, "rendered_per_class"),
        ({"threads": 0}, "threads"),
        ({"resources": {"path": "a.png"}}, "resources"),
        ({"resources": [{"path": "a.png", "label": " "}]}, "label"),
    ],
)
def test_spec_errors_are_invalid_arguments(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        WorkerSpec.read(make_job(tmp_path, **overrides))


def test_spec_defaults_and_resource_paths(tmp_path: Path) -> None:
    resources = [{"path": "crops/a.png", "label": "Icon"}, {"path": "/data/b.png", "label": " Bar"}]
    spec_json = {"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "resources": resources}
    (tmp_path / "spec.json").write_text(json.dumps(spec_json))
    spec = WorkerSpec.read(tmp_path)
    assert (spec.train.seed, spec.rendered_per_class, spec.heldout_per_class, spec.threads) == (0, 0, 0, None)
    assert spec.resources == [(tmp_path / "crops/a.png", "Icon"), (Path("/data/b.png"), "Bar")]
