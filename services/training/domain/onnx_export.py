"""ONNX export of a registered model, and its Triton model-repository entry.

The export runs Ultralytics in a child process: it imports torch and Ultralytics (hundreds of MB, global
state), may take a minute, and must not stall or bloat the service. The child also checks its result with
onnxruntime before we accept it.

Observed with Ultralytics 8.4 / torch 2.14 (YOLOv8n detect, dynamic=True, onnxslim): opset 18, input
`images` [batch, 3, height, width] float32, output `output0` [batch, 4 + classes, anchors] float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.storage.files import STAGING_PREFIX, TRASH_PREFIX, atomic_write_text, fsync_dir, staging_dir

EXPORT_TIMEOUT_S = 600.0
TRITON_MAX_BATCH_SIZE = 8
_STDERR_TAIL_CHARS = 3000
_RESULT_MARKER = "VISIONMESH_EXPORT_RESULT="
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Runs in the child: argv[1] is a JSON object of arguments (no string interpolation into code).
_EXPORT_SCRIPT = """
import json, sys
args = json.loads(sys.argv[1])
from ultralytics import YOLO
exported = YOLO(args["weights"]).export(
    format="onnx", imgsz=args["imgsz"], dynamic=args["dynamic"], simplify=args["simplify"],
    opset=args["opset"], device="cpu",
)
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.zeros((1, 3, args["imgsz"], args["imgsz"]), dtype=np.float32)}
shapes = [list(output.shape) for output in session.run(None, feed)]
print(__MARKER__ + json.dumps({"onnx": str(exported), "output_shapes": shapes}), flush=True)
""".replace("__MARKER__", repr(_RESULT_MARKER))


class ExportError(RuntimeError):
    """The export failed; the message ends with the tail of the exporter's output."""


def export_onnx(
    weights: Path,
    output: Path,
    imgsz: int,
    env: dict[str, str],
    *,
    dynamic: bool = True,
    simplify: bool = True,
    opset: int | None = None,
    timeout: float = EXPORT_TIMEOUT_S,
) -> Path:
    """Export `weights` to ONNX at `output` (replaced atomically) and return `output`.

    `env` (ultralytics_environment()) is laid over this process's environment for the child. dynamic=True
    gives a dynamic batch (and spatial) size, which Triton batching needs; simplify runs onnxslim (offline).
    opset None lets Ultralytics pick the newest its torch supports (18 today; onnxruntime 1.32 loads it).
    """
    if not weights.is_file():
        raise ExportError(f"No weights to export at {weights}")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Work next to `output` (same file system, so the final rename is atomic); Ultralytics writes the .onnx
    # beside the .pt it exports.
    # STAGING_PREFIX: a killed service leaves a directory start-up clean-up recognises (is_transient).
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}onnx-", dir=output.parent) as work_name:
        work = Path(work_name)
        source = work / "model.pt"
        try:
            os.link(weights, source)
        except OSError:
            shutil.copyfile(weights, source)
        arguments = {"weights": str(source), "imgsz": imgsz, "dynamic": dynamic, "simplify": simplify, "opset": opset}
        child_env = {
            **os.environ,
            **env,
            # Ultralytics' restricted loading (weights_only + its allowlist) instead of a full unpickle.
            "ULTRALYTICS_SAFE_LOAD": "1",
        }
        stdout = _run([sys.executable, "-c", _EXPORT_SCRIPT, json.dumps(arguments)], work, child_env, timeout)
        result = _parse_result(stdout)
        exported = Path(result["onnx"])
        if not exported.is_file() or not exported.resolve().is_relative_to(work.resolve()):
            raise ExportError(f"The exporter reported {exported}, which is not an ONNX file it wrote")
        shapes = result.get("output_shapes")
        # Batch-first outputs for the one-image test input: (1, 4 + classes, anchors) for detection.
        if not isinstance(shapes, list) or not shapes or any(len(shape) < 2 or shape[0] != 1 for shape in shapes):
            raise ExportError(f"The exported model's outputs have unexpected shapes {shapes}")
        os.replace(exported, output)
    fsync_dir(output.parent)
    return output


