"""The OpenAPI 3.1 document of the mesh's public REST routes, generated from the descriptor set.

Everything comes from protos/: the routes and error shapes as the request checks read them (rest_routes), the
message shapes from the same SchemaBuilder, the descriptions from the proto comments. JSON follows what the gateway
prints (proto3 JSON mapping with the proto field names: snake_case; 64-bit integers as strings; Struct, ListValue
and Value as JSON objects, arrays and any value). Envoy serves it at GET /openapi.json, and `./mesh setup` writes
it to build/openapi.json.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.request_schema import DescriptorIndex, Route, SchemaBuilder, api_services, read_descriptor_set, rest_routes
from services.common.settings import REPO_ROOT

OPENAPI_VERSION = "3.1.0"
# Document 004's error body, as its services send it (the gateway copies it to the REST answer).
ENVELOPE_MESSAGE = "visionmesh.envelope.v1.ErrorEnvelope"
_SCHEMAS = "#/components/schemas/"

_SCALARS: dict[str, dict[str, Any]] = {
    "double": {"type": "number", "format": "double"},
    "float": {"type": "number", "format": "float"},
    "int32": {"type": "integer", "format": "int32"},
    "uint32": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    # proto3 JSON prints 64-bit integers as strings (requests may send numbers too).
    "int64": {"type": "string", "format": "int64"},
    "uint64": {"type": "string", "format": "uint64"},
    "bool": {"type": "boolean"},
    "string": {"type": "string"},
    "bytes": {"type": "string", "contentEncoding": "base64"},
    "struct": {"type": "object"},
    "list": {"type": "array"},
    "value": {},  # google.protobuf.Value: any JSON value, null included
}
# Fields a query string cannot set (the request checks refuse them there).
_NOT_IN_QUERY = {"map", "struct", "list", "value", "httpbody"}

_DESCRIPTION = """\
The REST routes of VisionMesh, generated from the protos (`protos/`): each route is a gRPC method that Envoy's
gRPC-JSON transcoder calls, and the same methods answer native gRPC on the same port. `docs/routes.md` names the
service, RPC, proto and servicer file behind each route.

JSON fields are the proto field names (snake_case), as answers print them; requests also accept the lowerCamelCase
spelling. The gateway refuses unknown fields, values of the wrong type or range and missing required fields with a
400 in the route's error shape: `{"detail": "..."}` (documents 000 and 002) or document 004's envelope. 64-bit
integers are JSON strings. Document 002's routes (`/api/...`) also answer on port 8001."""


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return schema | {"description": description} if description else schema


def _path_of(template: str) -> str:
    """An HTTP rule template as an OpenAPI path: `{path=**}` -> `{path}` (the value may hold slashes)."""
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template)


