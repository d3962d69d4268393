"""Fixtures for the training-domain unit tests: the offline Ultralytics environment and one real (tiny)
Ultralytics training run per session, whose best.pt and results.csv several tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.training.ultralytics_env import ultralytics_environment
from synthetic.datagen import CLASSES, dataset_members

# One epoch at 64 px on ten 64 px images: ~15 s on a CPU, a real trainer-written best.pt.
_TRAIN_SCRIPT = """
import json, sys
args = json.loads(sys.argv[1])
from ultralytics import YOLO
YOLO("yolov8n.yaml").train(
    data=args["data"], project=args["project"], name="train", exist_ok=True, epochs=1, imgsz=64, batch=4,
    workers=0, device="cpu", amp=False, plots=False, seed=0, deterministic=True, verbose=False,
)
"""


@dataclass(frozen=True)
class TrainedRun:
    weights: Path  # train/weights/best.pt
    results_csv: Path
    classes: list[str]


@pytest.fixture(scope="session")
def yolo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """ultralytics_environment() for child processes, also applied to this process: inspect_checkpoint
    imports Ultralytics here, which must not probe the network or write to ~/.config."""
    env = ultralytics_environment(tmp_path_factory.mktemp("ultralytics-config"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, yolo_env: dict[str, str]) -> TrainedRun:
    root = tmp_path_factory.mktemp("tiny-training")
    dataset = root / "dataset"
    for name, data in dataset_members(count=10, layout="presplit", size=(64, 64), names_file="").items():
        path = dataset / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    data_yaml = dataset / "data.yaml"
    data_yaml.write_text(
        json.dumps({"path": str(dataset), "train": "images/train", "val": "images/val", "names": list(CLASSES)})
    )
    arguments = json.dumps({"data": str(data_yaml), "project": str(root / "runs")})
    completed = subprocess.run(
        [sys.executable, "-c", _TRAIN_SCRIPT, arguments],
        cwd=root,
        env={**os.environ, **yolo_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = root / "runs" / "train"
    assert (run / "weights" / "best.pt").is_file(), completed.stdout[-3000:]
    return TrainedRun(run / "weights" / "best.pt", run / "results.csv", list(CLASSES))
