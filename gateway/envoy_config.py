"""Render Envoy's configuration from the descriptor set (which services exist) and the settings (ports,
hosts, limits).

One listener serves REST and native gRPC (codec AUTO). The gRPC-JSON transcoder turns each REST call into
its gRPC method, as the protos' google.api.http annotations say, then routes match on the gRPC path
prefix `/<package>.<Service>/` and send it to the owning process. Server reflection and health on the
shared port go to the gateway's own gRPC server. Envoy answers the API reference (/openapi.json, /docs) itself.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.api_reference import REFERENCE_METHODS, REFERENCE_PATHS, StaticResponse, api_reference
from gateway.request_schema import DescriptorIndex, api_services, read_descriptor_set, request_schema, rest_routes
from gateway.settings import GatewaySettings
from services.common.settings import REPO_ROOT
from services.registry import MESH_SERVICES, owner_of

_TYPES = "type.googleapis.com/envoy.extensions"
ERROR_SHAPE = REPO_ROOT / "envoy" / "error_shape.lua"
REQUEST_CHECKS = REPO_ROOT / "envoy" / "request_checks.lua"
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


def upstreams(settings: GatewaySettings) -> dict[str, Upstream]:
    found = {GATEWAY_CLUSTER: Upstream(GATEWAY_CLUSTER, settings.grpc_host, settings.grpc_port)}
    for service in MESH_SERVICES:
        address = service.address()
        found[service.name] = Upstream(service.name, address.grpc_host, address.grpc_port)
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


# Request headers the request checks (envoy/request_checks.lua) set on every REST request: its document's error
# shape, and the 004 `err` of a refusal that is not the default 806 (data format error).
SHAPE_HEADER = "x-vm-error-shape"
CODE_HEADER = "x-vm-error-code"

# Envoy's own texts say what broke inside the mesh (addresses, reset reasons); clients get what they can act on.
_UPSTREAM_FAILURE_FLAGS = ["UF", "UH", "UC", "UO", "URX", "NC"]


def _status_is(code: int, op: str = "EQ") -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": code, "runtime_key": "_"}}}}


def _header_is(name: str, value: str) -> dict[str, Any]:
    return {"header_filter": {"header": {"name": name, "string_match": {"exact": value}}}}


def _all_of(*filters: dict[str, Any]) -> dict[str, Any]:
    return filters[0] if len(filters) == 1 else {"and_filter": {"filters": list(filters)}}


def _detail_body(text: str = "%LOCAL_REPLY_BODY%") -> dict[str, Any]:
    return {"json_format": {"detail": text}}


def _envelope_body(err: int, text: str = "%LOCAL_REPLY_BODY%") -> dict[str, Any]:
    payload = {"err": err, "detail": text}
    return {"json_format": {"code": -3000, "status": "%RESPONSE_CODE%", "message": "失败", "payload": payload}}


def _reply_mappers(settings: GatewaySettings) -> list[dict[str, Any]]:
    """Errors Envoy produces itself (refused requests, unknown routes, limits, a service that is down), in the
    error shape of the request's document, with texts a client can act on. The first mapper that matches wins.

    REST requests carry their shape in SHAPE_HEADER. A request Envoy refused before the request checks ran
    (HTTP framing) gets {"detail"} unless it is native gRPC, which keeps Envoy's grpc-status."""
    texts = [
        (
            {"response_flag_filter": {"flags": _UPSTREAM_FAILURE_FLAGS}},
            "The %UPSTREAM_CLUSTER% service is not reachable right now; try again shortly",
        ),
        (_status_is(413), f"The request body is larger than the {settings.max_request_body_bytes} bytes it may have"),
        (
            _status_is(429),
            f"Too many uploads from this client (at most {settings.upload_rate_per_second} a second, "
            f"{settings.upload_burst} at once); try again in a few seconds",
        ),
    ]
    envelope = _header_is(SHAPE_HEADER, "envelope")
    mappers: list[dict[str, Any]] = [
        {"filter": _all_of(envelope, condition), "body_format_override": _envelope_body(808, text)}
        for condition, text in texts
    ]
    mappers += [
        {
            "filter": _all_of(envelope, _status_is(400), _header_is(CODE_HEADER, "807")),
            "body_format_override": _envelope_body(807),
        },
        {"filter": _all_of(envelope, _status_is(400)), "body_format_override": _envelope_body(806)},
        {"filter": envelope, "body_format_override": _envelope_body(808)},
    ]
    not_grpc = {
        "header_filter": {
            "header": {
                "name": "content-type",
                "string_match": {"prefix": "application/grpc"},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            }
        }
    }
    shaped = {"header_filter": {"header": {"name": SHAPE_HEADER, "present_match": True}}}
    rest = {"or_filter": {"filters": [shaped, not_grpc]}}
    mappers += [
        {"filter": _all_of(rest, condition), "body_format_override": _detail_body(text)} for condition, text in texts
    ]
    # Refused before any filter ran (a path Envoy cannot normalise, such as one with %00): Envoy gives no text.
    unshaped = {"header_filter": {"header": {"name": SHAPE_HEADER, "present_match": True, "invert_match": True}}}
    unreadable = _all_of(unshaped, not_grpc, _status_is(400))
    mappers += [
        {"filter": unreadable, "body_format_override": _detail_body("The request's path or headers cannot be read")},
        # Direct responses (the API reference) are local replies too: only errors are reshaped.
        {"filter": _all_of(rest, _status_is(400, "GE")), "body_format_override": _detail_body()},
    ]
    return mappers


