"""The inference service's client of the training service's model registry (which models exist, their classes
and export state); Triton itself is reached through services.common.triton.link."""

from __future__ import annotations

import time

import grpc
import structlog
from visionmesh.training.v1 import training_pb2, training_pb2_grpc

from services.common.errors import NotFound, Unavailable
from services.inference.domain.models import ServableModel

log = structlog.get_logger("inference.clients")

_REGISTRY_TIMEOUT_S = 10.0
_MODEL_CACHE_S = 5.0


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
