"""The REST routes of the mesh and the shapes of their requests, read from the descriptor set, for the gateway's
request checks (envoy/request_checks.lua).

Envoy's gRPC-JSON transcoder drops unknown JSON fields and answers type errors in protobuf's words. Before it
runs, the Lua filter resolves each REST request to its route (as the transcoder would: literal segments before
wildcards), checks path and query values (valid UTF-8, the field's type), parses a JSON body strictly and walks
it against the request message: unknown fields, wrong types, out-of-range numbers, unknown enum names, and the
fields marked `(google.api.field_behavior) = REQUIRED`. This module gives it the facts, as one JSON document
embedded in the filter's source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from visionmesh.api.v1 import gateway_pb2

FieldType = descriptor_pb2.FieldDescriptorProto

_SCALAR_KINDS = {
    FieldType.TYPE_DOUBLE: "double",
    FieldType.TYPE_FLOAT: "float",
    FieldType.TYPE_INT64: "int64",
    FieldType.TYPE_SINT64: "int64",
    FieldType.TYPE_SFIXED64: "int64",
    FieldType.TYPE_UINT64: "uint64",
    FieldType.TYPE_FIXED64: "uint64",
    FieldType.TYPE_INT32: "int32",
    FieldType.TYPE_SINT32: "int32",
    FieldType.TYPE_SFIXED32: "int32",
    FieldType.TYPE_UINT32: "uint32",
    FieldType.TYPE_FIXED32: "uint32",
    FieldType.TYPE_BOOL: "bool",
    FieldType.TYPE_STRING: "string",
    FieldType.TYPE_BYTES: "bytes",
}

# Well-known types have their own JSON forms (proto3 JSON mapping); wrappers are their scalar.
_WELL_KNOWN_KINDS = {
    ".google.protobuf.Struct": "struct",
    ".google.protobuf.Value": "value",
    ".google.protobuf.ListValue": "list",
    ".google.protobuf.Any": "struct",
    ".google.protobuf.Empty": "struct",
    ".google.protobuf.Timestamp": "string",
    ".google.protobuf.Duration": "string",
    ".google.protobuf.FieldMask": "string",
    ".google.protobuf.DoubleValue": "double",
    ".google.protobuf.FloatValue": "float",
    ".google.protobuf.Int64Value": "int64",
    ".google.protobuf.UInt64Value": "uint64",
    ".google.protobuf.Int32Value": "int32",
    ".google.protobuf.UInt32Value": "uint32",
    ".google.protobuf.BoolValue": "bool",
    ".google.protobuf.StringValue": "string",
    ".google.protobuf.BytesValue": "bytes",
    ".google.api.HttpBody": "httpbody",
}

_SHAPES = {
    gateway_pb2.ERROR_SHAPE_UNSPECIFIED: "detail",
    gateway_pb2.ERROR_SHAPE_DETAIL: "detail",
    gateway_pb2.ERROR_SHAPE_ENVELOPE: "envelope",
}

_LUA_MAGIC = set("^$()%.[]*+-?")


@dataclass(frozen=True)
class Route:
    """One REST binding of a gRPC method."""

    method: str  # GET, POST, ...
    template: str  # /datasets/{dataset_id}/prepare
    grpc_method: str  # /visionmesh.dataset.v1.DatasetService/PrepareDataset
    request_type: str  # visionmesh.dataset.v1.PrepareDatasetRequest
    body: str  # "*", a field name, or "" (no body)
    streamed_body: bool  # the body is a google.api.HttpBody the service reads itself (uploads)
    shape: str  # detail | envelope

    @property
    def segments(self) -> list[str]:
        return _template_segments(_split_verb(self.template)[0])

    def lua_pattern(self) -> tuple[str, list[str]]:
        """An anchored Lua pattern for the path and the field paths its captures fill, in order."""
        pattern, variables = "^", []
        for segment in self.segments:
            pattern += "/"
            if segment.startswith("{"):
                name, _, sub = segment[1:-1].partition("=")
                variables.append(name)
                pattern += "(.+)" if "**" in sub else "([^/]+)"
            elif segment == "**":
                pattern += ".+"
            elif segment == "*":
                pattern += "[^/]+"
            else:
                pattern += _lua_literal(segment)
        verb = _split_verb(self.template)[1]
        return pattern + (f":{_lua_literal(verb)}" if verb else "") + "$", variables

    def precedence(self) -> tuple[int, ...]:
        """Literal segments win over wildcards, single over multi-segment ones: the transcoder's order."""
        return tuple(
            2 if "**" in segment else 1 if segment.startswith("{") or segment == "*" else 0 for segment in self.segments
        )


def _lua_literal(text: str) -> str:
    return "".join(f"%{c}" if c in _LUA_MAGIC else c for c in text)


def _split_verb(template: str) -> tuple[str, str]:
    """A template's path and its custom verb (`/v1/{name}:cancel` -> `/v1/{name}`, `cancel`): the verb's colon
    is the one outside every {...}."""
    depth = 0
    for index, char in enumerate(template):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ":" and depth == 0:
            return template[:index], template[index + 1 :]
    return template, ""


