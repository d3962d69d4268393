"""ONNX export in a child process and the Triton model-repository entry: a real export of a tiny trained
YOLOv8n, run in onnxruntime; config.pbtxt rendered from the ONNX file's real tensors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from services.common.errors import InvalidArgument
from services.training.domain.onnx_export import (
    ExportError,
    OnnxSignature,
    TensorSpec,
    export_onnx,
    read_onnx_signature,
    render_triton_config,
    write_triton_model,
)
from tests.unit.training.conftest import TrainedRun

IMGSZ = 64
ANCHORS = sum((IMGSZ // stride) ** 2 for stride in (8, 16, 32))  # 84 at 64 px


@pytest.fixture(scope="module")
def exported(trained_run: TrainedRun, yolo_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("export") / "models" / "m1" / "model.onnx"
    assert export_onnx(trained_run.weights, output, IMGSZ, yolo_env) == output
    return output


def run_onnx(path: Path, batch: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [tensor.name for tensor in session.get_inputs()]
    return session.run(None, {name: np.random.default_rng(0).random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)})[0]


def pbtxt_field(config: str, field: str) -> list[str]:
    return re.findall(rf"^\s*{field}: (.+)$", config, flags=re.MULTILINE)


@pytest.mark.slow
def test_export_runs_in_onnxruntime_with_a_dynamic_batch(exported: Path, trained_run: TrainedRun) -> None:
    assert exported.is_file()
    assert [path.name for path in exported.parent.iterdir()] == ["model.onnx"], "the work directory is removed"
    classes = len(trained_run.classes)
    assert run_onnx(exported, 1).shape == (1, 4 + classes, ANCHORS)
    assert run_onnx(exported, 3).shape == (3, 4 + classes, ANCHORS)
    model = onnx.load(str(exported))
    assert [tensor.name for tensor in model.graph.input] == ["images"]
    assert [tensor.name for tensor in model.graph.output] == ["output0"]


@pytest.mark.slow
def test_triton_model_from_the_export(exported: Path, trained_run: TrainedRun, tmp_path: Path) -> None:
    repository = tmp_path / "triton" / "repository"
    model_dir = write_triton_model(repository, "model_20240115_123456", exported, trained_run.classes, IMGSZ)
    assert model_dir == repository / "model_20240115_123456"
    assert sorted(path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert (model_dir / "labels.txt").read_text() == "square\ncircle\n"
    config = (model_dir / "config.pbtxt").read_text()
    assert pbtxt_field(config, "name") == ['"model_20240115_123456"', '"images"', '"output0"']
    assert pbtxt_field(config, "platform") == ['"onnxruntime_onnx"']
    assert pbtxt_field(config, "max_batch_size") == ["8"]
    assert pbtxt_field(config, "data_type") == ["TYPE_FP32", "TYPE_FP32"]
    assert pbtxt_field(config, "dims") == [f"[ 3, {IMGSZ}, {IMGSZ} ]", f"[ {4 + len(trained_run.classes)}, -1 ]"]
    assert "dynamic_batching { }" in config and "kind: KIND_CPU" in config
    assert run_onnx(model_dir / "1" / "model.onnx", 2).shape == (2, 6, ANCHORS)
    # Nothing but models in the repository (Triton loads every subdirectory), no leftovers beside it.
    assert [path.name for path in repository.iterdir()] == ["model_20240115_123456"]
    assert [path.name for path in repository.parent.iterdir()] == ["repository"]


@pytest.mark.slow
def test_triton_model_is_replaced_whole(exported: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_triton_model(repository, "m", exported, ["a", "b"], IMGSZ)
    (repository / "m" / "stale.txt").write_text("from the previous export")
    write_triton_model(repository, "m", exported, ["x", "y"], IMGSZ)
    assert (repository / "m" / "labels.txt").read_text() == "x\ny\n"
    assert not (repository / "m" / "stale.txt").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["repository"]


@pytest.mark.slow
def test_export_failure_reports_the_exporter_output(tmp_path: Path, yolo_env: dict[str, str]) -> None:
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="ONNX export failed") as caught:
        export_onnx(weights, tmp_path / "out" / "model.onnx", IMGSZ, yolo_env)
    assert "Error" in str(caught.value).split("\n", 1)[1]  # the tail of the child's traceback
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not list((tmp_path / "out").iterdir())


def test_export_timeout_kills_the_child(tmp_path: Path, yolo_env: dict[str, str]) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ExportError, match=r"timed out after 0\.01 s"):
        export_onnx(weights, tmp_path / "model.onnx", IMGSZ, yolo_env, timeout=0.01)


def test_export_without_weights(tmp_path: Path, yolo_env: dict[str, str]) -> None:
    with pytest.raises(ExportError, match="No weights"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "model.onnx", IMGSZ, yolo_env)


def fixed_onnx(path: Path, input_dims: list[int | str], output_dims: list[int | str]) -> Path:
    """A one-node ONNX model with the given tensor shapes (strings are dynamic dimensions)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output_dims)],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_signature_of_a_fixed_batch_model(tmp_path: Path) -> None:
    signature = read_onnx_signature(fixed_onnx(tmp_path / "m.onnx", [1, 3, 64, 64], [1, 6, 84]), 64)
    assert signature == OnnxSignature(
        inputs=(TensorSpec("images", "TYPE_FP32", (1, 3, 64, 64)),),
        outputs=(TensorSpec("output0", "TYPE_FP32", (1, 6, 84)),),
        batched=False,
    )
    config = render_triton_config("m", signature)
    assert pbtxt_field(config, "max_batch_size") == ["0"]
    assert pbtxt_field(config, "dims") == ["[ 1, 3, 64, 64 ]", "[ 1, 6, 84 ]"]
    assert "dynamic_batching" not in config  # Triton refuses it with max_batch_size 0


def test_signature_pins_dynamic_image_sides_and_keeps_dynamic_anchors(tmp_path: Path) -> None:
    path = fixed_onnx(tmp_path / "m.onnx", ["batch", 3, "height", "width"], ["batch", 6, "anchors"])
    signature = read_onnx_signature(path, 320)
    assert signature.batched
    assert signature.inputs == (TensorSpec("images", "TYPE_FP32", (3, 320, 320)),)
    assert signature.outputs == (TensorSpec("output0", "TYPE_FP32", (6, -1)),)


def test_signature_refuses_an_image_size_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not imgsz 640"):
        read_onnx_signature(fixed_onnx(tmp_path / "m.onnx", ["batch", 3, 320, 320], ["batch", 6, "anchors"]), 640)


@pytest.mark.parametrize(("name", "classes"), [("../evil", ["a"]), ("", ["a"]), ("m", ["a\nb"])])
def test_write_triton_model_refuses_bad_names(tmp_path: Path, name: str, classes: list[str]) -> None:
    path = fixed_onnx(tmp_path / "m.onnx", ["batch", 3, 64, 64], ["batch", 6, "anchors"])
    with pytest.raises(InvalidArgument):
        write_triton_model(tmp_path / "repository", name, path, classes, 64)
    assert not (tmp_path / "repository").exists() or not list((tmp_path / "repository").iterdir())
