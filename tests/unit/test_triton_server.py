"""The bundled tritonserver, started the way the launcher starts it, serving a tiny ONNX model written in the
python form: explicit load and unload, batched and concurrent inference, statistics, a model that fails to load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from launcher.instance import free_port
from services.common.triton.repository import write_triton_model
from services.common.triton.server import (
    prepare_backends,
    server_command,
    server_environment,
    triton_ready,
)
from services.common.triton.settings import TritonSettings

IMGSZ = 8
LOOKUP_TABLE = [10.0, 20.0, 30.0]
_START_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunningTriton:
    settings: TritonSettings
    client: triton.InferenceServerClient
    log: Path


def doubling_onnx(path: Path) -> Path:
    """output0 = 2 * images, with a dynamic batch."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["images", "two"], ["output0"])],
        "double",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3, IMGSZ, IMGSZ])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    return save_onnx(graph, path)


def lookup_onnx(path: Path) -> Path:
    """values = LOOKUP_TABLE[indices]: an index out of the table fails in ONNX Runtime, for that request only."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "indices"], ["values"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("table", TensorProto.FLOAT, [len(LOOKUP_TABLE)], LOOKUP_TABLE)],
    )
    return save_onnx(graph, path)


def save_onnx(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime 1.x reads, whatever onnx writes by default
    onnx.save(model, str(path))
    return path


@contextmanager
def tritonserver(settings: TritonSettings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The bundled tritonserver on `settings`' repository, ready, stopped (SIGTERM, then SIGKILL) at the end."""
    prepare_backends(settings)
    with open(log, "wb") as output:
        server = subprocess.Popen(
            server_command(settings), env={**os.environ, **server_environment()}, stdout=output, stderr=output
        )
    try:
        wait_ready(settings, server, log)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(settings: TritonSettings, server: subprocess.Popen[bytes], log: Path) -> None:
    probe = triton_ready(settings.grpc_address)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tritonserver exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        if asyncio.run(probe()):
            return
        time.sleep(0.2)
    pytest.fail(f"tritonserver not ready within {_START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    root = tmp_path_factory.mktemp("triton")
    settings = TritonSettings(
        data_root=root / "data", grpc_port=free_port(), metrics_port=free_port(), model_format="python"
    )
    onnx_file = doubling_onnx(root / "double.onnx")
    write_triton_model(settings.repository, "double", onnx_file, ["thing"], IMGSZ, settings=settings)
    write_triton_model(settings.repository, "lookup", lookup_onnx(root / "lookup.onnx"), [], IMGSZ, settings=settings)
    broken = write_triton_model(settings.repository, "broken", onnx_file, ["thing"], IMGSZ, settings=settings)
    (broken / "1" / "model.onnx").unlink()  # a hard link to the good file: replaced, not overwritten
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx model")
    log = root / "tritonserver.log"
    with tritonserver(settings, log), triton.InferenceServerClient(settings.grpc_address) as client:
        yield RunningTriton(settings, client, log)


@pytest.fixture(scope="module")
def loaded(running: RunningTriton) -> RunningTriton:
    running.client.load_model("double", client_timeout=LOAD_TIMEOUT_S)
    return running


def infer(client: triton.InferenceServerClient, images: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("double", [tensor], outputs=[triton.InferRequestedOutput("output0")], client_timeout=10)
    return result.as_numpy("output0")


def images(batch: int, value: float) -> np.ndarray:
    return np.full((batch, 3, IMGSZ, IMGSZ), value, dtype=np.float32)


def test_nothing_is_loaded_at_start_and_the_server_is_ready(running: RunningTriton) -> None:
    # Explicit model control: the repository's models wait to be loaded, the server is ready without them.
    index = {model.name: model.state for model in running.client.get_model_repository_index().models}
    assert index.keys() == {"double", "lookup", "broken"}
    assert running.client.is_server_ready()


def test_one_request_with_one_and_with_several_images(loaded: RunningTriton) -> None:
    assert loaded.client.is_model_ready("double")
    np.testing.assert_array_equal(infer(loaded.client, images(1, 1.5)), images(1, 3.0))
    batch = np.stack([images(1, value)[0] for value in (1.0, 2.0, 3.0)])
    np.testing.assert_array_equal(infer(loaded.client, batch), 2 * batch)


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(loaded: RunningTriton) -> None:
    def counts() -> tuple[int, int]:
        (stats,) = loaded.client.get_inference_statistics("double", as_json=True)["model_stats"]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    inferences_before, executions_before = counts()
    values = [float(value) for value in range(64)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        outputs = list(pool.map(lambda value: infer(loaded.client, images(1, value)), values))
    for value, output in zip(values, outputs, strict=True):
        np.testing.assert_array_equal(output, images(1, 2 * value))
    inferences, executions = counts()
    assert inferences - inferences_before == len(values)
    # 16 clients at once and two instances: the dynamic batcher joins requests (64 in ~15 runs here).
    assert 0 < executions - executions_before < len(values)


def test_a_model_that_fails_to_load_leaves_the_server_up(loaded: RunningTriton) -> None:
    with pytest.raises(InferenceServerException, match="broken"):
        loaded.client.load_model("broken", client_timeout=LOAD_TIMEOUT_S)
    assert not loaded.client.is_model_ready("broken")
    assert loaded.client.is_server_ready()
    np.testing.assert_array_equal(infer(loaded.client, images(1, 4.0)), images(1, 8.0))


def test_a_failing_request_fails_alone(running: RunningTriton) -> None:
    # Out-of-range indices fail in ONNX Runtime; batched with good requests, only they get the error.
    running.client.load_model("lookup", client_timeout=LOAD_TIMEOUT_S)

    def lookup(index: int) -> float | str:
        tensor = triton.InferInput("indices", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[index]], dtype=np.int64))
        try:
            return float(running.client.infer("lookup", [tensor], client_timeout=10).as_numpy("values")[0, 0])
        except InferenceServerException as error:
            return str(error)

    indices = [0, 1, 2, 7] * 8
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lookup, indices))
    for index, answer in zip(indices, answers, strict=True):
        if index < len(LOOKUP_TABLE):
            assert answer == LOOKUP_TABLE[index]
        else:
            assert isinstance(answer, str) and "out of" in answer, answer
    assert running.client.is_model_ready("lookup")