class _Document:
    def __init__(self, index: DescriptorIndex) -> None:
        self._index = index
        self._builder = SchemaBuilder(index)
        self._operation_ids: set[str] = set()

    def single(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The JSON schema of one value of a field (the builder's field spec), repetition aside."""
        kind = spec["kind"]
        if kind in ("message", "enum"):
            return {"$ref": _SCHEMAS + spec["type"]}
        if kind == "map":
            return {"type": "object", "additionalProperties": self.single(spec["value"])}
        if kind == "httpbody":
            return {"type": "string", "contentMediaType": "application/octet-stream"}
        return dict(_SCALARS[kind])

    def field(self, spec: dict[str, Any], owner: str) -> dict[str, Any]:
        single = self.single(spec)
        schema = {"type": "array", "items": single} if spec.get("repeated") else single
        return _described(schema, self._index.comments.get(f"{owner}.{spec['name']}", ""))

    def message(self, name: str, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
        """A message as a JSON object schema, without the fields in `leave_out` (those the path gives)."""
        fields = [spec for spec in self._builder.messages[name]["fields"] if spec["name"] not in leave_out]
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {spec["name"]: self.field(spec, name) for spec in fields},
        }
        required = [spec["name"] for spec in fields if spec.get("required")]
        if required:
            schema["required"] = required
        return _described(schema, self._index.comments.get(name, ""))

    def enum(self, name: str) -> dict[str, Any]:
        names = self._builder.enums[name]
        lines = [self._index.comments.get(name, "")]
        lines += [f"- `{value}`: {text}" for value in names if (text := self._index.comments.get(f"{name}.{value}"))]
        return _described({"type": "string", "enum": names}, "\n".join(line for line in lines if line))

    def _field_at(self, message: str, dotted: str) -> tuple[dict[str, Any], str]:
        """The field spec a dotted field path names, and the message that declares it."""
        owner, spec = message, None
        for part in dotted.split("."):
            if spec is not None:
                owner = spec["type"]
            spec = next(s for s in self._builder.messages[owner]["fields"] if s["name"] == part)
        assert spec is not None
        return spec, owner

    def _query_parameters(
        self, message: str, bound: set[str], prefix: str = "", outer: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """The fields a query string may set: the request's fields not bound to the path or the body, the fields
        of a message field by their dotted paths (`outer`: the messages around, where recursion stops)."""
        parameters = []
        for spec in self._builder.messages[message]["fields"]:
            name = prefix + spec["name"]
            if name in bound or spec["kind"] in _NOT_IN_QUERY:
                continue
            if spec["kind"] == "message":
                if spec["type"] not in (*outer, message):
                    parameters += self._query_parameters(spec["type"], bound, f"{name}.", (*outer, message))
                continue
            parameter = {"name": name, "in": "query", "schema": self.field(spec, message)}
            if spec.get("required"):
                parameter["required"] = True
            parameters.append(parameter)
        return parameters

    def _request_body(self, route: Route, bound: set[str]) -> dict[str, Any] | None:
        if not route.body:
            return None
        if route.body == "*":
            leave_out = frozenset(bound)
            top = self.message(route.request_type, leave_out)
            schema = top if leave_out else {"$ref": _SCHEMAS + route.request_type}
            return {"required": "required" in top, "content": {"application/json": {"schema": schema}}}
        spec, owner = self._field_at(route.request_type, route.body)
        if spec["kind"] == "httpbody":
            # The raw body reaches the service, which parses the form; the RPC's comment names its fields.
            form = {"type": "object", "description": "The form fields the route's description names."}
            return {"required": True, "content": {"multipart/form-data": {"schema": form}}}
        return {
            "required": bool(spec.get("required")),
            "content": {"application/json": {"schema": self.field(spec, owner)}},
        }

    def _response(self, output_type: str, streamed: bool) -> dict[str, Any]:
        if output_type == ".google.api.HttpBody":
            # The service sets the body's media type (a ZIP, an image, Server-Sent Events...): see the description.
            schema = {"type": "string", "contentMediaType": "application/octet-stream"}
            return {"description": "The body the RPC's description names.", "content": {"*/*": {"schema": schema}}}
        name = self._builder.message(output_type.lstrip("."))
        schema: dict[str, Any] = {"$ref": _SCHEMAS + name}
        if streamed:
            schema = {"type": "array", "items": schema}  # the transcoder streams the messages as one JSON array
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    def _operation_id(self, rpc_name: str) -> str:
        candidate, number = rpc_name, 1
        while candidate in self._operation_ids:
            number += 1
            candidate = f"{rpc_name}_{number}"
        self._operation_ids.add(candidate)
        return candidate

    def operation(self, route: Route) -> dict[str, Any]:
        rpc = self._index.rpcs[route.grpc_method]
        service = rpc.service.rpartition(".")[2]
        self._builder.message(route.request_type)
        variables = route.lua_pattern()[1]
        multi_segment = {s[1:].partition("=")[0] for s in route.segments if s.startswith("{") and "**" in s}
        parameters = []
        for variable in variables:
            spec, owner = self._field_at(route.request_type, variable)
            parameter = {"name": variable, "in": "path", "required": True, "schema": self.field(spec, owner)}
            if variable in multi_segment:
                parameter["description"] = "A path of several segments (it may hold slashes)."
            parameters.append(parameter)
        bound = set(variables) | ({route.body} if route.body else set())
        if route.body != "*":
            parameters += self._query_parameters(route.request_type, bound)
        comment = self._index.comments.get(f"{rpc.service}.{rpc.method.name}", "")
        operation: dict[str, Any] = {
            "tags": [service],
            "summary": rpc.method.name,
            "description": "\n\n".join(
                part for part in (comment, f"gRPC `{route.grpc_method}` ({rpc.proto_file}).") if part
            ),
            "operationId": self._operation_id(f"{service}.{rpc.method.name}"),
            "x-grpc-method": route.grpc_method,
        }
        if parameters:
            operation["parameters"] = parameters
        body = self._request_body(route, set(variables))
        if body is not None:
            operation["requestBody"] = body
        error = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[route.shape]}"}
        operation["responses"] = {
            "200": self._response(rpc.method.output_type, rpc.method.server_streaming),
            "4XX": error,
            "5XX": error,
        }
        return operation

    def components(self) -> dict[str, Any]:
        self._builder.message(ENVELOPE_MESSAGE)
        schemas: dict[str, Any] = {
            "ErrorDetail": {
                "type": "object",
                "properties": {"detail": {"type": "string", "description": "What went wrong, for a person."}},
                "required": ["detail"],
                "description": 'The error body of documents 000 and 002: {"detail": "..."}.',
            }
        }
        schemas |= {name: self.message(name) for name in sorted(self._builder.messages)}
        schemas |= {name: self.enum(name) for name in sorted(self._builder.enums)}
        responses = {
            "DetailError": {
                "description": "400 bad input, 404 unknown ID or route, 405 another method, 409 conflict, 413 too "
                "large, 429 too many uploads, 500 (names the request ID), 503 a service is down.",
                "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "ErrorDetail"}}},
            },
            "EnvelopeError": {
                "description": "Document 004's envelope: code -3000, the HTTP status, message 失败, payload.err (806 "
                "bad data, 807 invalid parameter, 808 unknown error, ...) and payload.detail.",
                "content": {"application/json": {"schema": {"$ref": _SCHEMAS + ENVELOPE_MESSAGE}}},
            },
        }
        return {"schemas": schemas, "responses": responses}


_ERROR_RESPONSES = {"detail": "DetailError", "envelope": "EnvelopeError"}


def _project_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def openapi_document(descriptor_set: Path) -> dict[str, Any]:
    """The OpenAPI document of every REST route of the public services (internal ones are left out)."""
    index = DescriptorIndex(read_descriptor_set(descriptor_set))
    services = api_services(descriptor_set)
    document = _Document(index)
    paths: dict[str, dict[str, Any]] = {}
    routes = sorted(rest_routes(index, services), key=lambda route: route.template)
    for route in routes:
        paths.setdefault(_path_of(route.template), {})[route.method.lower()] = document.operation(route)
    routed = sorted({index.rpcs[route.grpc_method].service for route in routes})
    names = [service.rpartition(".")[2] for service in routed]
    if len(set(names)) < len(names):
        raise SystemExit(f"two routed services share a name, which the OpenAPI tags cannot tell apart: {names}")
    tags = [_described({"name": name}, index.comments[service]) for name, service in zip(names, routed, strict=True)]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "VisionMesh REST API", "version": _project_version(), "description": _DESCRIPTION},
        "tags": tags,
        "paths": paths,
        "components": document.components(),
    }
