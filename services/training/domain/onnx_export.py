"""ONNX export of a registered model (services/common/triton/repository.py turns it into a Triton model).

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
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.common.processes import dying_with_parent
from services.common.storage.files import fsync_dir, staging_prefix
from services.training.domain.reasons import last_exception

EXPORT_TIMEOUT_S = 600.0
_STDERR_TAIL_CHARS = 3000
_RESULT_MARKER = "VISIONMESH_EXPORT_RESULT="

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
    """The export failed. The message is the reason as users may read it (no traceback, no server paths);
    `output` is the tail of the exporter's output, for the service log."""

    def __init__(self, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.output = output


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
        raise ExportError("No weights to export: the model's best.pt is missing", output=str(weights))
    output.parent.mkdir(parents=True, exist_ok=True)
    # Work next to `output` (same file system, so the final rename is atomic); Ultralytics writes the .onnx
    # beside the .pt it exports.
    # A staging name: a killed service leaves a directory start-up clean-up recognises (is_transient).
    with tempfile.TemporaryDirectory(prefix=f"{staging_prefix()}onnx-", dir=output.parent) as work_name:
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
        # The exporter never outlives the service (a restart exports the model again).
        command = dying_with_parent([sys.executable, "-c", _EXPORT_SCRIPT, json.dumps(arguments)], signal.SIGKILL)
        stdout = _run(command, work, child_env, timeout)
        result = _parse_result(stdout)
        exported = Path(result["onnx"])
        if not exported.is_file() or not exported.resolve().is_relative_to(work.resolve()):
            raise ExportError("The exporter reported an ONNX file it did not write", output=str(exported))
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
            raise ExportError(f"ONNX export timed out after {timeout:g} s", output=_tail(stderr or stdout)) from None
        except BaseException:
            _kill_group(process)
            raise
    if process.returncode != 0:
        output = _tail(stderr or stdout)
        reason = last_exception(output) or f"the exporter exited with code {process.returncode}"
        raise ExportError(f"ONNX export failed: {reason}", output=output)
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
    raise ExportError("The exporter finished without reporting a result", output=_tail(stdout))
