"""Render Envoy's configuration from the descriptor set (which services exist) and the settings (ports,
hosts, limits).

One listener serves REST and native gRPC (codec AUTO). The gRPC-JSON transcoder turns each REST call into
its gRPC method, as the protos' google.api.http annotations say, then routes match on the gRPC path
prefix `/<package>.<Service>/` and send it to the owning process. Server reflection and health on the
shared port go to the gateway's own gRPC server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2
from visionmesh.api.v1 import gateway_pb2

from gateway.settings import GatewaySettings
from services.common.settings import REPO_ROOT
from services.registry import MESH_SERVICES, owner_of

_TYPES = "type.googleapis.com/envoy.extensions"
LUA_FILTER = REPO_ROOT / "envoy" / "error_shape.lua"
GATEWAY_CLUSTER = "gateway"
# Served by the gateway's own gRPC server for the whole mesh.
GATEWAY_GRPC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


@dataclass(frozen=True)
class Upstream:
    cluster: str
    host: str
    port: int


def api_services(descriptor_set: Path) -> list[str]:
    """Fully qualified names of the mesh's public gRPC services in the descriptor set: what the gateway routes and
    lists. Services marked `(visionmesh.api.v1.internal)` stay on their owners' own ports."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return sorted(
        f"{proto.package}.{service.name}"
        for proto in files.file
        if proto.package.startswith("visionmesh.")
        for service in proto.service
        if not service.options.Extensions[gateway_pb2.internal]
    )


def upstreams(settings: GatewaySettings) -> dict[str, Upstream]:
    found = {GATEWAY_CLUSTER: Upstream(GATEWAY_CLUSTER, settings.grpc_host, settings.grpc_port)}
    for service in MESH_SERVICES:
        service_settings = service.settings()
        found[service.name] = Upstream(service.name, service_settings.grpc_host, service_settings.grpc_port)
    return found


def _cluster(upstream: Upstream) -> dict[str, Any]:
    return {
        "name": upstream.cluster,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_ONLY",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 1000}},
            }
        },
        # Streams (log follow, video) are long-lived: allow many at once.
        "circuit_breakers": {"thresholds": [{"max_requests": 10000, "max_pending_requests": 10000}]},
        "load_assignment": {
            "cluster_name": upstream.cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


# Routes of document 004, whose errors are its envelope {"code": -3000, "status", "message", "payload": {"err"}}.
ENVELOPE_PATHS = r"/(imgSeg/|ingest).*"  # Envoy regexes match the whole path


def _envelope_reply_mappers() -> list[dict[str, Any]]:
    """Errors Envoy produces itself on document 004's routes, in that document's envelope: a body the transcoder
    cannot parse is err 806 (data format error), anything else (unknown route, service down) err 808. Only REST
    requests have such a path (in x-envoy-original-path once transcoded); native gRPC paths are /<service>/."""
    on_envelope_path = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": name, "string_match": {"safe_regex": {"regex": ENVELOPE_PATHS}}}}}
                for name in ("x-envoy-original-path", ":path")
            ]
        }
    }
    bad_request = {
        "status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 400, "runtime_key": "_"}}}
    }

    def envelope(err: int) -> dict[str, Any]:
        payload = {"err": err, "detail": "%LOCAL_REPLY_BODY%"}
        return {"json_format": {"code": -3000, "status": "%RESPONSE_CODE%", "message": "失败", "payload": payload}}

    return [
        {
            "filter": {"and_filter": {"filters": [on_envelope_path, bad_request]}},
            "body_format_override": envelope(806),
        },
        {"filter": on_envelope_path, "body_format_override": envelope(808)},
    ]


def _route(prefix: str, cluster: str) -> dict[str, Any]:
    # timeout 0s: no deadline from the gateway; streams (SSE, downloads) may run as long as they need.
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "0s"}}