def test_unload(running: RunningTriton) -> None:
    running.client.load_model("double", client_timeout=LOAD_TIMEOUT_S)
    running.client.unload_model("double", unload_dependents=False)
    deadline = time.monotonic() + 10
    while running.client.is_model_ready("double") and time.monotonic() < deadline:
        time.sleep(0.1)  # unloading finishes in the background
    assert not running.client.is_model_ready("double")
    with pytest.raises(InferenceServerException):
        infer(running.client, images(1, 1.0))


def test_prepare_backends_copies_once(tmp_path: Path) -> None:
    settings = TritonSettings(data_root=tmp_path)
    backends = prepare_backends(settings)
    python_backend = backends / "python"
    assert {path.name for path in python_backend.iterdir()} == {
        "libtriton_python.so",
        "triton_python_backend_utils.py",
        "triton_python_backend_stub",
    }
    assert os.access(python_backend / "triton_python_backend_stub", os.X_OK)
    inodes = {path.name: path.stat().st_ino for path in python_backend.iterdir()}
    assert prepare_backends(settings) == backends
    assert {path.name: path.stat().st_ino for path in python_backend.iterdir()} == inodes


def test_server_command_without_metrics(tmp_path: Path) -> None:
    command = server_command(TritonSettings(data_root=tmp_path, metrics_port=0, grpc_port=9123))
    assert "--allow-metrics=false" in command
    assert not any(arg.startswith("--metrics-port") for arg in command)
    assert "--grpc-port=9123" in command
    assert f"--model-repository={tmp_path / 'triton' / 'repository'}" in command


def test_the_readiness_probe_says_no_when_nothing_listens() -> None:
    assert asyncio.run(triton_ready(f"127.0.0.1:{free_port()}")()) is False
