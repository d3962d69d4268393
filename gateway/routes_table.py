"""docs/routes.md: every public REST route -> the mesh service that serves it -> its RPC -> the proto that declares
it and the servicer that implements it, generated from the descriptor set and the services' source."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.request_schema import DescriptorIndex, api_services, read_descriptor_set, rest_routes
from services.common.settings import REPO_ROOT
from services.registry import owner_of

ROUTES_TABLE = REPO_ROOT / "docs" / "routes.md"

_HEADER = """\
# Routes

Every public REST route, the mesh service that serves it, its gRPC method, the proto that declares it and the
servicer class that implements it (the same methods answer native gRPC on the gateway port). The interactive
reference of the same routes, with their fields, is the platform's `GET /docs` (`GET /openapi.json`).

Generated from the descriptor set by `python -m gateway docs`, which `./mesh setup` runs when a proto changes;
do not edit: `tests/unit/test_api_reference.py` fails when this file is stale. Errors are `{"detail"}` or
document 004's envelope, as each route's proto says (`visionmesh.api.v1.error_shape`).

| route | service | RPC | proto | servicer | errors |
|---|---|---|---|---|---|
"""


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def servicer_classes(package_dir: Path) -> dict[str, tuple[Path, str]]:
    """The servicer classes under a service's package, by the gRPC service they implement (the short name): each
    subclasses the generated `<Service>Servicer` base."""
    found: dict[str, tuple[Path, str]] = {}
    for source in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = _base_name(base)
                    if name.endswith("Servicer"):
                        found[name.removesuffix("Servicer")] = (source, node.name)
    return found


def _link(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT).as_posix()
    return f"[{relative}](../{relative})"


def routes_table(descriptor_set: Path) -> str:
    index = DescriptorIndex(read_descriptor_set(descriptor_set))
    rows = []
    servicers: dict[str, dict[str, tuple[Path, str]]] = {}
    for route in sorted(rest_routes(index, api_services(descriptor_set)), key=lambda r: (r.template, r.method)):
        rpc = index.rpcs[route.grpc_method]
        owner = owner_of(rpc.service)
        if owner is None:
            raise SystemExit(f"no mesh service serves {rpc.service}: add its package to services/registry.py")
        if owner.name not in servicers:
            servicers[owner.name] = servicer_classes(REPO_ROOT.joinpath(*owner.module.split(".")))
        service = rpc.service.rpartition(".")[2]
        if service not in servicers[owner.name]:
            raise SystemExit(f"no class of {owner.module} subclasses {service}Servicer")
        source, cls = servicers[owner.name][service]
        proto = _link(REPO_ROOT / "protos" / rpc.proto_file)
        rows.append(
            f"| `{route.method} {route.template}` | {owner.name} | `{service}.{rpc.method.name}` | {proto} "
            f"| {_link(source)} `{cls}` | {route.shape} |"
        )
    return _HEADER + "\n".join(rows) + "\n"


def write_routes_table(descriptor_set: Path, output: Path = ROUTES_TABLE) -> Path:
    output.write_text(routes_table(descriptor_set))
    return output
