"""ONNX export in a child process: a real export of a tiny trained YOLOv8n, run in onnxruntime, and the
Triton model written from it (config.pbtxt rendered from the file's real tensors; tests/unit/test_triton_*
cover the repository and the server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from services.common.triton.repository import write_triton_model
from services.common.triton.settings import TritonSettings
from services.training.domain.onnx_export import ExportError, export_onnx
from tests.unit.test_triton_repository import parsed, pbtxt_field
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
@pytest.mark.parametrize("model_format", ["onnxruntime_onnx", "python"])
def test_triton_model_from_the_export(
    exported: Path, trained_run: TrainedRun, tmp_path: Path, model_format: str
) -> None:
    triton = TritonSettings(data_root=tmp_path, model_format=model_format)
    model_dir = write_triton_model(
        triton.repository, "model_20240115_123456", exported, trained_run.classes, IMGSZ, settings=triton
    )
    assert model_dir == triton.repository / "model_20240115_123456"
    assert (model_dir / "1" / "model.py").exists() == (model_format == "python")
    assert (model_dir / "labels.txt").read_text() == "square\ncircle\n"
    config = (model_dir / "config.pbtxt").read_text()
    assert pbtxt_field(config, "name") == ['"model_20240115_123456"', '"images"', '"output0"']
    assert pbtxt_field(config, "max_batch_size") == ["4"]
    assert pbtxt_field(config, "data_type") == ["TYPE_FP32", "TYPE_FP32"]
    # Variable image sides: clients letterbox to the smallest rectangle (the export is dynamic).
    assert pbtxt_field(config, "dims") == ["[ 3, -1, -1 ]", f"[ {4 + len(trained_run.classes)}, -1 ]"]
    model = parsed(config)
    assert (model.backend or model.platform) == model_format
    assert model.HasField("dynamic_batching")
    assert run_onnx(model_dir / "1" / "model.onnx", 2).shape == (2, 6, ANCHORS)


@pytest.mark.slow
def test_export_failure_has_a_reason_and_the_output_for_the_log(tmp_path: Path, yolo_env: dict[str, str]) -> None:
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="ONNX export failed: ") as caught:
        export_onnx(weights, tmp_path / "out" / "model.onnx", IMGSZ, yolo_env)
    # The reason is the error the child died of, fit for users (the model's export_error); the traceback and the
    # paths it names are for the service log.
    reason = str(caught.value)
    assert "Error: " in reason and "\n" not in reason and "Traceback" not in reason, reason
    assert str(tmp_path) not in reason and ".staging" not in reason, reason
    assert "Traceback" in caught.value.output and str(tmp_path) in caught.value.output
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
