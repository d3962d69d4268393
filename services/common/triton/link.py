"""The connection to the NVIDIA Triton Inference Server every model of the mesh runs on (explicit model
control: models are loaded on first use and reloaded after Triton restarts)."""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import grpc
import numpy as np
import structlog
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from services.common.errors import Conflict, Unavailable, without_server_paths
from services.common.triton.settings import TritonSettings

log = structlog.get_logger("triton.link")

_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT_S = 2.0
_LOAD_TIMEOUT_S = 300.0
_FAILED_LOAD_MEMORY_S = 30.0
_YOLO_STRIDE = 32  # the largest stride of YOLOv8/11 detection heads
_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.uint8): "UINT8"}


class ServedTensors(NamedTuple):
    input_name: str
    output_name: str
    # 0: the input is a fixed square; else its sides vary and images are letterboxed to the smallest rectangle
    # whose sides are multiples of this (fewer pixels to compute than a square).
    letterbox_stride: int


class TritonLink:
    """The connection to Triton: loads models on first use (explicit model control), runs inference, and
    watches the server so requests fail fast while it is down and models come back after it restarts."""

    def __init__(self, settings: TritonSettings) -> None:
        self._address = settings.grpc_address
        self._timeout = settings.request_timeout_seconds
        self._client = InferenceServerClient(url=self._address)
        self._connected = False
        self._loaded: dict[str, ServedTensors] = {}  # in Triton now
        self._wanted: set[str] = set()  # loaded on purpose and not unloaded: reloaded after a Triton restart
        self._failed_loads: dict[str, tuple[float, Exception]] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._reloading: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def watch(self) -> None:
        """Probe Triton once a second, so that requests fail fast while it is down and `connected` (the
        002 document's ssh_connected) tells the truth."""
        while True:
            ready = await self._probe()
            if ready and not self._connected:
                self._reconnected()
            elif not ready and self._connected:
                self._connected = False
                log.warning("model server unreachable", triton=self._address)
            await asyncio.sleep(_PROBE_INTERVAL_S)

    def _reconnected(self) -> None:
        """A (re)started Triton has no model loaded (explicit mode): load the wanted ones again, in the
        background; a request that needs one meanwhile loads it itself (the per-model lock makes it once)."""
        self._connected = True
        self._loaded.clear()
        self._failed_loads.clear()
        wanted = sorted(self._wanted)
        log.info("model server connected", triton=self._address, reloading=wanted)
        if wanted:
            self._reloading = asyncio.create_task(self._reload(wanted), name="triton-reload")

    async def _reload(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            try:
                await self.ensure_loaded(model_id)
            except (Conflict, Unavailable) as error:
                log.warning("model not reloaded", model_id=model_id, error=str(error))

    async def _probe(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S))
        except (InferenceServerException, grpc.aio.AioRpcError, OSError):
            return False

    async def _require_connection(self) -> None:
        # Between two probes of watch(), ask once more: a Triton that just came back is used at once.
        if self._connected:
            return
        if await self._probe():
            self._reconnected()
            return
        raise Unavailable("The model server (Triton) is not reachable; retry shortly")

    async def ensure_loaded(self, model_id: str, *, retry_failed: bool = False) -> ServedTensors:
        """Load the model if Triton does not have it yet; returns its tensors as Triton declares them. A load
        that failed is not retried for a while (each attempt costs seconds) unless `retry_failed`."""
        if model_id in self._loaded:
            return self._loaded[model_id]
        await self._require_connection()
        async with self._load_locks.setdefault(model_id, asyncio.Lock()):
            if model_id in self._loaded:
                return self._loaded[model_id]
            failed = self._failed_loads.pop(model_id, None)
            if failed and not retry_failed and time.monotonic() - failed[0] < _FAILED_LOAD_MEMORY_S:
                self._failed_loads[model_id] = failed
                raise failed[1]
            started = time.monotonic()
            try:
                # load_model on a loaded model reloads it (new instances, a second or more): only when needed,
                # e.g. not after this service restarted while Triton kept running.
                if not await self._client.is_model_ready(model_id, client_timeout=_PROBE_TIMEOUT_S):
                    await self._client.load_model(model_id, client_timeout=_LOAD_TIMEOUT_S)
                metadata = await self._client.get_model_metadata(model_id, as_json=True)
            except InferenceServerException as error:
                translated = self._translate(error, f"Triton could not load model {model_id}")
                if isinstance(translated, Conflict):
                    self._failed_loads[model_id] = (time.monotonic(), translated)
                raise translated from error
            image_input = metadata["inputs"][0]
            variable_sides = any(int(side) == -1 for side in image_input["shape"][-2:])
            tensors = ServedTensors(
                image_input["name"], metadata["outputs"][0]["name"], _YOLO_STRIDE if variable_sides else 0
            )
            self._loaded[model_id] = tensors
            self._wanted.add(model_id)
            log.info("model loaded", model_id=model_id, seconds=round(time.monotonic() - started, 2))
            return tensors

    async def letterbox_stride(self, model_id: str) -> int:
        return (await self.ensure_loaded(model_id)).letterbox_stride

    async def unload(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)
        self._wanted.discard(model_id)
        self._failed_loads.pop(model_id, None)
        await self._require_connection()
        try:
            if not await self._client.is_model_ready(model_id, client_timeout=_PROBE_TIMEOUT_S):
                return
            await self._client.unload_model(model_id, client_timeout=_LOAD_TIMEOUT_S)
        except InferenceServerException as error:
            raise self._translate(error, f"Triton could not unload model {model_id}") from error
        log.info("model unloaded", model_id=model_id)

    async def infer(self, model_id: str, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch (the first dimension); Triton's dynamic batcher may merge it with others."""
        for attempt in (1, 2):
            input_name, output_name, _ = await self.ensure_loaded(model_id)
            tensor = InferInput(input_name, list(batch.shape), _NUMPY_TO_TRITON[batch.dtype])
            tensor.set_data_from_numpy(batch)
            try:
                result = await self._client.infer(
                    model_id,
                    [tensor],
                    outputs=[InferRequestedOutput(output_name)],
                    client_timeout=self._timeout,
                )
            except InferenceServerException as error:
                # Unloaded behind our back (a restarted Triton between two probes): load it and try once more.
                if attempt == 1 and _is_unknown_model(error):
                    self._loaded.pop(model_id, None)
                    continue
                raise self._translate(error, f"Inference with model {model_id} failed") from error
            return result.as_numpy(output_name)
        raise AssertionError("unreachable")

    def _translate(self, error: InferenceServerException, what: str) -> Exception:
        """The client's answer to a failed call. Where Triton listens and gRPC's words on the failed connection
        (which name that address) go to the log only."""
        status = (error.status() or "").upper()
        if "UNAVAILABLE" in status or "DEADLINE" in status or "CANCELLED" in status:
            if "UNAVAILABLE" in status:
                self._connected = False
            log.warning(what, triton=self._address, status=status, error=error.message() or str(error))
            return Unavailable(f"{what}: the model server (Triton) did not answer; retry shortly")
        return Conflict(f"{what}: {_brief(error.message() or str(error))}")

    async def close(self) -> None:
        await self._client.close()


def _brief(message: str) -> str:
    """Triton's message without what only the operator should see: the Python traceback of a model that failed
    to initialise ("At: /path/model.py(29): initialize") and directories of server paths."""
    first = message.strip().split("\n", 1)[0].strip()
    return without_server_paths(first)[:500]


def _is_unknown_model(error: InferenceServerException) -> bool:
    message = (error.message() or "").lower()
    return "unknown model" in message or "not found" in message or "is not ready" in message
