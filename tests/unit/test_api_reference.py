"""The API reference: the OpenAPI document, docs/routes.md, and the /docs page Envoy serves, all from the
descriptor set."""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from gateway.api_reference import DOCS_PATH, REFERENCE_METHODS, REFERENCE_PATHS, api_reference
from gateway.envoy_config import render, request_checks_source
from gateway.openapi import openapi_document
from gateway.request_schema import DescriptorIndex, Route, api_services, read_descriptor_set, rest_routes
from gateway.routes_table import ROUTES_TABLE, routes_table
from gateway.settings import GatewaySettings

DESCRIPTOR = GatewaySettings().descriptor_set
SCHEMAS = "#/components/schemas/"


@pytest.fixture(scope="module")
def routes() -> list[Route]:
    return rest_routes(DescriptorIndex(read_descriptor_set(DESCRIPTOR)), api_services(DESCRIPTOR))


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document(DESCRIPTOR)


def _operation(document: dict, method: str, path: str) -> dict:
    return document["paths"][path][method.lower()]


def _schema(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_1(document: dict) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_of_the_protos_is_in_the_document_once(document: dict, routes: list[Route]) -> None:
    assert len(routes) > 50
    documented = [
        (method.upper(), operation["x-grpc-method"])
        for path_item in document["paths"].values()
        for method, operation in path_item.items()
    ]
    assert sorted(documented) == sorted((route.method, route.grpc_method) for route in routes)
    paths = {re.sub(r"=[^}]*}", "}", route.template) for route in routes}
    assert set(document["paths"]) == paths


def test_internal_services_are_left_out(document: dict) -> None:
    text = json.dumps(document)
    assert "ServingControl" not in text and "TextReader" not in text
    assert "visionmesh.inference.v1.ServedModelRequest" not in document["components"]["schemas"]


def test_every_route_of_the_protos_is_in_the_routes_table(routes: list[Route]) -> None:
    table = ROUTES_TABLE.read_text()
    for route in routes:
        service, _, method = route.grpc_method.strip("/").partition("/")
        row = next(line for line in table.splitlines() if line.startswith(f"| `{route.method} {route.template}` |"))
        assert f"`{service.rpartition('.')[2]}.{method}`" in row
        assert ".proto](" in row and "servicer.py](" in row


def test_the_routes_table_is_up_to_date() -> None:
    assert ROUTES_TABLE.read_text() == routes_table(DESCRIPTOR), (
        "docs/routes.md is stale: run `python -m gateway docs` (./mesh setup does when a proto changes)"
    )


def test_the_routes_table_names_the_owner_rpc_proto_and_servicer() -> None:
    row = next(line for line in routes_table(DESCRIPTOR).splitlines() if "`POST /imgSeg/v1/startTrain`" in line)
    assert "| segmentation | `ClassifierTraining.StartTraining` |" in row
    assert "[protos/visionmesh/segmentation/v1/segmentation.proto](../protos/visionmesh/segmentation/v1/" in row
    assert "[services/segmentation/servicer.py](../services/segmentation/servicer.py) `ClassifierTrainingServicer`" in (
        row
    )
    assert row.endswith("| envelope |")


def test_parameters_are_the_path_variables_and_the_other_request_fields(document: dict) -> None:
    listing = _operation(document, "GET", "/datasets")
    assert [(p["name"], p["in"], p["schema"]["type"]) for p in listing["parameters"]] == [
        ("page", "query", "integer"),
        ("page_size", "query", "integer"),
    ]
    export = _operation(document, "GET", "/datasets/{dataset_id}/export/annotated")
    assert [(p["name"], p["in"]) for p in export["parameters"]] == [("dataset_id", "path"), ("version", "query")]
    assert export["parameters"][0]["required"] is True
    tail = {p["name"]: p for p in _operation(document, "GET", "/logs/tail")["parameters"]}
    assert tail["job_id"]["required"] is True  # (google.api.field_behavior) = REQUIRED
    assert tail["offset"]["schema"]["type"] == "string"  # int64, as proto3 JSON prints it
    static = _operation(document, "GET", "/static/datasets/{path}")
    assert static["parameters"][0]["name"] == "path" and "slashes" in static["parameters"][0]["description"]
    # Bodies with "*" take every field the path does not give: no query parameters.
    assert "parameters" not in _operation(document, "POST", "/imgSeg/v1/predictSam")


def test_json_bodies_leave_out_the_path_fields_and_keep_required_ones(document: dict) -> None:
    prepare = _operation(document, "POST", "/datasets/{dataset_id}/prepare")["requestBody"]
    schema = prepare["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"split_ratio", "classes"}
    assert schema["properties"]["split_ratio"]["$ref"] == SCHEMAS + "visionmesh.dataset.v1.SplitRatio"
    assert prepare["required"] is False
    save = _operation(document, "POST", "/annotations/tasks/{task_id}/items/{image_id}")["requestBody"]
    schema = save["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"boxes"} and schema["required"] == ["boxes"] and save["required"] is True
    box = _schema(document, "visionmesh.dataset.v1.Box")
    assert box["required"] == ["class_id", "x1", "y1", "x2", "y2"]
    job = _operation(document, "POST", "/train/jobs")["requestBody"]["content"]["application/json"]["schema"]
    assert job == {"$ref": SCHEMAS + "visionmesh.training.v1.CreateJobRequest"}


def test_uploads_are_forms_and_downloads_keep_their_media_type(document: dict) -> None:
    upload = _operation(document, "POST", "/datasets/upload")
    assert list(upload["requestBody"]["content"]) == ["multipart/form-data"]
    assert [p["name"] for p in upload["parameters"]] == ["filename"]
    infer = _operation(document, "POST", "/infer/{model_id}")
    assert [p["name"] for p in infer["parameters"]] == ["model_id", "conf", "iou", "filename"]
    export = _operation(document, "GET", "/models/{model_id}/export")["responses"]["200"]
    assert list(export["content"]) == ["*/*"]
    assert "ZIP" in _operation(document, "GET", "/models/{model_id}/export")["description"]


def test_responses_follow_the_proto3_json_mapping(document: dict) -> None:
    model = _operation(document, "GET", "/models/{model_id}")["responses"]["200"]["content"]["application/json"]
    assert model["schema"] == {"$ref": SCHEMAS + "visionmesh.training.v1.Model"}
    status = _schema(document, "visionmesh.inference.v1.TaskStatus")["properties"]
    assert status["completed_at"] == {}  # google.protobuf.Value: any JSON value (null until set)
    assert status["inference_time"] == {"description": "seconds"}
    dataset = _schema(document, "visionmesh.dataset.v1.Dataset")["properties"]
    assert dataset["size"] == {"type": "number", "format": "double", "description": "bytes of the uploaded ZIP"}
    update = _operation(document, "PUT", "/datasets/{dataset_id}")["requestBody"]["content"]["application/json"]
    assert update["schema"]["properties"]["tags"]["type"] == "array"  # google.protobuf.ListValue
    payload = _schema(document, "visionmesh.segmentation.v1.IngestPayload")["properties"]["components_map"]
    assert payload["additionalProperties"] == {"$ref": SCHEMAS + "visionmesh.segmentation.v1.PageComponent"}


def test_each_route_names_its_error_shape(document: dict, routes: list[Route]) -> None:
    responses = document["components"]["responses"]
    envelope = responses["EnvelopeError"]["content"]["application/json"]["schema"]["$ref"]
    assert set(_schema(document, envelope.removeprefix(SCHEMAS))["properties"]) == {
        "code",
        "status",
        "message",
        "payload",
    }
    assert responses["DetailError"]["content"]["application/json"]["schema"]["$ref"] == SCHEMAS + "ErrorDetail"
    for route in routes:
        operation = _operation(document, route.method, re.sub(r"=[^}]*}", "}", route.template))
        expected = {"detail": "#/components/responses/DetailError", "envelope": "#/components/responses/EnvelopeError"}
        assert operation["responses"]["4XX"] == operation["responses"]["5XX"] == {"$ref": expected[route.shape]}
    assert _operation(document, "GET", "/uploads/{filename}")["responses"]["4XX"]["$ref"].endswith("DetailError")


def test_descriptions_come_from_the_proto_comments(document: dict) -> None:
    tags = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    assert tags["ModelService"] == "Trained and uploaded YOLO models."
    start = _operation(document, "POST", "/imgSeg/v1/startTrain")
    assert start["summary"] == "StartTraining" and "One training at a\ntime" in start["description"]
    assert "`/visionmesh.segmentation.v1.ClassifierTraining/StartTraining`" in start["description"]


def test_envoy_answers_the_reference_itself_and_the_checks_let_it_through() -> None:
    settings = GatewaySettings()
    source = request_checks_source(settings, api_services(DESCRIPTOR))
    schema = json.loads(source.partition("\n")[0].removeprefix("local SCHEMA_JSON = [====[").removesuffix("]====]"))
    assert schema["pass_through"] == {path: list(REFERENCE_METHODS) for path in REFERENCE_PATHS}
    config = render(settings)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route_config = config["route_config"]
    routes = route_config["virtual_hosts"][0]["routes"]
    direct = routes[: len(REFERENCE_PATHS)]
    assert [route["match"]["path"] for route in direct] == list(REFERENCE_PATHS)
    assert all(
        route["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"]["disabled"] for route in direct
    )
    assert route_config["max_direct_response_body_size_bytes"] == max(len(r.body) for r in api_reference(DESCRIPTOR))
    # Local replies that are not errors (the direct responses) keep their bodies.
    catch_all = config["local_reply_config"]["mappers"][-1]["filter"]["and_filter"]["filters"]
    assert {
        "status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "_"}}}
    } in (catch_all)


def test_the_docs_page_loads_only_what_the_gateway_serves() -> None:
    responses = {response.path: response for response in api_reference(DESCRIPTOR)}
    page = responses[DOCS_PATH].body.decode()
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert loaded and all(url in responses for url in loaded)
    assert "http" not in page  # no CDN: the machine may be offline
    assert b"SwaggerUIBundle" in responses[f"{DOCS_PATH}/swagger-ui-bundle.js"].body
    assert json.loads(responses["/openapi.json"].body) == openapi_document(DESCRIPTOR)
