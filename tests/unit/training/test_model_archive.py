"""Model ZIPs: both upload layouts, the choice of checkpoint, refusals, and the export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.archives import ZipLimits, stream_zip
from services.common.errors import InvalidArgument, NotFound
from services.training.domain.model_archive import UploadedModel, model_zip_members, read_model_zip
from synthetic.datagen import zip_bytes, zip_with_unsafe_entry

LIMITS = ZipLimits()
WEIGHTS = b"PK\x03\x04 not really a checkpoint: read_model_zip does not load it"
METADATA = {"model_id": "model_20240115_123456", "name": "Shapes", "classes": ["square", "circle"], "imgsz": 640}


def upload(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "upload.zip"
    path.write_bytes(zip_bytes(members))
    return path


def read(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, UploadedModel]:
    destination = tmp_path / "staging"
    return destination, read_model_zip(upload(tmp_path, members), destination, LIMITS)


def test_format_1_folder_with_model_json(tmp_path: Path) -> None:
    destination, model = read(
        tmp_path,
        {
            "model_20240115_123456/model.json": json.dumps(METADATA).encode(),
            "model_20240115_123456/weights/best.pt": WEIGHTS,
            "model_20240115_123456/weights/last.pt": b"last",
        },
    )
    assert model.weights == destination / "weights" / "best.pt"
    assert model.weights.read_bytes() == WEIGHTS
    assert model.metadata == METADATA
    assert model.original_model_id == "model_20240115_123456"


def test_format_2_root_without_model_json(tmp_path: Path) -> None:
    _, model = read(tmp_path, {"weights/best.pt": WEIGHTS})
    assert model.weights.read_bytes() == WEIGHTS
    assert model.metadata is None
    assert model.original_model_id is None


def test_format_1_without_model_json_keeps_the_folder_name(tmp_path: Path) -> None:
    _, model = read(tmp_path, {"model_20240101_000000/weights/best.pt": WEIGHTS})
    assert model.metadata is None
    assert model.original_model_id == "model_20240101_000000"


def test_model_json_id_wins_over_the_folder_name(tmp_path: Path) -> None:
    _, model = read(tmp_path, {"renamed/model.json": json.dumps(METADATA).encode(), "renamed/weights/best.pt": WEIGHTS})
    assert model.original_model_id == "model_20240115_123456"


def test_without_best_pt_the_first_pt_is_used(tmp_path: Path) -> None:
    _, model = read(tmp_path, {"weights/last.pt": b"last", "weights/epoch10.PT": WEIGHTS, "weights/notes.txt": b"x"})
    assert model.weights.read_bytes() == WEIGHTS  # "epoch10.PT" sorts before "last.pt"
    assert model.weights.name == "best.pt"


def test_archiver_clutter_is_ignored(tmp_path: Path) -> None:
    _, model = read(
        tmp_path,
        {"__MACOSX/weights/._best.pt": b"resource fork", "weights/best.pt": WEIGHTS, "weights/.DS_Store": b"x"},
    )
    assert model.weights.read_bytes() == WEIGHTS


@pytest.mark.parametrize(
    "members",
    [
        {"model.json": b"{}"},  # no weights at all
        {"best.pt": WEIGHTS},  # a .pt, but not in weights/
        {"weights/best.onnx": b"onnx"},  # weights/, but no .pt
        {"a/b/weights/best.pt": WEIGHTS},  # nested too deep to be either format
    ],
)
def test_no_pt_in_weights_is_refused(tmp_path: Path, members: dict[str, bytes]) -> None:
    with pytest.raises(InvalidArgument, match=r"weights/ directory with at least one \.pt file"):
        read(tmp_path, members)


def test_two_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="more than one model"):
        read(tmp_path, {"a/weights/best.pt": WEIGHTS, "b/weights/best.pt": WEIGHTS})


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe{}", "not UTF-8")],
)
def test_bad_model_json_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        read(tmp_path, {"model.json": content, "weights/best.pt": WEIGHTS})


def test_model_json_with_bom_and_chinese_text(tmp_path: Path) -> None:
    metadata = {"name": "形状检测", "description": "方形和圆形"}
    _, model = read(
        tmp_path,
        {"model.json": b"\xef\xbb\xbf" + json.dumps(metadata, ensure_ascii=False).encode(), "weights/best.pt": WEIGHTS},
    )
    assert model.metadata == metadata


def test_zip_slip_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(zip_with_unsafe_entry("../../weights/best.pt"))
    with pytest.raises(InvalidArgument, match="Unsafe path"):
        read_model_zip(path, tmp_path / "staging", LIMITS)
    assert not (tmp_path / "staging").exists()


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(zip_bytes({"weights/best.pt": b"\0" * (4 * 1024 * 1024)}))
    with pytest.raises(InvalidArgument, match="zip bomb"):
        read_model_zip(path, tmp_path / "staging", ZipLimits(ratio_min_bytes=1024 * 1024, max_ratio=100))


@pytest.mark.parametrize("content", [b"", b"this is not a zip file"])
def test_not_a_zip_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(InvalidArgument):
        read_model_zip(path, tmp_path / "staging", LIMITS)


def test_round_trip_through_model_zip_members_and_stream_zip(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "model_20240115_123456"
    (model_dir / "weights").mkdir(parents=True)
    (model_dir / "weights" / "best.pt").write_bytes(WEIGHTS)
    metadata = {**METADATA, "description": "中文描述"}
    members = model_zip_members(model_dir, "model_20240115_123456", metadata)
    assert [name for name, _ in members] == [
        "model_20240115_123456/weights/best.pt",
        "model_20240115_123456/model.json",
    ]
    document = members[1][1]
    assert isinstance(document, bytes) and "中文描述".encode() in document and b'\n  "name"' in document
    archive = tmp_path / "export.zip"
    archive.write_bytes(b"".join(stream_zip(members, chunk_bytes=1024)))
    model = read_model_zip(archive, tmp_path / "staging", LIMITS)
    assert model.weights.read_bytes() == WEIGHTS
    assert model.metadata == metadata
    assert model.original_model_id == "model_20240115_123456"


def test_members_of_a_model_without_weights(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        model_zip_members(tmp_path / "gone", "model_x", {})
