"""The routes and request shapes the gateway's request checks get from the descriptor set."""

from __future__ import annotations

import json
import re

import pytest

from gateway.envoy_config import api_services, request_checks_source
from gateway.request_schema import Route, request_schema
from gateway.settings import GatewaySettings

DESCRIPTOR = GatewaySettings().descriptor_set


@pytest.fixture(scope="module")
def schema() -> dict:
    return request_schema(DESCRIPTOR, api_services(DESCRIPTOR))


def _route(schema: dict, method: str, template: str) -> dict:
    return next(r for r in schema["routes"] if r["method"] == method and r["template"] == template)


def _lua_to_regex(pattern: str) -> str:
    """Enough of Lua's pattern syntax for the patterns the schema renders."""
    return re.sub(r"%(.)", lambda m: re.escape(m.group(1)), pattern).replace("^", r"\A", 1).replace("$", r"\Z")


def _first_match(schema: dict, method: str, path: str) -> dict:
    return next(r for r in schema["routes"] if r["method"] == method and re.match(_lua_to_regex(r["pattern"]), path))


def test_every_public_route_is_there_and_internal_services_are_not(schema: dict) -> None:
    templates = {(r["method"], r["template"]) for r in schema["routes"]}
    assert ("POST", "/annotations/tasks/{task_id}/items/{image_id}") in templates
    assert ("GET", "/static/datasets/{path=**}") in templates
    assert ("POST", "/imgSeg/v1/predictText") in templates
    assert "visionmesh.inference.v1.ServingControl" not in api_services(DESCRIPTOR)
    assert "visionmesh.ocr.v1.TextReader" not in api_services(DESCRIPTOR)


def test_literal_segments_win_over_variables_as_in_the_transcoder(schema: dict) -> None:
    assert _first_match(schema, "POST", "/infer/batch/run")["template"] == "/infer/batch/run"
    assert _first_match(schema, "POST", "/infer/video/export")["template"] == "/infer/video/{model_id}"
    assert _first_match(schema, "POST", "/infer/m1/export")["template"] == "/infer/{model_id}/export"
    assert _first_match(schema, "POST", "/datasets/upload")["template"] == "/datasets/upload"
    assert _first_match(schema, "GET", "/static/datasets/ds_1/v1/images/a.jpg")["variables"] == ["path"]
    assert Route("GET", "/a/{b}/c", "", "", "", False, "detail").precedence() == (0, 1, 0)


def test_path_patterns_capture_variables_and_escape_lua_magic() -> None:
    route = Route("GET", "/a-b/{x.y}/c.d/{rest=**}", "", "", "", False, "detail")
    assert route.lua_pattern() == ("^/a%-b/([^/]+)/c%.d/(.+)$", ["x.y", "rest"])
    assert Route("POST", "/v1/{name}:cancel", "", "", "", False, "detail").lua_pattern() == (
        "^/v1/([^/]+):cancel$",
        ["name"],
    )


def test_required_fields_kinds_and_shapes(schema: dict) -> None:
    save = _route(schema, "POST", "/annotations/tasks/{task_id}/items/{image_id}")
    assert save["body"] == "*" and save["variables"] == ["task_id", "image_id"] and save["shape"] == "detail"
    boxes = next(f for f in schema["messages"][save["message"]]["fields"] if f["name"] == "boxes")
    assert boxes == {
        "name": "boxes",
        "json": "boxes",
        "kind": "message",
        "type": "visionmesh.dataset.v1.Box",
        "repeated": True,
        "required": True,
    }
    box = schema["messages"]["visionmesh.dataset.v1.Box"]["fields"]
    assert all(field["required"] for field in box)
    assert {field["name"]: field["kind"] for field in box} == {
        "class_id": "int32",
        "x1": "double",
        "y1": "double",
        "x2": "double",
        "y2": "double",
    }
    resources = schema["messages"][_route(schema, "POST", "/imgSeg/v1/addTrainResource")["message"]]["fields"]
    dataset = next(f for f in resources if f["name"] == "dataset")
    assert dataset["kind"] == "map" and dataset["key"] == "string" and dataset["value"]["kind"] == "message"
    update = schema["messages"][_route(schema, "PUT", "/datasets/{dataset_id}")["message"]]["fields"]
    assert next(f for f in update if f["name"] == "tags")["kind"] == "list"


def test_error_shapes_follow_the_proto_options(schema: dict) -> None:
    assert _route(schema, "POST", "/imgSeg/v1/predictSam")["shape"] == "envelope"
    assert _route(schema, "GET", "/ingest/status")["shape"] == "envelope"
    assert _route(schema, "GET", "/uploads/{filename}")["shape"] == "detail"  # the document's {"detail"}
    assert _route(schema, "GET", "/datasets")["shape"] == "detail"
    assert schema["prefix_shapes"]["imgSeg"] == "envelope" and schema["prefix_shapes"]["infer"] == "detail"


def test_uploads_have_streamed_bodies(schema: dict) -> None:
    streamed = {r["template"] for r in schema["routes"] if r["streamed_body"]}
    assert {"/datasets/upload", "/models/upload", "/infer/{model_id}", "/ingest"} <= streamed
    assert "/train/jobs" not in streamed


def test_the_filter_source_embeds_the_schema_as_json() -> None:
    settings = GatewaySettings()
    source = request_checks_source(settings, api_services(settings.descriptor_set))
    head, _, rest = source.partition("\n")
    assert head.startswith("local SCHEMA_JSON = [====[") and head.endswith("]====]")
    assert json.loads(head.removeprefix("local SCHEMA_JSON = [====[").removesuffix("]====]"))["routes"]
    assert "function envoy_on_request(handle)" in rest
