"""The gRPC server every service runs: request context, error mapping, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import grpc
import structlog
from google.protobuf import any_pb2, json_format, struct_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.common.channels import REQUEST_ID_METADATA
from services.common.envelope import EnvelopeError
from services.common.errors import ServiceError
from services.common.logging import configure_logging
from services.common.reflection import enable_reflection
from services.common.settings import GrpcServerSettings
from services.common.tracing import configure_tracing

log = structlog.get_logger(__name__)

# Trailing metadata that tells the gateway which HTTP status to answer with (Envoy's fixed gRPC->HTTP table
# has no 409 or 413); envoy/error_shape.lua applies it and removes it.
HTTP_STATUS_METADATA = "x-vm-http-status"
# gRPC's rich error model: a serialized google.rpc.Status with typed details.
_STATUS_DETAILS_METADATA = "grpc-status-details-bin"

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

# Probes and reflection are called constantly by tools; they are not worth a log line each.
_QUIET_METHOD_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def server_options(settings: GrpcServerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        # grpcio shares a port with a stale server by default; a second server must fail to bind instead.
        ("grpc.so_reuseport", 0),
    ]


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    """Binds request_id/rpc to the log context, logs each RPC, and turns domain errors into statuses. The
    request_id is the caller's `x-request-id` (Envoy's, or the calling service's: services.common.channels)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_QUIET_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        request_id = str(metadata.get(REQUEST_ID_METADATA) or uuid4().hex)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        wrap = _wrap_streaming if handler.response_streaming else _wrap_unary
        return factory(
            wrap(behavior, method, request_id),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@contextmanager
def _rpc_scope(method: str, request_id: str):
    started = time.perf_counter()
    outcome = {"status": "OK"}
    with structlog.contextvars.bound_contextvars(request_id=request_id, rpc=method):
        try:
            yield outcome
        finally:
            log.info("rpc", status=outcome["status"], duration_ms=round((time.perf_counter() - started) * 1000, 2))


async def _abort(context: grpc.aio.ServicerContext, error: Exception, outcome: dict, request_id: str) -> None:
    if isinstance(error, ServiceError):
        http_status, detail = error.http_status, error.detail
    else:
        log.exception("unhandled error")
        http_status, detail = 500, f"Internal server error (request id {request_id})"
    code = _STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)
    outcome["status"] = f"{code.name} {http_status}: {detail}"
    metadata = [(HTTP_STATUS_METADATA, str(http_status))]
    if isinstance(error, EnvelopeError):
        metadata.append((_STATUS_DETAILS_METADATA, _envelope_status(code, error).SerializeToString()))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(code, detail)


def _envelope_status(code: grpc.StatusCode, error: EnvelopeError) -> status_pb2.Status:
    """The rich gRPC status of a 004 failure: its envelope as the one detail (the gateway shows it as the body)."""
    from visionmesh.envelope.v1 import envelope_pb2

    fields = error.envelope()
    envelope = envelope_pb2.ErrorEnvelope(code=fields["code"], status=fields["status"], message=fields["message"])
    envelope.payload.CopyFrom(json_format.ParseDict(fields["payload"], struct_pb2.Struct()))
    detail = any_pb2.Any()
    detail.Pack(envelope)
    return status_pb2.Status(code=code.value[0], message=error.detail, details=[detail])


def _wrap_unary(behavior: Callable, method: str, request_id: str) -> Callable:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with _rpc_scope(method, request_id) as outcome:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                outcome["status"] = "ABORTED_BY_SERVICER"
                raise
            except Exception as error:  # noqa: BLE001 - every error must become a status, never a crash
                await _abort(context, error, outcome, request_id)

    return handle


def _wrap_streaming(behavior: Callable, method: str, request_id: str) -> Callable:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with _rpc_scope(method, request_id) as outcome:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                outcome["status"] = "ABORTED_BY_SERVICER"
                raise
            except Exception as error:  # noqa: BLE001
                await _abort(context, error, outcome, request_id)

    return handle


Registrar = Callable[[grpc.aio.Server], Iterable[str]]


async def serve(
    component: str,
    settings: GrpcServerSettings,
    register: Registrar,
    *,
    readiness: Callable[[], Awaitable[bool]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    standard_services: bool = True,
) -> None:
    """Run a gRPC server until SIGTERM/SIGINT.

    `register` adds the servicers and returns their full service names. Unless `standard_services` is
    off (the gateway brings its own), health and reflection are added here: health reports SERVING once
    the server listens and, when `readiness` is given, only while it holds (checked every few seconds).
    """
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=settings.worker_threads))
    interceptors = [*configure_tracing(component, settings), RequestContextInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    service_names = list(register(server))
    health_servicer = health_aio.HealthServicer()
    if standard_services:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(server, [*service_names, health.SERVICE_NAME])
    address = f"{settings.bind_host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"{component}: cannot listen on {address}")
    await server.start()

    async def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *service_names]:
            await health_servicer.set(name, status)

    serving = await readiness() if readiness is not None else True
    await set_health(serving)
    log.info("serving", address=address, services=service_names)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def watch_readiness() -> None:
        nonlocal serving
        while readiness is not None:
            await asyncio.sleep(5)
            ready = await readiness()
            if ready != serving:
                log.warning("readiness changed", ready=ready)
                await set_health(ready)
                serving = ready

    watcher = asyncio.create_task(watch_readiness())
    await stop.wait()
    log.info("shutting down")
    watcher.cancel()
    await set_health(False)
    await server.stop(grace=5)
    if on_shutdown is not None:
        await on_shutdown()
    log.info("stopped")


def run_service(component: str, settings: GrpcServerSettings, main: Callable[[], Awaitable[None]]) -> None:
    """Process entry point: logging first, then the service's async main."""
    configure_logging(component, settings)
    asyncio.run(main())