def render(settings: GatewaySettings, descriptor_path: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap config. `descriptor_path` is where Envoy will read the descriptor set (it
    differs from settings.descriptor_set when Envoy runs in another container)."""
    services = api_services(settings.descriptor_set)
    targets = upstreams(settings)
    routes = []
    for service in services:
        owner = owner_of(service)
        if owner is None:
            raise SystemExit(f"no mesh service serves {service}: add its package to services/registry.py")
        routes.append(_route(f"/{service}/", owner.name))
    routes += [_route(f"/{service}/", GATEWAY_CLUSTER) for service in GATEWAY_GRPC_SERVICES]

    transcoder = {
        "@type": f"{_TYPES}.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": str(descriptor_path or settings.descriptor_set),
        "services": services,
        "print_options": {"always_print_primitive_fields": True, "preserve_proto_field_names": True},
        "convert_grpc_status": True,
        "ignore_unknown_query_parameters": True,
        "query_param_unescape_plus": True,
        "request_validation_options": {"reject_unknown_method": True},
        "max_request_body_size": settings.max_request_body_bytes,
        "max_response_body_size": settings.max_response_body_bytes,
    }
    connection_manager: dict[str, Any] = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "normalize_path": True,
        "merge_slashes": True,
        "always_set_request_id_in_response": True,
        "http_protocol_options": {"enable_trailers": True},
        "http2_protocol_options": {"max_concurrent_streams": 1000},
        # Errors Envoy produces itself (bad JSON, unknown route, upstream down) in the documents' shape, for
        # REST clients only: a request the transcoder rewrote keeps its REST path in x-envoy-original-path,
        # one it refused still has its own content type. Native gRPC clients keep Envoy's grpc-message.
        "local_reply_config": {
            "mappers": [
                *_envelope_reply_mappers(),
                {
                    "filter": {
                        "or_filter": {
                            "filters": [
                                {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}},
                                {
                                    "header_filter": {
                                        "header": {
                                            "name": "content-type",
                                            "string_match": {"prefix": "application/grpc"},
                                            "invert_match": True,
                                            "treat_missing_header_as_empty": True,
                                        }
                                    }
                                },
                            ]
                        }
                    },
                    "body_format_override": {"json_format": {"detail": "%LOCAL_REPLY_BODY%"}},
                },
            ]
        },
        "route_config": {
            "name": "mesh",
            "virtual_hosts": [{"name": "mesh", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": LUA_FILTER.read_text()},
                },
            },
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
            },
        ],
    }
    if settings.access_log:
        connection_manager["access_log"] = [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": f"{_TYPES}.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {
                        "json_format": {
                            "time": "%START_TIME%",
                            "method": "%REQ(:METHOD)%",
                            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                            "status": "%RESPONSE_CODE%",
                            "duration_ms": "%DURATION%",
                            "request_id": "%REQ(X-REQUEST-ID)%",
                            "upstream": "%UPSTREAM_CLUSTER%",
                            "bytes_sent": "%BYTES_SENT%",
                        }
                    },
                },
            }
        ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": settings.admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {"socket_address": {"address": settings.bind_host, "port_value": settings.http_port}},
                    # The 002 document's clients call port 8001: the same routes answer there too.
                    "additional_addresses": [
                        {"address": {"socket_address": {"address": settings.bind_host, "port_value": port}}}
                        for port in settings.extra_http_ports
                    ],
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(upstream) for upstream in targets.values()],
        },
    }


def write_config(settings: GatewaySettings, output: Path | None = None, descriptor_path: Path | None = None) -> Path:
    path = output or settings.config_dir / "envoy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render(settings, descriptor_path), sort_keys=False))
    return path


def envoy_command(settings: GatewaySettings, config: Path, envoy_binary: str = "envoy") -> list[str]:
    command = [envoy_binary, "-c", str(config), "--log-level", settings.envoy_log_level, "--disable-hot-restart"]
    if settings.envoy_concurrency:
        command += ["--concurrency", str(settings.envoy_concurrency)]
    return command
