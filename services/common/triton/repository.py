"""Triton's model repository: one directory per model, written atomically, in the form the Triton in use loads.

    <repository>/<model_name>/config.pbtxt
                              labels.txt        class names, one per line
                              1/model.onnx
                              1/model.py        python form only: onnx_backend_model.py

TritonSettings.model_format picks the form: `onnxruntime_onnx` for Triton's native ONNX Runtime backend
(the NGC container), `python` for a Python-backend model that runs the same .onnx file with onnxruntime
(the pip-installed tritonserver has no other backend). Both take the same inputs and give the same outputs.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.storage.files import TRASH_PREFIX, atomic_write_text, fsync_dir, link_or_copy, staging_dir
from services.common.triton.settings import TritonSettings

# The python form's model.py: copied into every model so a model directory is complete on its own.
ONNX_BACKEND_MODEL = Path(__file__).with_name("onnx_backend_model.py")

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32",
    "FLOAT16": "TYPE_FP16",
    "DOUBLE": "TYPE_FP64",
    "INT64": "TYPE_INT64",
    "INT32": "TYPE_INT32",
    "INT8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8",
    "BOOL": "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's, e.g. TYPE_FP32
    dims: tuple[int, ...]  # without the batch dimension when the model batches; -1 = variable


@dataclass(frozen=True)
class OnnxSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool  # the first dimension of every input and output is a dynamic batch


def read_onnx_signature(onnx_file: Path, imgsz: int) -> OnnxSignature:
    """The model's real tensor names and shapes. Variable dimensions stay variable: batch and anchors, and
    the image sides, so clients may letterbox to the smallest rectangle (sides multiples of the stride, the
    longer one imgsz) instead of a square, as Ultralytics' own predict does; fixed sides must be imgsz."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {initializer.name for initializer in graph.initializer}
    raw_inputs = [_raw_spec(value) for value in graph.input if value.name not in initializers]
    raw_outputs = [_raw_spec(value) for value in graph.output]
    if not raw_inputs or not raw_outputs:
        raise InvalidArgument(f"{onnx_file.name} has no inputs or no outputs")
    batched = all(dims and dims[0] == -1 for _name, _type, dims in raw_inputs + raw_outputs)
    inputs = []
    for name, data_type, raw_dims in raw_inputs:
        dims = raw_dims
        if len(dims) == 4:  # NCHW image: fixed sides must be what clients letterbox to
            for side in dims[2:]:
                if side not in (-1, imgsz):
                    raise InvalidArgument(f"{onnx_file.name} input {name} is {side} pixels, not imgsz {imgsz}")
        inputs.append(TensorSpec(name, data_type, dims[1:] if batched else dims))
    outputs = [TensorSpec(name, data_type, dims[1:] if batched else dims) for name, data_type, dims in raw_outputs]
    return OnnxSignature(tuple(inputs), tuple(outputs), batched)


def _raw_spec(value: object) -> tuple[str, str, tuple[int, ...]]:
    import onnx

    tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
    element = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    if element not in _TRITON_TYPES:
        raise InvalidArgument(f"ONNX tensor {value.name} has type {element}, which the config cannot declare")  # type: ignore[attr-defined]
    # dim_param ("batch", "anchors") or an unset dim_value is variable.
    dims = tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1 for dim in tensor_type.shape.dim
    )
    return value.name, _TRITON_TYPES[element], dims  # type: ignore[attr-defined]


def render_triton_config(model_name: str, signature: OnnxSignature, settings: TritonSettings) -> str:
    """config.pbtxt in the form settings.model_format names; CPU instances, dynamic batching when the model
    batches. Both forms carry ONNX Runtime's thread counts as the parameters the native backend reads;
    onnx_backend_model.py reads the same ones."""
    runner = 'backend: "python"' if settings.model_format == "python" else 'platform: "onnxruntime_onnx"'
    batch = settings.max_batch_size if signature.batched else 0
    lines = [f'name: "{model_name}"', runner, f"max_batch_size: {batch}"]
    for section, tensors in (("input", signature.inputs), ("output", signature.outputs)):
        lines.append(f"{section} [\n" + ",\n".join(_tensor_block(tensor) for tensor in tensors) + "\n]")
    if batch:  # Triton refuses dynamic batching when max_batch_size is 0
        delay = settings.max_queue_delay_microseconds
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {settings.instance_count}\n    kind: KIND_CPU\n  }}\n]")
    threads = str(settings.threads_per_instance)
    lines += [_parameter("intra_op_thread_count", threads), _parameter("inter_op_thread_count", threads)]
    return "\n".join(lines) + "\n"


def _tensor_block(tensor: TensorSpec) -> str:
    dims = ", ".join(str(dim) for dim in tensor.dims)
    return f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n    dims: [ {dims} ]\n  }}'


def _parameter(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def write_triton_model(
    repository: Path, model_name: str, onnx_file: Path, classes: list[str], imgsz: int, *, settings: TritonSettings
) -> Path:
    """Write repository/<model_name>/ (config.pbtxt, labels.txt, 1/model.onnx and, in the python form,
    1/model.py); returns the model directory.

    Built in a staging directory and renamed into place, so Triton never sees a half-written model. The
    staging directory is a sibling of the repository when it is on the same file system: Triton treats every
    subdirectory of its repository as a model, hidden or not. An existing model of that name is replaced
    (moved aside, then the new one renamed in: a moment without it, never a mix of both).
    """
    if not _MODEL_NAME.match(model_name):
        raise InvalidArgument(f"{model_name!r} is not a valid Triton model name")
    if any("\n" in name or "\r" in name for name in classes):
        raise InvalidArgument("Class names must not contain line breaks (labels.txt has one per line)")
    signature = read_onnx_signature(onnx_file, imgsz)
    repository.mkdir(parents=True, exist_ok=True)
    work_root = repository.parent if _same_file_system(repository, repository.parent) else repository
    target = repository / model_name
    with staging_dir(work_root) as staging:
        version = staging / "1"
        version.mkdir()
        link_or_copy(onnx_file, version / "model.onnx")
        if settings.model_format == "python":
            atomic_write_text(version / "model.py", ONNX_BACKEND_MODEL.read_text())
        atomic_write_text(staging / "config.pbtxt", render_triton_config(model_name, signature, settings))
        atomic_write_text(staging / "labels.txt", "".join(f"{name}\n" for name in classes))
        fsync_dir(version)
        previous = work_root / f"{TRASH_PREFIX}{model_name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(target, previous)
        except FileNotFoundError:
            previous = None
        os.rename(staging, target)
    fsync_dir(repository)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return target


def _same_file_system(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev
