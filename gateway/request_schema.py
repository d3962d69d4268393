"""The REST routes of the mesh and the shapes of their messages, read from the descriptor set: for the gateway's
request checks (envoy/request_checks.lua) and for the API reference (gateway/openapi.py, gateway/routes_table.py).

Envoy's gRPC-JSON transcoder drops unknown JSON fields and answers type errors in protobuf's words. Before it
runs, the Lua filter resolves each REST request to its route (as the transcoder would: literal segments before
wildcards), checks path and query values (valid UTF-8, the field's type), parses a JSON body strictly and walks
it against the request message: unknown fields, wrong types, out-of-range numbers, unknown enum names, and the
fields marked `(google.api.field_behavior) = REQUIRED`. This module gives it the facts, as one JSON document
embedded in the filter's source.
"""

from __future__ import annotations

import textwrap
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


def read_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def api_services(descriptor_set: Path) -> list[str]:
    """Fully qualified names of the mesh's public gRPC services in the descriptor set: what the gateway routes and
    lists. Services marked `(visionmesh.api.v1.internal)` stay on their owners' own ports."""
    return sorted(
        f"{proto.package}.{service.name}"
        for proto in read_descriptor_set(descriptor_set).file
        if proto.package.startswith("visionmesh.")
        for service in proto.service
        if not service.options.Extensions[gateway_pb2.internal]
    )


@dataclass(frozen=True)
class Rpc:
    """A gRPC method and where it is declared."""

    proto_file: str  # visionmesh/dataset/v1/dataset.proto
    service: str  # visionmesh.dataset.v1.DatasetService
    method: descriptor_pb2.MethodDescriptorProto


# Field numbers in descriptor.proto: the paths of source_code_info locations.
_FILE_MESSAGES, _FILE_ENUMS, _FILE_SERVICES = 4, 5, 6
_MESSAGE_FIELDS, _MESSAGE_NESTED, _MESSAGE_ENUMS = 2, 3, 4
_ENUM_VALUES, _SERVICE_METHODS = 2, 2


def _comment(location: descriptor_pb2.SourceCodeInfo.Location | None) -> str:
    if location is None:
        return ""
    parts = (textwrap.dedent(text).strip() for text in (location.leading_comments, location.trailing_comments))
    return "\n".join(part for part in parts if part)


class DescriptorIndex:
    """Messages, enums and RPCs of the descriptor set by full name (without the leading dot), and the proto comment
    of each message, field, enum, enum value, service and method (the set is built with --include_source_info)."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        self.rpcs: dict[str, Rpc] = {}  # by gRPC path: /visionmesh.dataset.v1.DatasetService/UploadDataset
        self.comments: dict[str, str] = {}
        for proto in files.file:
            locations = {tuple(location.path): location for location in proto.source_code_info.location}
            prefix = f"{proto.package}." if proto.package else ""
            for index, enum in enumerate(proto.enum_type):
                self._add_enum(prefix + enum.name, enum, (_FILE_ENUMS, index), locations)
            for index, message in enumerate(proto.message_type):
                self._add(prefix + message.name, message, (_FILE_MESSAGES, index), locations)
            for index, service in enumerate(proto.service):
                name = prefix + service.name
                self.services[name] = service
                self.comments[name] = _comment(locations.get((_FILE_SERVICES, index)))
                for number, method in enumerate(service.method):
                    self.rpcs[f"/{name}/{method.name}"] = Rpc(proto.name, name, method)
                    path = (_FILE_SERVICES, index, _SERVICE_METHODS, number)
                    self.comments[f"{name}.{method.name}"] = _comment(locations.get(path))

    def _add(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        locations: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location],
    ) -> None:
        self.messages[name] = message
        self.comments[name] = _comment(locations.get(path))
        for index, field in enumerate(message.field):
            self.comments[f"{name}.{field.name}"] = _comment(locations.get((*path, _MESSAGE_FIELDS, index)))
        for index, enum in enumerate(message.enum_type):
            self._add_enum(f"{name}.{enum.name}", enum, (*path, _MESSAGE_ENUMS, index), locations)
        for index, nested in enumerate(message.nested_type):
            self._add(f"{name}.{nested.name}", nested, (*path, _MESSAGE_NESTED, index), locations)

    def _add_enum(
        self,
        name: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        locations: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location],
    ) -> None:
        self.enums[name] = enum
        self.comments[name] = _comment(locations.get(path))
        for index, value in enumerate(enum.value):
            self.comments[f"{name}.{value.name}"] = _comment(locations.get((*path, _ENUM_VALUES, index)))


class SchemaBuilder:
    """The shape of each message and enum a route uses, as plain data: for every field its proto and JSON names, its
    kind (a scalar, enum, message, map or well-known JSON form), whether it repeats and whether it is required."""

    def __init__(self, types: DescriptorIndex) -> None:
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


def rest_routes(index: DescriptorIndex, services: list[str]) -> list[Route]:
    """Every REST binding of the given gRPC services, in the transcoder's matching order."""
    routes = []
    for grpc_method, rpc in index.rpcs.items():
        method = rpc.method
        if rpc.service not in services or not method.options.HasExtension(annotations_pb2.http):
            continue
        service_shape = index.services[rpc.service].options.Extensions[gateway_pb2.error_shape]
        shape = method.options.Extensions[gateway_pb2.method_error_shape] or service_shape
        for verb, template, body in _bindings(method.options.Extensions[annotations_pb2.http]):
            routes.append(
                Route(
                    method=verb,
                    template=template,
                    grpc_method=grpc_method,
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
    index = DescriptorIndex(read_descriptor_set(descriptor_set))
    builder = SchemaBuilder(index)
    routes = rest_routes(index, services)
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
