"""The Triton model repository: signatures read from ONNX files, config.pbtxt in both forms (parsed as
Triton's own ModelConfig), the model directory of each form, atomic replacement, refused names."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from services.common.errors import InvalidArgument
from services.common.triton.repository import (
    ONNX_BACKEND_MODEL,
    OnnxSignature,
    TensorSpec,
    read_onnx_signature,
    render_triton_config,
    write_triton_model,
)
from services.common.triton.settings import TritonSettings

IMGSZ = 64


def pbtxt_field(config: str, field: str) -> list[str]:
    return re.findall(rf"^\s*{field}: (.+)$", config, flags=re.MULTILINE)


def parsed(config: str) -> model_config_pb2.ModelConfig:
    """config.pbtxt as Triton reads it: unknown fields or bad syntax raise."""
    return text_format.Parse(config, model_config_pb2.ModelConfig())


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


def detector_onnx(path: Path) -> Path:
    """The shape of an Ultralytics detection export: dynamic batch, image sides and anchors."""
    return fixed_onnx(path, ["batch", 3, "height", "width"], ["batch", 6, "anchors"])


def settings(tmp_path: Path, model_format: str, **overrides: object) -> TritonSettings:
    return TritonSettings(data_root=tmp_path / "data", model_format=model_format, **overrides)


BATCHED = OnnxSignature(
    inputs=(TensorSpec("images", "TYPE_FP32", (3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec("output0", "TYPE_FP32", (6, -1)),),
    batched=True,
)


def test_native_onnxruntime_config(tmp_path: Path) -> None:
    config = render_triton_config(
        "m1",
        BATCHED,
        settings(
            tmp_path,
            "onnxruntime_onnx",
            instance_count=3,
            threads_per_instance=2,
            max_batch_size=4,
            max_queue_delay_microseconds=500,
        ),
    )
    model = parsed(config)
    assert model.name == "m1"
    assert model.platform == "onnxruntime_onnx"
    assert not model.backend
    assert model.max_batch_size == 4
    assert [(tensor.name, list(tensor.dims)) for tensor in model.input] == [("images", [3, IMGSZ, IMGSZ])]
    assert [(tensor.name, list(tensor.dims)) for tensor in model.output] == [("output0", [6, -1])]
    assert model.input[0].data_type == model_config_pb2.TYPE_FP32
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(group.count, group.kind) for group in model.instance_group] == [
        (3, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    # The parameters Triton's ONNX Runtime backend reads.
    threads = {key: value.string_value for key, value in model.parameters.items()}
    assert threads == {"intra_op_thread_count": "2", "inter_op_thread_count": "2"}


def test_python_backend_config_differs_only_in_what_runs_it(tmp_path: Path) -> None:
    native = parsed(render_triton_config("m1", BATCHED, settings(tmp_path, "onnxruntime_onnx")))
    python = parsed(render_triton_config("m1", BATCHED, settings(tmp_path, "python")))
    assert python.backend == "python"
    assert not python.platform
    assert python.max_batch_size == 4  # the default
    assert python.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(group.count, group.kind) for group in python.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert python.parameters["intra_op_thread_count"].string_value == "1"
    python.backend, python.platform = "", "onnxruntime_onnx"
    assert python == native


def test_signature_of_a_fixed_batch_model(tmp_path: Path) -> None:
    signature = read_onnx_signature(fixed_onnx(tmp_path / "m.onnx", [1, 3, 64, 64], [1, 6, 84]), 64)
    assert signature == OnnxSignature(
        inputs=(TensorSpec("images", "TYPE_FP32", (1, 3, 64, 64)),),
        outputs=(TensorSpec("output0", "TYPE_FP32", (1, 6, 84)),),
        batched=False,
    )
    for model_format in ("python", "onnxruntime_onnx"):
        config = render_triton_config("m", signature, settings(tmp_path, model_format))
        assert pbtxt_field(config, "max_batch_size") == ["0"]
        assert pbtxt_field(config, "dims") == ["[ 1, 3, 64, 64 ]", "[ 1, 6, 84 ]"]
        assert not parsed(config).HasField("dynamic_batching")  # Triton refuses it with max_batch_size 0


def test_signature_keeps_dynamic_image_sides_and_anchors(tmp_path: Path) -> None:
    signature = read_onnx_signature(detector_onnx(tmp_path / "m.onnx"), 320)
    assert signature.batched
    assert signature.inputs == (TensorSpec("images", "TYPE_FP32", (3, -1, -1)),)
    assert signature.outputs == (TensorSpec("output0", "TYPE_FP32", (6, -1)),)


def test_signature_refuses_an_image_size_mismatch(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not imgsz 640"):
        read_onnx_signature(fixed_onnx(tmp_path / "m.onnx", ["batch", 3, 320, 320], ["batch", 6, "anchors"]), 640)


def model_files(model_dir: Path) -> list[str]:
    return sorted(path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*"))


def test_python_form_carries_its_model_py(tmp_path: Path) -> None:
    triton = settings(tmp_path, "python")
    onnx_file = detector_onnx(tmp_path / "m.onnx")
    model_dir = write_triton_model(triton.repository, "model_1", onnx_file, ["a", "b"], IMGSZ, settings=triton)
    assert model_dir == triton.repository / "model_1"
    assert model_files(model_dir) == ["1", "1/model.onnx", "1/model.py", "config.pbtxt", "labels.txt"]
    assert (model_dir / "1" / "model.py").read_text() == ONNX_BACKEND_MODEL.read_text()
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert (model_dir / "labels.txt").read_text() == "a\nb\n"
    assert parsed((model_dir / "config.pbtxt").read_text()).backend == "python"


def test_native_form_has_no_model_py(tmp_path: Path) -> None:
    triton = settings(tmp_path, "onnxruntime_onnx")
    model_dir = write_triton_model(
        triton.repository, "model_1", detector_onnx(tmp_path / "m.onnx"), ["a"], IMGSZ, settings=triton
    )
    assert model_files(model_dir) == ["1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert parsed((model_dir / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"


def test_a_model_is_replaced_whole(tmp_path: Path) -> None:
    python, native = settings(tmp_path, "python"), settings(tmp_path, "onnxruntime_onnx")
    repository = python.repository
    onnx_file = detector_onnx(tmp_path / "m.onnx")
    write_triton_model(repository, "m", onnx_file, ["a", "b"], IMGSZ, settings=python)
    (repository / "m" / "stale.txt").write_text("from the previous export")
    write_triton_model(repository, "m", onnx_file, ["x", "y"], IMGSZ, settings=native)
    assert (repository / "m" / "labels.txt").read_text() == "x\ny\n"
    assert model_files(repository / "m") == ["1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    # Nothing but models in the repository (Triton loads every subdirectory), no leftovers beside it.
    assert [path.name for path in repository.iterdir()] == ["m"]
    assert [path.name for path in repository.parent.iterdir()] == ["repository"]


@pytest.mark.parametrize(("name", "classes"), [("../evil", ["a"]), ("", ["a"]), ("m", ["a\nb"])])
def test_write_triton_model_refuses_bad_names(tmp_path: Path, name: str, classes: list[str]) -> None:
    triton = settings(tmp_path, "python")
    with pytest.raises(InvalidArgument):
        write_triton_model(triton.repository, name, detector_onnx(tmp_path / "m.onnx"), classes, 64, settings=triton)
    assert not triton.repository.exists() or not list(triton.repository.iterdir())
