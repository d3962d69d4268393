"""Export sessions, kept uploads and the servable-model check: what the inference service writes and refuses."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import Conflict, NotFound
from services.inference.domain.detection import Detection
from services.inference.domain.models import ServableModel
from services.inference.domain.sessions import (
    CSV_COLUMNS,
    SessionImage,
    check_session_id,
    csv_cell,
    new_session_id,
    session_archive,
    write_annotated_image,
    write_session_files,
)
from services.inference.domain.uploads import UploadStore, image_suffix
from synthetic import datagen

MOMENT = datetime(2024, 1, 15, 12, 34, 56)


def _images() -> list[SessionImage]:
    hit = Detection(0, "square", 0.91234, 10.0, 20.0, 110.5, 220.25)
    other = Detection(1, "circle", 0.5, 1.0, 2.0, 3.0, 4.0)
    return [
        SessionImage("uuid-a", "a.jpg", "model_1", 640, 480, [hit, other]),
        SessionImage("uuid-b", "b,with comma.png", "model_1", 32, 16, []),
    ]


def test_session_ids_are_documented_and_only_well_formed_ones_reach_the_disk() -> None:
    session_id = new_session_id(MOMENT)
    assert session_id.startswith("session_20240115_123456_") and len(session_id) == len("session_20240115_123456_") + 8
    assert check_session_id(session_id) == session_id
    for bad in ("../etc", "session_20240115_123456_zzzzzzzz", "", f"{session_id}/..", "session_x"):
        with pytest.raises(NotFound):
            check_session_id(bad)


def test_results_csv_has_one_row_per_detection_and_a_row_for_an_image_without_any(tmp_path: Path) -> None:
    write_session_files(
        tmp_path, "session_x", model_id="model_1", created_at=MOMENT, images=_images(), settings={"conf": 0.25}
    )
    rows = list(csv.reader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == ["uuid-a", "a.jpg", "model_1", "640", "480", "2", "0", "0", "square", "0.9123", "10.00", "20.00",
                       "110.50", "220.25"]  # fmt: skip
    assert rows[2][6:10] == ["1", "1", "circle", "0.5000"]
    assert rows[3] == ["uuid-b", "b,with comma.png", "model_1", "32", "16", "0", "", "", "", "", "", "", "", ""]
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert (metadata["session_id"], metadata["image_count"], metadata["detection_count"]) == ("session_x", 2, 2)
    assert metadata["created_at"] == "2024-01-15T12:34:56" and metadata["settings"] == {"conf": 0.25}
    assert [image["annotated_image"] for image in metadata["images"]] == ["images/uuid-a.jpg", "images/uuid-b.jpg"]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1.jpg", "'=1+1.jpg"),
        ("@SUM(1+1).jpg", "'@SUM(1+1).jpg"),
        ("+cmd|' /C calc'!A0.png", "'+cmd|' /C calc'!A0.png"),
        ("-2+3.jpg", "'-2+3.jpg"),
        ("\t=1.jpg", "'\t=1.jpg"),
        ("\r=1.jpg", "'\r=1.jpg"),
        ("a=1.jpg", "a=1.jpg"),
        ("", ""),
        # Numbers stay numbers: a spreadsheet evaluates nothing in them.
        ("-0.50", "-0.50"),
        ("+3", "+3"),
        ("12.00", "12.00"),
        (7, "7"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_evaluate_are_quoted(value: object, written: str) -> None:
    assert csv_cell(value) == written


def test_results_csv_neutralises_every_cell_it_writes(tmp_path: Path) -> None:
    hostile = Detection(0, '=HYPERLINK("http://x")', 0.5, 1.0, 2.0, 3.0, 4.0)
    images = [
        SessionImage("uuid-a", "=1+1.jpg", "model_1", 8, 8, [hostile]),
        SessionImage("uuid-b", "@SUM(1+1).jpg", "-model", 8, 8, []),
    ]
    write_session_files(tmp_path, "session_x", model_id="model_1", created_at=MOMENT, images=images, settings={})
    rows = list(csv.reader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [row[1] for row in rows[1:]] == ["'=1+1.jpg", "'@SUM(1+1).jpg"]
    assert rows[1][8] == '\'=HYPERLINK("http://x")' and rows[2][2] == "'-model"
    assert all(cell[:1] not in ("=", "+", "-", "@", "\t", "\r") for row in rows for cell in row), rows
    # metadata.json is JSON, which no spreadsheet evaluates: the names stay as uploaded.
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert [image["image_filename"] for image in metadata["images"]] == ["=1+1.jpg", "@SUM(1+1).jpg"]


def test_the_session_archive_holds_the_images_the_csv_and_the_metadata(tmp_path: Path) -> None:
    for image in _images():
        write_annotated_image(
            tmp_path, image.image_uuid, np.zeros((image.image_height, image.image_width, 3), np.uint8)
        )
    write_session_files(tmp_path, "session_x", model_id="model_1", created_at=MOMENT, images=_images(), settings={})
    download = session_archive(tmp_path, "session_x")
    assert (download.filename, download.content_type) == ("session_x.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(b"".join(download.chunks))) as archive:
        assert sorted(archive.namelist()) == ["images/uuid-a.jpg", "images/uuid-b.jpg", "metadata.json", "results.csv"]
        assert archive.read("images/uuid-a.jpg")[:3] == b"\xff\xd8\xff"
    with pytest.raises(NotFound):
        session_archive(tmp_path / "missing", "session_y")


def test_kept_uploads_are_named_by_their_real_format_and_served_back(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads", max_total_bytes=0)
    staged = tmp_path / "upload.bin"
    png = datagen.draw_image(8, 8, [], "png")
    staged.write_bytes(png)
    stem = store.batch_prefix(MOMENT)
    image_path = store.keep(staged, f"{stem}_2")
    assert image_path == f"uploads/{stem}_2.png" and not staged.exists()
    download = store.open(image_path.removeprefix("uploads/"))
    assert download.content_type == "image/png" and b"".join(download.chunks) == png
    for bad in ("../x.png", "infer_20240115_123456_abcdef.png", "x.png", "", "infer_2024.png"):
        with pytest.raises(NotFound):
            store.open(bad)


def test_image_suffixes_come_from_the_content_not_the_name() -> None:
    assert image_suffix(datagen.draw_image(4, 4, [], "jpg")[:16]) == ".jpg"
    assert image_suffix(datagen.draw_image(4, 4, [], "webp")[:16]) == ".webp"
    assert image_suffix(datagen.draw_image(4, 4, [], "bmp")[:16]) == ".bmp"
    assert image_suffix(b"plain text here!") == ".img"


def _aged(path: Path, hours: float, size: int = 1) -> Path:
    path.write_bytes(b"x" * size)
    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment))
    return path


def _staged(tmp_path: Path, size: int) -> Path:
    """A received upload of `size` bytes (a PNG header, then padding) in a staging file of its own."""
    staged = tmp_path / f"staged-{time.monotonic_ns()}.bin"
    staged.write_bytes(datagen.draw_image(2, 2, [], "png").ljust(size, b"\0"))
    return staged


def test_the_retention_sweep_removes_only_old_uploads(tmp_path: Path) -> None:
    old, new = _aged(tmp_path / "old.jpg", 48), _aged(tmp_path / "new.jpg", 0)
    store = UploadStore(tmp_path, max_total_bytes=0)
    assert store.sweep(0) == 0 and old.exists()
    assert store.sweep(24) == 1
    assert not old.exists() and new.exists()


def test_kept_uploads_beyond_the_byte_cap_go_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    store = UploadStore(root, max_total_bytes=1000)
    paths = [store.keep(_staged(tmp_path, 300), f"infer_20240115_12345{n}_abcdef") for n in range(5)]
    assert sorted(p.name for p in root.iterdir()) == sorted(p.removeprefix("uploads/") for p in paths[2:])
    assert store.total_bytes == 900 == sum(p.stat().st_size for p in root.iterdir())


def test_the_upload_just_kept_stays_even_when_it_alone_is_over_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    store = UploadStore(root, max_total_bytes=1000)
    store.keep(_staged(tmp_path, 300), "infer_20240115_123450_abcdef")
    big = store.keep(_staged(tmp_path, 1500), "infer_20240115_123451_abcdef")
    # Its image_path is in the answer: it is served until the next upload makes room.
    assert [p.name for p in root.iterdir()] == [big.removeprefix("uploads/")]
    store.keep(_staged(tmp_path, 300), "infer_20240115_123452_abcdef")
    assert [p.name for p in root.iterdir()] == ["infer_20240115_123452_abcdef.png"]
    assert store.total_bytes == 300


def test_uploads_kept_before_a_restart_count_towards_the_cap_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    _aged(root / "infer_20240115_100000_aaaaaa.png", 3, 400)
    _aged(root / "infer_20240115_110000_bbbbbb.png", 2, 400)
    _aged(root / "infer_20240115_090000_cccccc.png", 1, 400)  # younger than its name says
    store = UploadStore(root, max_total_bytes=1000)
    assert store.total_bytes == 1200  # read once, when the store is made
    store.keep(_staged(tmp_path, 100), "infer_20240115_120000_dddddd")
    assert sorted(p.name for p in root.iterdir()) == [
        "infer_20240115_090000_cccccc.png",
        "infer_20240115_110000_bbbbbb.png",
        "infer_20240115_120000_dddddd.png",
    ]
    assert store.total_bytes == 900


def test_the_sweep_removes_old_uploads_and_makes_room_under_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    old = _aged(root / "infer_20240113_000000_aaaaaa.png", 48, 600)
    store = UploadStore(root, max_total_bytes=1000)
    assert store.total_bytes == 600
    assert store.sweep(24) == 1 and not old.exists()
    assert store.total_bytes == 0
    store.keep(_staged(tmp_path, 900), "infer_20240115_120000_dddddd")
    assert store.total_bytes == 900 and len(list(root.iterdir())) == 1


def test_the_sweep_enforces_the_cap_on_files_the_store_did_not_keep(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    store = UploadStore(root, max_total_bytes=1000)
    kept = store.keep(_staged(tmp_path, 400), "infer_20240115_120000_aaaaaa")
    # Between sweeps the store counts only what it kept (no directory scan per upload); the sweep reads the
    # directory again and applies both limits.
    _aged(root / "infer_20240115_130000_bbbbbb.png", 0, 700)
    assert store.total_bytes == 400
    assert store.sweep(24) == 1
    assert [p.name for p in root.iterdir()] == ["infer_20240115_130000_bbbbbb.png"]
    assert not (root / kept.removeprefix("uploads/")).exists() and store.total_bytes == 700


def test_concurrent_keeps_never_leave_more_than_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    store = UploadStore(root, max_total_bytes=2000)
    staged = [_staged(tmp_path, 250) for _ in range(64)]
    threads = [
        threading.Thread(target=store.keep, args=(path, f"infer_20240115_120000_{n:06x}"))
        for n, path in enumerate(staged)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.total_bytes == sum(p.stat().st_size for p in root.iterdir()) == 2000


def test_no_cap_keeps_everything(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "uploads", max_total_bytes=0)
    for n in range(3):
        store.keep(_staged(tmp_path, 5000), f"infer_20240115_12000{n}_abcdef")
    assert len(list((tmp_path / "uploads").iterdir())) == 3


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [("failed", "onnx export crashed", "export failed: onnx export crashed"), ("pending", "", "still being exported")],
)
def test_a_model_that_is_not_exported_cannot_be_served(status: str, error: str, message: str) -> None:
    with pytest.raises(Conflict, match=message):
        ServableModel("model_1", ("a",), 640, status, error).require_ready()
    ServableModel("model_1", ("a",), 640, "ready", "").require_ready()
