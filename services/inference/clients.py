"""The inference service's gRPC clients: the training service's model registry (which models exist, their
classes and export state) and the Triton Inference Server that executes them."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import structlog
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException
from visionmesh.training.v1 import training_pb2, training_pb2_grpc

from services.common.errors import Conflict, NotFound, Unavailable
from services.common.triton.settings import TritonSettings
from services.inference.domain.models import ServableModel

log = structlog.get_logger("inference.clients")

_REGISTRY_TIMEOUT_S = 10.0
_MODEL_CACHE_S = 5.0
_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT_S = 2.0
_LOAD_TIMEOUT_S = 300.0
_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.uint8): "UINT8"}


class ModelCatalog:
    """Registered models, read from the training service over gRPC and cached for a few seconds (a model's
    classes never change; its export state does, so the cache is short)."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = training_pb2_grpc.ModelServiceStub(self._channel)
        self._cache: dict[str, tuple[float, ServableModel]] = {}

    async def get(self, model_id: str) -> ServableModel:
        cached = self._cache.get(model_id)
        if cached and time.monotonic() - cached[0] < _MODEL_CACHE_S:
            return cached[1]
        try:
            message = await self._stub.GetModel(
                training_pb2.ModelRequest(model_id=model_id), timeout=_REGISTRY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"Model {model_id} not found") from error
            raise Unavailable(f"The model registry (training service) is unavailable: {error.details()}") from error
        model = _servable(message)
        self._cache[model_id] = (time.monotonic(), model)
        return model

    async def newest_ready(self) -> ServableModel:
        """The most recently registered model whose export is ready (the default model of queued tasks)."""
        page = 1
        while True:
            try:
                response = await self._stub.ListModels(
                    training_pb2.ListModelsRequest(page=page, page_size=100), timeout=_REGISTRY_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                raise Unavailable(f"The model registry (training service) is unavailable: {error.details()}") from error
            for message in response.models:
                if message.export_status == "ready":
                    return _servable(message)
            if not response.models or page * 100 >= response.total:
                raise Unavailable(
                    "No model is ready for serving yet: train or upload one (POST /train/jobs, POST /models/upload)"
                )
            page += 1

    def forget(self, model_id: str) -> None:
        self._cache.pop(model_id, None)

    async def close(self) -> None:
        await self._channel.close()


def _servable(message: training_pb2.Model) -> ServableModel:
    return ServableModel(
        model_id=message.model_id,
        classes=tuple(message.classes),
        imgsz=message.imgsz,
        export_status=message.export_status,
        export_error=message.export_error,
    )


class TritonLink:
    """The connection to Triton: loads models on first use (explicit model control), runs inference, and
    watches the server so requests fail fast while it is down and models come back after it restarts."""

    def __init__(self, settings: TritonSettings) -> None:
        self._address = settings.grpc_address
        self._timeout = settings.request_timeout_seconds
        self._client = InferenceServerClient(url=self._address)
        self._connected = False
        self._loaded: dict[str, tuple[str, str]] = {}  # model id -> (input name, output name)
        self._load_locks: dict[str, asyncio.Lock] = {}

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def address(self) -> str:
        return self._address

    async def watch(self) -> None:
        """Probe Triton once a second. After an outage Triton has forgotten every model (explicit mode), so
        the models that were loaded are loaded again."""
        while True:
            ready = await self._probe()
            if ready and not self._connected:
                wanted = list(self._loaded)
                self._loaded.clear()
                self._connected = True
                log.info("model server connected", triton=self._address, reloading=wanted)
                for model_id in wanted:
                    try:
                        await self.ensure_loaded(model_id)
                    except (Conflict, Unavailable) as error:
                        log.warning("model not reloaded", model_id=model_id, error=str(error))
            elif not ready and self._connected:
                self._connected = False
                log.warning("model server unreachable", triton=self._address)
            await asyncio.sleep(_PROBE_INTERVAL_S)

    async def _probe(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S))
        except (InferenceServerException, grpc.aio.AioRpcError, OSError):
            return False

    def _require_connection(self) -> None:
        if not self._connected:
            raise Unavailable(f"The model server (Triton at {self._address}) is not reachable; retry shortly")

    async def ensure_loaded(self, model_id: str) -> tuple[str, str]:
        """Load the model if Triton does not have it yet; returns its input and output tensor names."""
        if model_id in self._loaded:
            return self._loaded[model_id]
        self._require_connection()
        async with self._load_locks.setdefault(model_id, asyncio.Lock()):
            if model_id in self._loaded:
                return self._loaded[model_id]
            started = time.monotonic()
            try:
                # load_model on a loaded model reloads it (new instances, a second or more): only when needed,
                # e.g. not after this service restarted while Triton kept running.
                if not await self._client.is_model_ready(model_id, client_timeout=_PROBE_TIMEOUT_S):
                    await self._client.load_model(model_id, client_timeout=_LOAD_TIMEOUT_S)
                metadata = await self._client.get_model_metadata(model_id, as_json=True)
            except InferenceServerException as error:
                raise self._translate(error, f"Triton could not load model {model_id}") from error
            names = (metadata["inputs"][0]["name"], metadata["outputs"][0]["name"])
            self._loaded[model_id] = names
            log.info("model loaded", model_id=model_id, seconds=round(time.monotonic() - started, 2))
            return names

    async def unload(self, model_id: str) -> None:
        self._loaded.pop(model_id, None)
        self._require_connection()
        try:
            if not await self._client.is_model_ready(model_id, client_timeout=_PROBE_TIMEOUT_S):
                return
            await self._client.unload_model(model_id, client_timeout=_LOAD_TIMEOUT_S)
        except InferenceServerException as error:
            raise self._translate(error, f"Triton could not unload model {model_id}") from error
        log.info("model unloaded", model_id=model_id)

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    async def infer(self, model_id: str, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch (the first dimension); Triton's dynamic batcher may merge it with others."""
        for attempt in (1, 2):
            input_name, output_name = await self.ensure_loaded(model_id)
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
        status = (error.status() or "").upper()
        message = error.message() or str(error)
        if "UNAVAILABLE" in status or "DEADLINE" in status or "CANCELLED" in status:
            self._connected = self._connected and "UNAVAILABLE" not in status
            return Unavailable(f"{what}: the model server (Triton at {self._address}) did not answer ({message})")
        return Conflict(f"{what}: {message}")

    async def statistics(self, model_id: str = "") -> dict:
        self._require_connection()
        return await self._client.get_inference_statistics(model_id, as_json=True)

    async def close(self) -> None:
        await self._client.close()


def _is_unknown_model(error: InferenceServerException) -> bool:
    message = (error.message() or "").lower()
    return "unknown model" in message or "not found" in message or "is not ready" in message
