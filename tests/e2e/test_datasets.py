"""Dataset routes through the real Envoy: upload, prepare, list, get, update, delete, exports, images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.conftest import datasets_dir
from tests.e2e.api import DATASET_ID, ISO_TIME, assert_error, prepared, unzip, upload, uploaded

pytestmark = pytest.mark.e2e


def test_upload_answers_the_documented_fields(http: httpx.Client) -> None:
    data = datagen.dataset_zip(count=6)
    response = upload(http, data, "my dataset.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert DATASET_ID.match(body["dataset_id"])
    assert body["filename"] == "my dataset.zip"
    assert body["size"] == len(data) and isinstance(body["size"], int)
    assert ISO_TIME.match(body["created_at"])
    assert body["status"] == "uploaded"


def test_prepare_makes_a_yolo_version(http: httpx.Client, platform: PlatformInstance) -> None:
    dataset_id, body = prepared(http, datagen.dataset_zip(count=10))
    assert body["dataset_id"] == dataset_id
    assert body["version"] == "v1" and body["status"] == "prepared"
    assert body["classes"] == list(datagen.CLASSES)
    assert (body["train_count"], body["val_count"]) == (8, 2)
    data_yaml = Path(body["data_yaml"])
    assert data_yaml.is_absolute() and data_yaml == datasets_dir(platform) / dataset_id / "v1" / "data.yaml"
    config = yaml.safe_load(data_yaml.read_text())
    assert config["names"] == {0: "square", 1: "circle"} and config["nc"] == 2
    assert len(list((Path(config["path"]) / config["train"]).iterdir())) == 8
    assert len(list((Path(config["path"]) / "labels" / "val").iterdir())) == 2
    report = body["report"]
    assert report["images_found"] == report["images_accepted"] == 10
    assert report["rejected_images"] == [] and report["rejected_labels"] == []


@pytest.mark.parametrize(
    ("layout", "root", "names_file", "ext", "counts"),
    [
        ("flat", "", "classes.txt", "jpg", (8, 2)),
        ("presplit", "", "data.yaml", "png", (8, 2)),
        ("roboflow", "export", "data.yaml", "jpeg", (8, 2)),
        ("flat", "outer/inner", "classes.txt", "bmp", (8, 2)),
        ("side_by_side", "", "classes.txt", "webp", (8, 2)),
    ],
)
def test_prepare_reads_the_layouts_people_zip(  # noqa: PLR0917 - one argument per parameter column
    http: httpx.Client, layout: str, root: str, names_file: str, ext: str, counts: tuple[int, int]
) -> None:
    data = datagen.dataset_zip(count=10, layout=layout, root=root, names_file=names_file, ext=ext)
    _, body = prepared(http, data)
    assert body["classes"] == list(datagen.CLASSES)
    assert (body["train_count"], body["val_count"]) == counts
    assert body["report"]["label_lines_accepted"] == 20
    assert body["report"]["rejected_labels"] == []


def test_prepare_keeps_a_pre_split_zip_split(http: httpx.Client) -> None:
    members = datagen.dataset_members(count=10, layout="presplit", names_file="data.yaml")
    _, body = prepared(http, datagen.zip_bytes(members))
    assert "pre-split" in body["report"]["layout"]
    val_images = sorted(name.split("/")[-1] for name in members if name.startswith("images/val/"))
    dataset_id = body["dataset_id"]
    detail = http.get(f"/datasets/{dataset_id}").json()
    assert detail["version_info"][0]["val_count"] == len(val_images)


def test_prepare_again_adds_a_version_and_keeps_the_old_one(http: httpx.Client, platform: PlatformInstance) -> None:
    dataset_id, first = prepared(http, datagen.dataset_zip(count=10))
    v1_yaml = Path(first["data_yaml"]).read_text()
    response = http.post(
        f"/datasets/{dataset_id}/prepare", json={"split_ratio": {"train": 0.6, "val": 0.4}, "classes": ["a", "b"]}
    )
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["version"] == "v2" and second["classes"] == ["a", "b"]
    assert (second["train_count"], second["val_count"]) == (6, 4)
    assert Path(first["data_yaml"]).read_text() == v1_yaml
    detail = http.get(f"/datasets/{dataset_id}").json()
    assert detail["versions"] == ["v1", "v2"] and detail["status"] == "prepared"


def test_prepare_derives_class_names_when_none_are_given(http: httpx.Client) -> None:
    _, body = prepared(http, datagen.dataset_zip(count=6, names_file=""))
    assert body["classes"] == ["class0", "class1"]
    assert any("class0" in warning for warning in body["report"]["warnings"])


def test_prepare_reports_bad_label_lines_and_images(http: httpx.Client) -> None:
    members = datagen.dataset_members(count=6)
    members["labels/img000.txt"] = (
        b"0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n0 0.5 0.5\n0 1.5 0.5 0.1 0.1\nx 0.1 0.1 0.1 0.1\n"
    )
    members["images/broken.jpg"] = datagen.truncated_jpeg()
    members["images/bomb.png"] = datagen.decompression_bomb_png()
    members["images/empty.jpg"] = b""
    members["labels/ghost.txt"] = b"0 0.5 0.5 0.1 0.1\n"
    _, body = prepared(http, datagen.zip_bytes(members))
    report = body["report"]
    rejected_lines = {(r["file"], r["line"]): r["reason"] for r in report["rejected_labels"]}
    assert set(rejected_lines) == {
        ("labels/img000.txt", 2),
        ("labels/img000.txt", 3),
        ("labels/img000.txt", 4),
        ("labels/img000.txt", 5),
        ("labels/ghost.txt", 0),
    }
    assert "out of range" in rejected_lines[("labels/img000.txt", 2)]
    assert "5 values" in rejected_lines[("labels/img000.txt", 3)]
    assert "normalised" in rejected_lines[("labels/img000.txt", 4)]
    rejected_images = {r["file"]: r["reason"] for r in report["rejected_images"]}
    assert set(rejected_images) == {"images/broken.jpg", "images/bomb.png", "images/empty.jpg", "images/img000.jpg"}
    assert "pixel limit" in rejected_images["images/bomb.png"]
    # An image with a bad label line is left out whole: its other boxes would be wrong as they are.
    assert "labels/img000.txt line 2" in rejected_images["images/img000.jpg"], rejected_images
    assert "3 more" in rejected_images["images/img000.jpg"]
    assert report["images_found"] == 9 and report["images_accepted"] == 5
    assert body["train_count"] + body["val_count"] == 5
    exported = unzip(http.get(f"/datasets/{body['dataset_id']}/export/annotated").content)
    kept = {PurePosixPath(name).stem for name in exported if name.endswith((".jpg", ".txt")) and "/" in name}
    assert kept == {f"img{n:03d}" for n in range(1, 6)}, sorted(exported)


def test_list_get_update_delete(http: httpx.Client, platform: PlatformInstance) -> None:
    dataset_id = uploaded(http, datagen.dataset_zip(count=4))
    listed = http.get("/datasets").json()
    entry = next(d for d in listed["datasets"] if d["dataset_id"] == dataset_id)
    assert set(entry) >= {"dataset_id", "filename", "size", "status", "created_at", "versions"}
    assert entry["versions"] == [] and entry["status"] == "uploaded"

    first_page = http.get("/datasets", params={"page": 1, "page_size": 1}).json()
    assert len(first_page["datasets"]) == 1 and first_page["total"] == listed["total"] >= 1

    response = http.put(
        f"/datasets/{dataset_id}", json={"description": "这是一个目标检测数据集", "tags": ["person", "car"]}
    )
    assert response.status_code == 200
    assert response.json()["description"] == "这是一个目标检测数据集"
    # Each field is optional: an update of one keeps the other.
    assert (
        http.put(f"/datasets/{dataset_id}", json={"tags": ["detection"]}).json()["description"]
        == "这是一个目标检测数据集"
    )
    detail = http.put(f"/datasets/{dataset_id}", json={"description": "new"}).json()
    assert detail["tags"] == ["detection"] and detail["description"] == "new"

    response = http.delete(f"/datasets/{dataset_id}")
    assert response.json() == {"ok": True, "message": "Dataset deleted successfully"}
    assert_error(http.get(f"/datasets/{dataset_id}"), 404, dataset_id)
    assert not (datasets_dir(platform) / dataset_id).exists()
    assert_error(http.delete(f"/datasets/{dataset_id}"), 404)


def test_exports_are_zips_with_the_documented_layout(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=10))
    response = http.get(f"/datasets/{dataset_id}/export/annotated")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    files = unzip(response.content)
    assert sum(name.startswith("images/train/") for name in files) == 8
    assert sum(name.startswith("images/val/") for name in files) == 2
    assert sum(name.startswith("labels/") for name in files) == 10
    config = yaml.safe_load(files["data.yaml"])
    assert config["names"] == {0: "square", 1: "circle"} and "path" not in config

    original = unzip(http.get(f"/datasets/{dataset_id}/export/original", params={"version": "v1"}).content)
    assert not any(name.startswith("labels/") for name in original)
    assert sum(name.startswith("images/") for name in original) == 10 and "data.yaml" in original
    assert_error(http.get(f"/datasets/{dataset_id}/export/annotated", params={"version": "v9"}), 404, "v9")


def test_image_path_is_served_by_the_static_route(http: httpx.Client) -> None:
    members = datagen.dataset_members(count=4)
    dataset_id, _ = prepared(http, datagen.zip_bytes(members))
    task = http.post("/annotations/tasks", json={"dataset_id": dataset_id}).json()
    item = http.get(f"/annotations/tasks/{task['task_id']}/items").json()["items"][0]
    response = http.get(f"/static/{item['image_path']}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == members[f"images/{item['image_id']}.jpg"]
    assert_error(http.get(f"/static/datasets/{dataset_id}/v1/data.yaml"), 404)
    assert_error(http.get(f"/static/datasets/{dataset_id}/v1/images/train/..%2F..%2Fupload.zip"), 404)


@pytest.mark.slow
def test_data_yaml_trains_with_ultralytics_as_is(http: httpx.Client, tmp_path: Path) -> None:
    """The prepared data.yaml, unchanged, drives a real (1-epoch, tiny) Ultralytics training run."""
    _, body = prepared(http, datagen.dataset_zip(count=12, size=(64, 64)))
    config_dir = tmp_path / "ultralytics"
    (config_dir / "Ultralytics").mkdir(parents=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    shutil.copy(font, config_dir / "Ultralytics" / "Arial.ttf")  # offline: Ultralytics wants this font
    script = (
        "from ultralytics import YOLO\n"
        f"r = YOLO('yolov8n.yaml').train(data={body['data_yaml']!r}, epochs=1, imgsz=64, batch=4, workers=0,"
        f" device='cpu', plots=False, project={str(tmp_path)!r}, name='run', exist_ok=True, verbose=False)\n"
        "print('MAP50', r.box.map50)\n"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config_dir)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAP50" in result.stdout
    assert (tmp_path / "run" / "weights" / "last.pt").exists()
