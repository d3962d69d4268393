"""services.common.channels: a call one service makes to another while it handles a request carries that
request's ID (bound by the callee's real RequestContextInterceptor) and its trace context, on each of the
four kinds of gRPC call; a call made outside any request lets the callee make up its own ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from services.common.channels import mesh_channel
from services.common.grpc_server import RequestContextInterceptor

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SERVICE = "test.Echo"


def _seen(context: grpc.aio.ServicerContext) -> bytes:
    """What the callee saw: the request_id in its log context and the trace context it was sent."""
    metadata = dict(context.invocation_metadata() or ())
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return json.dumps({"request_id": request_id, "traceparent": metadata.get("traceparent")}).encode()


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _seen(context)


async def _unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield _seen(context)


async def _stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        pass
    return _seen(context)


async def _stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _seen(context)


async def _one_message() -> AsyncIterator[bytes]:
    yield b"x"


Call = Callable[[grpc.aio.Channel], Awaitable[bytes]]


async def _call_unary(channel: grpc.aio.Channel) -> bytes:
    return await channel.unary_unary(f"/{SERVICE}/Unary")(b"x")


async def _call_unary_stream(channel: grpc.aio.Channel) -> bytes:
    [reply] = [reply async for reply in channel.unary_stream(f"/{SERVICE}/UnaryStream")(b"x")]
    return reply


async def _call_stream_unary(channel: grpc.aio.Channel) -> bytes:
    return await channel.stream_unary(f"/{SERVICE}/StreamUnary")(_one_message())


async def _call_stream_stream(channel: grpc.aio.Channel) -> bytes:
    [reply] = [reply async for reply in channel.stream_stream(f"/{SERVICE}/StreamStream")(_one_message())]
    return reply


CALLS = [_call_unary, _call_unary_stream, _call_stream_unary, _call_stream_stream]


async def _call_callee(call: Call, scope: Callable[[], AbstractContextManager[Any]]) -> dict[str, Any]:
    server = grpc.aio.server(interceptors=[RequestContextInterceptor()])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with mesh_channel(f"127.0.0.1:{port}") as channel:
            with scope():
                return json.loads(await call(channel))
    finally:
        await server.stop(None)


@contextmanager
def _handling_a_request() -> Iterator[None]:
    """What the caller's server sets up around a request: its request_id bound, its span current."""
    parent = SpanContext(TRACE_ID, 0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags.SAMPLED)
    with structlog.contextvars.bound_contextvars(request_id="req-0123"), trace.use_span(NonRecordingSpan(parent)):
        yield


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.__name__.removeprefix("_call_"))
def test_a_call_carries_the_request_id_and_trace_of_the_request(call: Call) -> None:
    seen = asyncio.run(_call_callee(call, _handling_a_request))
    assert seen["request_id"] == "req-0123"
    assert seen["traceparent"] is not None
    assert seen["traceparent"].split("-")[1] == format(TRACE_ID, "032x")


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.__name__.removeprefix("_call_"))
def test_a_call_outside_any_request_gets_an_id_of_its_own(call: Call) -> None:
    seen = asyncio.run(_call_callee(call, nullcontext))
    assert len(seen["request_id"]) == 32 and seen["traceparent"] is None
