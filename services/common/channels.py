"""Channels from one service of the mesh to another: every call carries the caller's request ID and trace.

A service that calls another while it handles a request sends that request's `request_id` (bound in
structlog's context by services.common.grpc_server) as `x-request-id`, which the callee's server binds in
turn, and OpenTelemetry's client interceptors inject the trace context (W3C `traceparent`), so one request
is one ID in every log line and one trace across the mesh. Calls made outside any request (start-up,
background loops) send no ID; the callee makes up its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from services.common.tracing import client_interceptors

REQUEST_ID_METADATA = "x-request-id"


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if not request_id:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[REQUEST_ID_METADATA] = str(request_id)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under one kind of call only, hence one class per kind.
class _UnaryUnaryRequestId(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _UnaryStreamRequestId(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _StreamUnaryRequestId(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(_with_request_id(details), requests)


class _StreamStreamRequestId(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(_with_request_id(details), requests)


def mesh_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to another service of the mesh at `address` (host:port) that forwards the request context."""
    interceptors = [
        _UnaryUnaryRequestId(),
        _UnaryStreamRequestId(),
        _StreamUnaryRequestId(),
        _StreamStreamRequestId(),
        *client_interceptors(),
    ]
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
