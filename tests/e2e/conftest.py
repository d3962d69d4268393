"""Fixtures of the end-to-end tests that need a trained model.

`shapes_model` is a detector the platform itself trains once per test session (yolov8n from scratch, 20
epochs at 128 px on generated red squares and blue circles: a few CPU minutes) and exports into Triton's
repository. The quality-floor test measures it; the inference tests use it because it really finds the
shapes they draw, so their assertions can be about where the objects are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from synthetic import datagen
from synthetic.image_server import ImageServer, image_server
from tests.e2e.api import prepared
from tests.e2e.segmentation_data import wait_for_training

DEFAULT_CLASSIFIER = "Train-imgSeg-default"

SHAPES_IMGSZ = 128


@dataclass(frozen=True)
class TrainedModel:
    model_id: str
    job: dict
    version: dict  # the prepared dataset version it was trained on (has a held-out test split)


def wait_for_export(http: httpx.Client, model_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (model := http.get(f"/models/{model_id}").json())["export_status"] == "pending":
        assert time.monotonic() < deadline, model
        time.sleep(0.5)
    assert model["export_status"] == "ready", model["export_error"]
    return model


@pytest.fixture(scope="session")
def shapes_model(http: httpx.Client) -> TrainedModel:
    data = datagen.dataset_zip(count=240, size=(SHAPES_IMGSZ, SHAPES_IMGSZ), seed=7)
    _, version = prepared(http, data, {"split_ratio": {"train": 0.7, "val": 0.15, "test": 0.15}})
    response = http.post(
        "/train/jobs", json={"dataset_id": version["dataset_id"], "epochs": 20, "imgsz": SHAPES_IMGSZ, "batch": 16}
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 900
    while (job := http.get(f"/train/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "completed", job
    wait_for_export(http, job["model_id"])
    return TrainedModel(job["model_id"], job, version)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    """A local web server the 004 routes fetch image_url inputs from."""
    with image_server(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture(scope="session")
def default_classifier(http: httpx.Client) -> dict:
    """The built-in component classifier, which the segmentation service trains at its first start."""
    progress = wait_for_training(http, DEFAULT_CLASSIFIER, timeout=1200)
    assert progress["task_status"] == 200 and progress["model_ready"], progress
    return progress
