"""Annotation routes through the real Envoy: tasks, items, boxes in pixels, YOLO export."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from synthetic import datagen
from tests.e2e.api import ISO_TIME, TASK_ID, assert_error, prepared, unzip

pytestmark = pytest.mark.e2e


def _task(http: httpx.Client, dataset_id: str, **body: object) -> dict:
    response = http.post("/annotations/tasks", json={"dataset_id": dataset_id, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_task_starts_from_the_dataset_labels(http: httpx.Client) -> None:
    members = datagen.dataset_members(count=5, size=(120, 80))
    dataset_id, _ = prepared(http, datagen.zip_bytes(members))
    task = _task(http, dataset_id)
    assert TASK_ID.match(task["task_id"]) and ISO_TIME.match(task["created_at"])
    assert task["dataset_id"] == dataset_id and task["version"] == "v1"
    assert task["classes"] == list(datagen.CLASSES)
    assert (task["total_items"], task["annotated_count"]) == (5, 5)

    items = http.get(f"/annotations/tasks/{task['task_id']}/items").json()
    assert items["task_id"] == task["task_id"] and len(items["items"]) == 5
    item = next(i for i in items["items"] if i["image_id"] == "img000")
    assert item["image_path"].startswith(f"datasets/{dataset_id}/v1/images/")
    assert (item["width"], item["height"], item["has_annotation"]) == (120, 80, True)

    # The YOLO label of img000 comes back as pixel boxes matching the shapes drawn.
    label_lines = members["labels/img000.txt"].decode().split()
    annotation = http.get(f"/annotations/tasks/{task['task_id']}/items/img000").json()
    assert annotation["image_id"] == "img000" and ISO_TIME.match(annotation["updated_at"])
    first = annotation["boxes"][0]
    xc, yc, w, h = (float(v) for v in label_lines[1:5])
    assert first["class_id"] == int(label_lines[0])
    assert first["x1"] == pytest.approx((xc - w / 2) * 120, abs=0.02)
    assert first["y2"] == pytest.approx((yc + h / 2) * 80, abs=0.02)


def test_save_get_export_round_trip(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=5, size=(200, 100), labels=False, names_file=""))
    task = _task(http, dataset_id, classes=["person", "car", "dog"])
    assert task["annotated_count"] == 0 and task["classes"] == ["person", "car", "dog"]
    task_id = task["task_id"]
    empty = http.get(f"/annotations/tasks/{task_id}/items/img001").json()
    assert empty == {"image_id": "img001", "boxes": [], "updated_at": ""}

    boxes = [
        {"class_id": 2, "x1": 10.0, "y1": 20.0, "x2": 110.0, "y2": 70.0},
        {"class_id": 0, "x1": 0.0, "y1": 0.0, "x2": 200.0, "y2": 100.0},
    ]
    response = http.post(f"/annotations/tasks/{task_id}/items/img001", json={"boxes": boxes})
    assert response.json() == {"ok": True, "message": "Annotation saved successfully"}
    saved = http.get(f"/annotations/tasks/{task_id}/items/img001").json()
    assert saved["boxes"] == boxes and ISO_TIME.match(saved["updated_at"])
    # An explicit empty list records "nothing in this image".
    assert http.post(f"/annotations/tasks/{task_id}/items/img002", json={"boxes": []}).status_code == 200
    flags = {
        i["image_id"]: i["has_annotation"] for i in http.get(f"/annotations/tasks/{task_id}/items").json()["items"]
    }
    assert flags == {"img000": False, "img001": True, "img002": True, "img003": False, "img004": False}

    exported = http.get(f"/annotations/tasks/{task_id}/export", params={"format": "yolo"}).json()
    assert exported["ok"] is True and exported["exported_count"] == 2
    labels_dir = Path(exported["labels_dir"])
    assert labels_dir.name == "labels" and labels_dir.parent.name == "v1"
    label_file = next(labels_dir.rglob("img001.txt"))
    lines = [line.split() for line in label_file.read_text().splitlines()]
    assert lines[0][0] == "2" and [float(v) for v in lines[0][1:]] == pytest.approx([0.3, 0.45, 0.5, 0.5])
    assert [float(v) for v in lines[1][1:]] == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert next(labels_dir.rglob("img002.txt")).read_text() == ""
    config = yaml.safe_load((labels_dir.parent / "data.yaml").read_text())
    assert config["names"] == {0: "person", 1: "car", 2: "dog"}

    # The annotated export now carries the new labels; a new task starts from them.
    files = unzip(http.get(f"/datasets/{dataset_id}/export/annotated").content)
    assert any(name.endswith("labels/" + label_file.parent.name + "/img001.txt") for name in files)
    assert _task(http, dataset_id)["annotated_count"] == 2


def test_paging_items(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=7))
    task_id = _task(http, dataset_id)["task_id"]
    page = http.get(f"/annotations/tasks/{task_id}/items", params={"page": 2, "page_size": 3}).json()
    assert page["total"] == 7 and len(page["items"]) == 3
    everything = http.get(f"/annotations/tasks/{task_id}/items").json()["items"]
    assert [i["image_id"] for i in page["items"]] == [i["image_id"] for i in everything[3:6]]


def test_bad_annotation_input(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=4, size=(64, 48)))
    task_id = _task(http, dataset_id)["task_id"]
    url = f"/annotations/tasks/{task_id}/items/img000"
    box = {"class_id": 0, "x1": 1.0, "y1": 1.0, "x2": 10.0, "y2": 10.0}
    assert_error(http.post(url, json={"boxes": [{**box, "x2": 65.0}]}), 400, "outside")
    assert_error(http.post(url, json={"boxes": [{**box, "y1": -1.0}]}), 400, "outside")
    assert_error(http.post(url, json={"boxes": [{**box, "class_id": 2}]}), 400, "class_id")
    assert_error(http.post(url, json={"boxes": [{**box, "x1": 20.0}]}), 400, "x1 must be less")
    assert_error(http.post(url, json={"boxes": "many"}), 400)
    assert_error(http.post(url, json={"boxes": [{**box, "class_id": "zero"}]}), 400)
    assert_error(http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(http.post(f"/annotations/tasks/{task_id}/items/nope", json={"boxes": []}), 404, "nope")
    assert_error(http.get("/annotations/tasks/task_20000101_000000/items"), 404, "task_20000101_000000")
    assert_error(http.get(f"/annotations/tasks/{task_id}/export", params={"format": "coco"}), 400, "coco")
    assert_error(http.post("/annotations/tasks", json={}), 400, "dataset_id")
    assert_error(http.post("/annotations/tasks", json={"dataset_id": "ds_20000101_000000"}), 404)
    assert_error(http.post("/annotations/tasks", json={"dataset_id": dataset_id, "version": "v7"}), 404, "v7")
    assert_error(http.post("/annotations/tasks", json={"dataset_id": dataset_id, "classes": ["a", "a"]}), 400)
    # Nothing was stored by the refused requests: the two boxes imported from the dataset's label remain.
    assert len(http.get(url).json()["boxes"]) == 2


def test_concurrent_writers_to_one_image(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=4, size=(100, 100)))
    task_id = _task(http, dataset_id)["task_id"]
    url = f"/annotations/tasks/{task_id}/items/img000"
    payloads = [
        [{"class_id": 0, "x1": float(i), "y1": 0.0, "x2": float(i + 10), "y2": 10.0}] * (i % 3 + 1) for i in range(24)
    ]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda boxes: http.post(url, json={"boxes": boxes}).status_code, payloads))
    assert statuses == [200] * len(payloads)
    assert http.get(url).json()["boxes"] in payloads  # one writer's whole payload, never a mix
