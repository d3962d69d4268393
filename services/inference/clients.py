"""The inference service's client of the training service's model registry (which models exist, their classes
and export state); Triton itself is reached through services.common.triton.link."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog
from visionmesh.training.v1 import training_pb2, training_pb2_grpc

from services.common.channels import mesh_channel
from services.common.errors import NotFound, Unavailable
from services.inference.domain.models import ServableModel

log = structlog.get_logger("inference.clients")

_REGISTRY_TIMEOUT_S = 10.0
_MODEL_CACHE_S = 5.0
# How often a request waiting for a pending export asks the registry again.
_EXPORT_POLL_S = 0.5


class ModelCatalog:
    """Registered models, read from the training service over gRPC. A model whose export has finished is cached
    for a few seconds (its classes never change; its export state rarely does, so the cache is short); one whose
    export is pending is asked for again until the export finishes, for at most `export_wait_seconds`."""

    def __init__(self, address: str, *, export_wait_seconds: float) -> None:
        self._channel = mesh_channel(address)
        self._stub = training_pb2_grpc.ModelServiceStub(self._channel)
        self._cache: dict[str, tuple[float, ServableModel]] = {}
        self._export_wait_s = export_wait_seconds

    async def get(self, model_id: str) -> ServableModel:
        """The model (NotFound if it is not registered). While its export for serving is pending (e.g. re-queued
        by a restart of the training service) this waits for the export to finish, bounded: the model it
        answers with is still pending only if the export took longer than that."""
        cached = self._cache.get(model_id)
        if cached and time.monotonic() - cached[0] < _MODEL_CACHE_S:
            return cached[1]
        deadline = time.monotonic() + self._export_wait_s
        model = await self._fetch(model_id)
        while model.export_status == "pending" and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(_EXPORT_POLL_S, left))
            model = await self._fetch(model_id)
        if model.export_status != "pending":
            self._cache[model_id] = (time.monotonic(), model)
        return model

    async def _fetch(self, model_id: str) -> ServableModel:
        try:
            message = await self._stub.GetModel(
                training_pb2.ModelRequest(model_id=model_id), timeout=_REGISTRY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"Model {model_id} not found") from error
            raise _unavailable(error) from error
        return _servable(message)

    async def newest_ready(self) -> ServableModel:
        """The most recently registered model whose export is ready (the default model of queued tasks)."""
        page = 1
        while True:
            try:
                response = await self._stub.ListModels(
                    training_pb2.ListModelsRequest(page=page, page_size=100), timeout=_REGISTRY_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                raise _unavailable(error) from error
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


def _unavailable(error: grpc.aio.AioRpcError) -> Unavailable:
    # The details name the training service's address: the log keeps them, the answer says what to do.
    log.warning("model registry call failed", code=error.code().name, details=error.details())
    return Unavailable(f"The model registry (training service) did not answer ({error.code().name}); try again shortly")


def _servable(message: training_pb2.Model) -> ServableModel:
    return ServableModel(
        model_id=message.model_id,
        classes=tuple(message.classes),
        imgsz=message.imgsz,
        export_status=message.export_status,
        export_error=message.export_error,
    )
