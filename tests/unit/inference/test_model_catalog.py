"""The inference service's model lookup (ModelCatalog) against a model registry served over real gRPC: a model
whose export is pending is waited for, bounded; a failed or finished export is answered at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from visionmesh.training.v1 import training_pb2 as pb
from visionmesh.training.v1 import training_pb2_grpc

from services.common.errors import Conflict, NotFound, Unavailable
from services.inference.clients import ModelCatalog

T = TypeVar("T")


class _Registry(training_pb2_grpc.ModelServiceServicer):
    """The training service's GetModel: each model answers the export states of its list in turn (the last one
    from then on)."""

    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states = states
        self.calls = 0

    async def GetModel(self, request: pb.ModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        self.calls += 1
        states = self.states.get(request.model_id)
        if states is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Model {request.model_id!r} not found")
        status = states.pop(0) if len(states) > 1 else states[0]
        error = "ONNX export failed: TypeError: broken" if status == "failed" else ""
        return pb.Model(model_id=request.model_id, classes=["a"], imgsz=64, export_status=status, export_error=error)


async def _with_catalog(registry: _Registry, wait_seconds: float, use: Callable[[ModelCatalog], Awaitable[T]]) -> T:
    server = grpc.aio.server()
    training_pb2_grpc.add_ModelServiceServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    catalog = ModelCatalog(f"127.0.0.1:{port}", export_wait_seconds=wait_seconds)
    try:
        return await use(catalog)
    finally:
        await catalog.close()
        await server.stop(None)


def _timed(registry: _Registry, wait_seconds: float, model_id: str) -> tuple[str, float]:
    async def use(catalog: ModelCatalog) -> tuple[str, float]:
        started = time.monotonic()
        model = await catalog.get(model_id)
        return model.export_status, time.monotonic() - started

    return asyncio.run(_with_catalog(registry, wait_seconds, use))


def test_a_pending_export_is_waited_for_until_it_is_ready() -> None:
    registry = _Registry({"m1": ["pending", "pending", "ready"]})
    status, seconds = _timed(registry, 30, "m1")
    assert status == "ready" and registry.calls == 3
    assert seconds < 5


def test_the_wait_is_bounded_then_the_model_is_still_pending() -> None:
    registry = _Registry({"m1": ["pending"]})
    status, seconds = _timed(registry, 1.2, "m1")
    assert status == "pending" and 1.2 <= seconds < 3
    with pytest.raises(Conflict, match="still being exported"):
        asyncio.run(_with_catalog(registry, 0, lambda catalog: catalog.get("m1"))).require_ready()


def test_no_wait_when_the_setting_is_zero_or_the_export_has_finished() -> None:
    for states, wait_seconds in ((["pending", "ready"], 0), (["failed"], 30), (["ready"], 30)):
        registry = _Registry({"m1": list(states)})
        status, seconds = _timed(registry, wait_seconds, "m1")
        assert status == states[0] and registry.calls == 1 and seconds < 1


def test_a_failed_export_answers_409_with_its_reason() -> None:
    model = asyncio.run(_with_catalog(_Registry({"m1": ["failed"]}), 30, lambda catalog: catalog.get("m1")))
    with pytest.raises(Conflict, match="export failed: ONNX export failed: TypeError: broken"):
        model.require_ready()


def test_finished_exports_are_cached_and_pending_ones_are_not() -> None:
    registry = _Registry({"ready": ["ready"], "pending": ["pending"]})

    async def use(catalog: ModelCatalog) -> None:
        for model_id in ("ready", "ready", "pending", "pending"):
            await catalog.get(model_id)

    asyncio.run(_with_catalog(registry, 0, use))
    assert registry.calls == 3


def test_unknown_models_and_an_unreachable_registry() -> None:
    with pytest.raises(NotFound, match="m9"):
        asyncio.run(_with_catalog(_Registry({}), 30, lambda catalog: catalog.get("m9")))

    async def unreachable() -> None:
        catalog = ModelCatalog("127.0.0.1:9", export_wait_seconds=30)  # nothing listens on the discard port
        try:
            await catalog.get("m1")
        finally:
            await catalog.close()

    with pytest.raises(Unavailable) as caught:
        asyncio.run(unreachable())
    # The answer says what to do; the registry's address stays in the log.
    assert "try again" in caught.value.detail and "127.0.0.1" not in caught.value.detail, caught.value.detail
    assert ":9" not in caught.value.detail