def _template_segments(path: str) -> list[str]:
    """Split a path template on the slashes outside {...} (a variable may hold several segments)."""
    segments, current, depth = [], "", 0
    for char in path.lstrip("/"):
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    return [*segments, current]


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str, str]]:
    found = []
    for candidate in [rule, *rule.additional_bindings]:
        pattern = candidate.WhichOneof("pattern")
        if pattern == "custom":
            found.append((candidate.custom.kind.upper(), candidate.custom.path, candidate.body))
        elif pattern:
            found.append((pattern.upper(), getattr(candidate, pattern), candidate.body))
    return found


class _Types:
    """Message and enum descriptors of the descriptor set by full name (without the leading dot)."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        for proto in files.file:
            prefix = f"{proto.package}." if proto.package else ""
            for enum in proto.enum_type:
                self.enums[prefix + enum.name] = enum
            for message in proto.message_type:
                self._add(prefix + message.name, message)

    def _add(self, name: str, message: descriptor_pb2.DescriptorProto) -> None:
        self.messages[name] = message
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum
        for nested in message.nested_type:
            self._add(f"{name}.{nested.name}", nested)


class _SchemaBuilder:
    def __init__(self, types: _Types) -> None:
        self._types = types
        self.messages: dict[str, dict[str, Any]] = {}
        self.enums: dict[str, list[str]] = {}

    def field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": field.name, "json": field.json_name}
        if field.type == FieldType.TYPE_MESSAGE:
            entry = self._types.messages.get(field.type_name.lstrip("."))
            if entry is not None and entry.options.map_entry:
                key, value = entry.field
                spec |= {"kind": "map", "key": _SCALAR_KINDS.get(key.type, "string"), "value": self.field(value)}
            elif field.type_name in _WELL_KNOWN_KINDS:
                spec["kind"] = _WELL_KNOWN_KINDS[field.type_name]
            else:
                spec |= {"kind": "message", "type": self.message(field.type_name.lstrip("."))}
        elif field.type == FieldType.TYPE_ENUM:
            spec |= {"kind": "enum", "type": self.enum(field.type_name.lstrip("."))}
        else:
            spec["kind"] = _SCALAR_KINDS[field.type]
        if field.label == FieldType.LABEL_REPEATED and spec["kind"] != "map":
            spec["repeated"] = True
        if field_behavior_pb2.REQUIRED in field.options.Extensions[field_behavior_pb2.field_behavior]:
            spec["required"] = True
        return spec

    def message(self, name: str) -> str:
        if name not in self.messages:
            self.messages[name] = {}  # placeholder: recursive messages refer to themselves
            message = self._types.messages[name]
            self.messages[name] = {"label": message.name, "fields": [self.field(f) for f in message.field]}
        return name

    def enum(self, name: str) -> str:
        if name not in self.enums:
            self.enums[name] = [value.name for value in self._types.enums[name].value]
        return name


def rest_routes(files: descriptor_pb2.FileDescriptorSet, services: list[str]) -> list[Route]:
    """Every REST binding of the given gRPC services, in the transcoder's matching order."""
    routes = []
    for proto in files.file:
        for service in proto.service:
            full_name = f"{proto.package}.{service.name}"
            if full_name not in services:
                continue
            service_shape = service.options.Extensions[gateway_pb2.error_shape]
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                shape = method.options.Extensions[gateway_pb2.method_error_shape] or service_shape
                for verb, template, body in _bindings(method.options.Extensions[annotations_pb2.http]):
                    routes.append(
                        Route(
                            method=verb,
                            template=template,
                            grpc_method=f"/{full_name}/{method.name}",
                            request_type=method.input_type.lstrip("."),
                            body=body,
                            streamed_body=method.client_streaming,
                            shape=_SHAPES[shape],
                        )
                    )
    return sorted(routes, key=Route.precedence)


def request_schema(descriptor_set: Path, services: list[str]) -> dict[str, Any]:
    """What envoy/request_checks.lua needs: the routes (with Lua path patterns), every message and enum their
    requests use, and the error shape of each first path segment (for requests that match no route)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    builder = _SchemaBuilder(_Types(files))
    routes = rest_routes(files, services)
    rendered = []
    for route in routes:
        pattern, variables = route.lua_pattern()
        rendered.append(
            {
                "method": route.method,
                "template": route.template,
                "pattern": pattern,
                "variables": variables,
                "message": builder.message(route.request_type),
                "body": route.body,
                "streamed_body": route.streamed_body,
                "shape": route.shape,
            }
        )
    first_segments: dict[str, set[str]] = {}
    for route in routes:
        first_segments.setdefault(route.segments[0], set()).add(route.shape)
    prefix_shapes = {segment: shapes.pop() for segment, shapes in first_segments.items() if len(shapes) == 1}
    return {"routes": rendered, "messages": builder.messages, "enums": builder.enums, "prefix_shapes": prefix_shapes}


def request_schema_json(descriptor_set: Path, services: list[str]) -> str:
    return json.dumps(request_schema(descriptor_set, services), separators=(",", ":"), ensure_ascii=False)
