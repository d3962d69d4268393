"""Protobuf well-known types as the REST contract needs them (JSON null, arrays whose absence matters)."""

from __future__ import annotations

from google.protobuf import struct_pb2

from services.common.errors import InvalidArgument


def nullable(value: str | None) -> struct_pb2.Value:
    """A JSON string, or null where the documents print null."""
    return struct_pb2.Value(string_value=value) if value else struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)


def string_list(values: struct_pb2.ListValue, field: str) -> list[str]:
    """A JSON array of strings sent as a ListValue (which keeps "absent" apart from "empty")."""
    if any(value.WhichOneof("kind") != "string_value" for value in values.values):
        raise InvalidArgument(f"{field} must be an array of strings")
    return [value.string_value for value in values.values]