def _route(prefix: str, cluster: str) -> dict[str, Any]:
    # timeout 0s: no deadline from the gateway; streams (SSE, downloads) may run as long as they need.
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "0s"}}


def _direct_route(response: StaticResponse) -> dict[str, Any]:
    """A path Envoy answers itself with a fixed body (the API reference), outside the transcoder, which answers 404
    for a path it cannot map to a method."""
    content_type = {"key": "content-type", "value": response.content_type}
    return {
        "match": {"path": response.path},
        "direct_response": {"status": 200, "body": {"inline_bytes": base64.b64encode(response.body).decode()}},
        "response_headers_to_add": [{"header": content_type, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _upload_rate_limit(upload_methods: list[str], settings: GatewaySettings) -> dict[str, Any]:
    """The local rate limit filter: one token bucket per client address, shared by every upload method (REST and
    native gRPC alike, matched once transcoded), since uploads cost disk and CPU; other requests are not limited."""
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    config: dict[str, Any] = {
        "@type": f"{_TYPES}.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "uploads",
        # The bucket of requests no descriptor below matches: effectively unlimited.
        "token_bucket": {"max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"},
    }
    if not settings.upload_rate_per_second or not upload_methods:
        return config

    def upload(method: str) -> dict[str, Any]:
        # Every upload method yields the same descriptor, so they share the client's bucket.
        headers = [{"name": ":path", "string_match": {"exact": method}}]
        return {"header_value_match": {"descriptor_value": "upload", "headers": headers}}

    bucket = {
        "max_tokens": settings.upload_burst,
        "tokens_per_fill": settings.upload_rate_per_second,
        "fill_interval": "1s",
    }
    return config | {
        "filter_enabled": always,
        "filter_enforced": always,
        "rate_limits": [{"actions": [upload(method), {"remote_address": {}}]} for method in upload_methods],
        # An entry without a value gives each client address a bucket of its own.
        "descriptors": [
            {"entries": [{"key": "header_match", "value": "upload"}, {"key": "remote_address"}], "token_bucket": bucket}
        ],
        "response_headers_to_add": [
            {"header": {"key": "retry-after", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }


def _lua_filter(name: str, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": {
            "@type": f"{_TYPES}.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def request_checks_source(settings: GatewaySettings, services: list[str]) -> str:
    """envoy/request_checks.lua with the routes and request shapes of the descriptor set in front of it, and the
    paths Envoy answers itself (which the checks let through)."""
    schema = request_schema(settings.descriptor_set, services)
    schema["pass_through"] = {path: list(REFERENCE_METHODS) for path in REFERENCE_PATHS}
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    level = "=" * 4
    if f"]{level}]" in text:
        raise SystemExit("the request schema contains the Lua long-string terminator")
    return f"local SCHEMA_JSON = [{level}[{text}]{level}]\n" + REQUEST_CHECKS.read_text()


def _owner(grpc_service: str) -> str:
    owner = owner_of(grpc_service)
    if owner is None:
        raise SystemExit(f"no mesh service serves {grpc_service}: add its package to services/registry.py")
    return owner.name


def render(settings: GatewaySettings, descriptor_path: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap config. `descriptor_path` is where Envoy will read the descriptor set (it
    differs from settings.descriptor_set when Envoy runs in another container)."""
    services = api_services(settings.descriptor_set)
    targets = upstreams(settings)
    index = DescriptorIndex(read_descriptor_set(settings.descriptor_set))
    uploads = sorted({route.grpc_method for route in rest_routes(index, services) if route.streamed_body})
    reference = api_reference(settings.descriptor_set)
    routes = [_direct_route(response) for response in reference]
    routes += [_route(f"/{service}/", _owner(service)) for service in services]
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
        "local_reply_config": {"mappers": _reply_mappers(settings)},
        "route_config": {
            "name": "mesh",
            "max_direct_response_body_size_bytes": max(len(response.body) for response in reference),
            "virtual_hosts": [{"name": "mesh", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            _lua_filter("visionmesh.request_checks", request_checks_source(settings, services)),
            _lua_filter("visionmesh.error_shape", ERROR_SHAPE.read_text()),
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _upload_rate_limit(uploads, settings)},
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
                    # Also the most a request body may hold where a filter buffers it whole (JSON bodies).
                    "per_connection_buffer_limit_bytes": settings.max_request_body_bytes,
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
    # libyaml's dumper: the pure-Python one takes a second over the API reference's inline files.
    path.write_text(yaml.dump(render(settings, descriptor_path), Dumper=yaml.CSafeDumper, sort_keys=False))
    return path


def envoy_command(settings: GatewaySettings, config: Path, envoy_binary: str = "envoy") -> list[str]:
    command = [envoy_binary, "-c", str(config), "--log-level", settings.envoy_log_level, "--disable-hot-restart"]
    if settings.envoy_concurrency:
        command += ["--concurrency", str(settings.envoy_concurrency)]
    return command
