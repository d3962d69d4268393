"""The gateway's gRPC server: what native gRPC clients of the shared port need beyond the API itself.

- Server reflection for the whole mesh, answered from the same descriptor set Envoy loads, so
  `grpcurl -plaintext localhost:8000 list` shows every service.
- Health: `Check("")` is SERVING only when every service is; `Check("<package.Service>")` asks the process
  that owns that service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from gateway.envoy_config import api_services
from gateway.settings import GatewaySettings
from services.common.grpc_server import serve
from services.common.reflection import REFLECTION_SERVICE_NAMES, enable_reflection
from services.registry import MESH_SERVICES, owner_of

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_PROBE_TIMEOUT_S = 2.0
_WATCH_INTERVAL_S = 1.0


def reflection_pool(descriptor_set: Path) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    for proto in files.file:
        pool.AddSerializedFile(proto.SerializeToString())
    for module in (health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class MeshHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, api: list[str]) -> None:
        self._api = set(api)
        self._stubs = {
            service.name: health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(service.address().grpc_address))
            for service in MESH_SERVICES
        }

    async def _probe(self, backend: str, service: str) -> int:
        try:
            response = await self._stubs[backend].Check(
                health_pb2.HealthCheckRequest(service=service), timeout=_PROBE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return NOT_SERVING
        return response.status

    async def status(self, service: str) -> int | None:
        """The status of `service` ("" = the whole mesh), or None for a service nobody serves."""
        if not service:
            results = await asyncio.gather(*(self._probe(name, "") for name in self._stubs))
            return SERVING if all(status == SERVING for status in results) else NOT_SERVING
        owner = owner_of(service) if service in self._api else None
        if owner is None:
            return SERVING if service in (HEALTH_SERVICE_NAME, *REFLECTION_SERVICE_NAMES) else None
        return await self._probe(owner.name, service)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = await self.status(request.service)
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(_WATCH_INTERVAL_S)


async def serve_mesh_grpc(settings: GatewaySettings) -> None:
    api = api_services(settings.descriptor_set)

    def register(server: grpc.aio.Server) -> list[str]:
        health_pb2_grpc.add_HealthServicer_to_server(MeshHealth(api), server)
        enable_reflection(
            server,
            [*api, HEALTH_SERVICE_NAME],
            pool=reflection_pool(settings.descriptor_set),
        )
        return []

    await serve("gateway", settings, register, standard_services=False)
