"""`python -m launcher` (what `./mesh up` runs): start Triton, every service, the gateway and Envoy on this
machine, each once the previous one is ready, say that the platform is up once every route can answer (Envoy's
health reaches every service's), then supervise until Ctrl-C / SIGTERM.

Configuration comes from the environment (docs/configuration.md); nothing here needs editing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.envoy_config import envoy_command, write_config
from gateway.settings import GatewaySettings
from launcher.settings import LauncherSettings
from launcher.supervisor import Component, Supervisor, log
from services.common.logging import configure_logging
from services.common.triton.server import prepare_backends, server_command, server_environment, triton_ready
from services.common.triton.settings import TritonSettings
from services.registry import MESH_SERVICES


def grpc_healthy(address: str, service: str = "") -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    return probe


def triton_component(triton: TritonSettings) -> Component:
    """The bundled tritonserver, with its backend directory and (empty) model repository prepared."""
    prepare_backends(triton)
    triton.repository.mkdir(parents=True, exist_ok=True)
    return Component("triton", server_command(triton), triton_ready(triton.grpc_address), env=server_environment())


def components(gateway: GatewaySettings, launcher: LauncherSettings) -> list[Component]:
    python = sys.executable
    triton = TritonSettings()
    # Triton first: the services that serve models need it from their start.
    found = [triton_component(triton)] if triton.managed else []
    found += [
        Component(service.name, [python, "-m", service.module], grpc_healthy(service.address().grpc_address))
        for service in MESH_SERVICES
    ]
    found.append(Component("gateway", [python, "-m", "gateway", "serve"], grpc_healthy(gateway.grpc_address)))
    config = write_config(gateway)
    envoy = str(Path(python).parent / "envoy")
    # Envoy is ready when a native gRPC health check through the public port reaches the whole mesh.
    found.append(
        Component("envoy", envoy_command(gateway, config, envoy), grpc_healthy(f"127.0.0.1:{gateway.http_port}"))
    )
    for component in found:
        component.ready_timeout_s = launcher.ready_timeout_seconds
        if component.name == "segmentation":
            # Ready only once its built-in classifier is trained, which a first start does.
            component.ready_timeout_s = launcher.segmentation_ready_timeout_seconds
            component.start_note = "a first start trains the built-in component classifier (progress: its log)"
    return found


def state_file(gateway: GatewaySettings) -> Path:
    return gateway.data_root / "run" / "processes.json"


def banner(gateway: GatewaySettings) -> str:
    lines = [
        "VisionMesh is up.",
        f"  REST + gRPC    http://localhost:{gateway.http_port}   (e.g. curl localhost:{gateway.http_port}/datasets)",
        f"  Envoy admin    http://127.0.0.1:{gateway.admin_port}",
    ]
    triton = TritonSettings()
    metrics = f"   (metrics http://{triton.host}:{triton.metrics_port}/metrics)" if triton.metrics_port else ""
    started = metrics if triton.managed else "   (not started here: VM_TRITON_MANAGED=false)"
    lines.append(f"  {'triton':<14} grpc://{triton.grpc_address}{started}")
    for service in MESH_SERVICES:
        lines.append(f"  {service.name:<14} grpc://{service.address().grpc_address}")
    lines += [f"  data root      {gateway.data_root}", "  Ctrl-C stops everything."]
    return "\n".join(lines)


async def run() -> None:
    gateway = GatewaySettings()
    launcher = LauncherSettings()
    gateway.data_root.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(
        components(gateway, launcher),
        dict(os.environ),
        state_file(gateway),
        stop_timeout_s=launcher.stop_timeout_seconds,
    )
    try:
        up = await supervisor.start()
    except (RuntimeError, OSError) as error:
        log.error("start-up failed", error=str(error))
        await supervisor.stop()
        raise SystemExit(1) from error
    if not up:
        log.info("stopped during start-up")
        await supervisor.stop()
        return
    print(banner(gateway), file=sys.stderr, flush=True)
    await supervisor.supervise()


def main() -> None:
    configure_logging("launcher", GatewaySettings())
    asyncio.run(run())


if __name__ == "__main__":
    main()