def _run(command: Sequence[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run the child in its own process group (so a timeout kills its helpers too); its stdout, or ExportError."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = process.communicate()
            raise ExportError(
                f"ONNX export timed out after {timeout:g} s; last output:\n{_tail(stderr or stdout)}"
            ) from None
        except BaseException:
            _kill_group(process)
            raise
    if process.returncode != 0:
        raise ExportError(f"ONNX export failed (exit code {process.returncode}):\n{_tail(stderr or stdout)}")
    return stdout


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL_CHARS else "..." + text[-_STDERR_TAIL_CHARS:]


def _parse_result(stdout: str) -> dict[str, object]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_MARKER):
            result = json.loads(line.removeprefix(_RESULT_MARKER))
            if isinstance(result, dict) and isinstance(result.get("onnx"), str):
                return result
    raise ExportError(f"The exporter finished without reporting a result; its output:\n{_tail(stdout)}")


# -- Triton ---------------------------------------------------------------------------------------------------

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
    """The model's real tensor names and shapes. Dynamic image sides are pinned to imgsz (clients letterbox to
    it); other dynamic dimensions (batch, anchors) stay variable."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {initializer.name for initializer in graph.initializer}
    raw_inputs = [_raw_spec(value) for value in graph.input if value.name not in initializers]
    raw_outputs = [_raw_spec(value) for value in graph.output]
    if not raw_inputs or not raw_outputs:
        raise ExportError(f"{onnx_file.name} has no inputs or no outputs")
    batched = all(dims and dims[0] == -1 for _name, _type, dims in raw_inputs + raw_outputs)
    inputs = []
    for name, data_type, raw_dims in raw_inputs:
        dims = raw_dims
        if len(dims) == 4:  # NCHW image: pin variable height and width, check fixed ones
            for side in dims[2:]:
                if side not in (-1, imgsz):
                    raise ExportError(f"{onnx_file.name} input {name} is {side} pixels, not imgsz {imgsz}")
            dims = (*dims[:2], imgsz, imgsz)
        inputs.append(TensorSpec(name, data_type, dims[1:] if batched else dims))
    outputs = [TensorSpec(name, data_type, dims[1:] if batched else dims) for name, data_type, dims in raw_outputs]
    return OnnxSignature(tuple(inputs), tuple(outputs), batched)


def _raw_spec(value: object) -> tuple[str, str, tuple[int, ...]]:
    import onnx

    tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
    element = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    if element not in _TRITON_TYPES:
        raise ExportError(f"ONNX tensor {value.name} has type {element}, which the config cannot declare")  # type: ignore[attr-defined]
    # dim_param ("batch", "anchors") or an unset dim_value is variable.
    dims = tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1 for dim in tensor_type.shape.dim
    )
    return value.name, _TRITON_TYPES[element], dims  # type: ignore[attr-defined]


def render_triton_config(model_name: str, signature: OnnxSignature, max_batch_size: int = TRITON_MAX_BATCH_SIZE) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend (platform onnxruntime_onnx), CPU instances."""
    batch = max_batch_size if signature.batched else 0
    lines = [f'name: "{model_name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {batch}"]
    for section, tensors in (("input", signature.inputs), ("output", signature.outputs)):
        lines.append(f"{section} [\n" + ",\n".join(_tensor_block(tensor) for tensor in tensors) + "\n]")
    if batch:
        lines.append("dynamic_batching { }")  # Triton refuses dynamic batching when max_batch_size is 0
    lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    return "\n".join(lines) + "\n"


def _tensor_block(tensor: TensorSpec) -> str:
    dims = ", ".join(str(dim) for dim in tensor.dims)
    return f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n    dims: [ {dims} ]\n  }}'


def write_triton_model(repository: Path, model_name: str, onnx_file: Path, classes: list[str], imgsz: int) -> Path:
    """Write repository/<model_name>/{config.pbtxt, 1/model.onnx, labels.txt}; returns the model directory.

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
        (staging / "1").mkdir()
        _link_or_copy(onnx_file, staging / "1" / "model.onnx")
        atomic_write_text(staging / "config.pbtxt", render_triton_config(model_name, signature))
        atomic_write_text(staging / "labels.txt", "".join(f"{name}\n" for name in classes))
        fsync_dir(staging / "1")
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


def _link_or_copy(source: Path, destination: Path) -> None:
    # A hard link shares the service's own copy (models/<id>/model.onnx), which is only ever replaced by
    # rename, never rewritten in place; across file systems, copy.
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
        with open(destination, "rb") as handle:
            os.fsync(handle.fileno())
