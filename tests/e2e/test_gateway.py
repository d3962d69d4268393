"""What the gateway itself answers, through the real Envoy: request checks (unknown fields, types, required
fields, invalid UTF-8, unknown routes), internal RPCs kept off the public port, the shared port's reflection and
health. (The upload rate limit is tested on a platform with small limits: tests/e2e/test_resilience.py.)"""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from visionmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import assert_error, prepared
from tests.e2e.segmentation_data import failure

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json"}
SERVING = health_pb2.HealthCheckResponse.SERVING


def test_unknown_json_fields_are_refused_by_name(http: httpx.Client) -> None:
    before = http.get("/train/jobs").json()["total"]
    detail = assert_error(http.post("/train/jobs", json={"dataset_id": "ds_20000101_000000", "epoch": 3}), 400)
    assert detail.startswith('Unknown field "epoch"') and "epochs" in detail
    assert http.get("/train/jobs").json()["total"] == before  # nothing started
    detail = assert_error(http.put("/models/model_20000101_000000", json={"nmae": "x"}), 400, '"nmae"')
    assert "name, description, tags" in detail
    box = {"class_id": 0, "x1": 1, "y1": 1, "x2": 2, "y2": 2, "colour": "red"}
    assert_error(http.post("/annotations/tasks/t/items/i", json={"boxes": [box]}), 400, '"boxes[0].colour"')
    # Document 004 routes answer in their envelope, err 806.
    payload = failure(http.post("/imgSeg/v1/predictResnet", json={"image_url_lists": []}), 400, 806)
    assert '"image_url_lists"' in payload["detail"]
    # Both JSON spellings of a field are known; the same field twice is not.
    assert_error(http.put("/datasets/ds_20000101_000000", json={"description": "a"}), 404)
    assert_error(http.post("/datasets/x/prepare", json={"splitRatio": {}, "split_ratio": {}}), 400, "twice")
    # A path parameter is not a body field.
    assert_error(http.post("/datasets/x/prepare", json={"dataset_id": "y"}), 400, "path")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"dataset_id": "d", "epochs": "a"}, 'epochs must be a whole number, got "a"'),
        ({"dataset_id": "d", "epochs": 2.5}, "epochs must be a whole number, got 2.5"),
        ({"dataset_id": "d", "epochs": 1e20}, "epochs must be a whole number from -2147483648 to 2147483647"),
        ({"dataset_id": 7}, "dataset_id must be a string, got 7"),
        ({"dataset_id": "d", "imgsz": True}, "imgsz must be a whole number, got true"),
        ({"dataset_id": ["d"]}, "dataset_id must be a string, got a list"),
    ],
)
def test_type_errors_read_like_sentences(http: httpx.Client, body: dict, detail: str) -> None:
    assert detail in assert_error(http.post("/train/jobs", json=body), 400)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"dataset_id": "d"', "not valid JSON: the body ends too early"),
        (b'{"dataset_id": "d",}', "not valid JSON: expected a quoted field name"),
        (b"[1, 2]", "must be a JSON object, got a list"),
        (b'{"dataset_id": "\xff"}', "not valid UTF-8"),
        (b'{"dataset_id": "\\ud800"}', "surrogate"),
        (b"[" * 100, "deeper than 64"),
    ],
)
def test_bad_json_reads_like_a_sentence(http: httpx.Client, raw: bytes, detail: str) -> None:
    text = assert_error(http.post("/train/jobs", content=raw, headers=JSON), 400, detail)
    assert "^" not in text and "Unexpected" not in text


def test_missing_required_fields(http: httpx.Client) -> None:
    assert_error(http.post("/train/jobs", json={"epochs": 3}), 400, "dataset_id is required")
    assert_error(http.post("/annotations/tasks", json={}), 400, "dataset_id is required")
    assert_error(http.get("/logs/lines"), 400, "The query parameter job_id is required")
    assert_error(http.post("/api/inference"), 400, "The query parameter index is required")
    # 004: a missing required field is err 807 (invalid parameter).
    assert "train_task_id is required" in failure(http.post("/imgSeg/v1/stopTrain", json={}), 400, 807)["detail"]
    failure(http.post("/imgSeg/v1/startTrain", json={"task_type": "train"}), 400, 807)


@pytest.mark.parametrize(
    ("method", "url", "name"),
    [
        ("GET", "/datasets/%ff", "path parameter dataset_id"),
        ("GET", "/api/tasks?status=%ff", "query parameter status"),
        ("GET", "/train/jobs?status=%c0%af", "query parameter status"),
        ("GET", "/static/datasets/%ff/x.jpg", "path parameter path"),
        ("GET", "/static/uploads/%ff.jpg", "path parameter filename"),
        ("GET", "/uploads/%ff", "path parameter filename"),
        ("GET", "/models/%ed%a0%80", "path parameter model_id"),  # an encoded surrogate
    ],
)
def test_invalid_utf8_in_paths_and_queries(http: httpx.Client, method: str, url: str, name: str) -> None:
    assert_error(http.request(method, url), 400, f"The {name} is not valid UTF-8")


def test_invalid_utf8_keeps_each_documents_shape(http: httpx.Client) -> None:
    payload = failure(http.get("/ingest/status?task_id=%ff"), 400, 806)
    assert payload["detail"] == "The query parameter task_id is not valid UTF-8"
    image = datagen.draw_image(32, 32, [], ext="png")
    upload = http.post("/infer/%ff%fe", files={"file": ("a.png", image, "image/png")})
    assert_error(upload, 400, "The path parameter model_id is not valid UTF-8")


def test_query_parameters_are_checked_against_their_fields(http: httpx.Client) -> None:
    assert_error(http.get("/train/jobs?page=abc"), 400, 'The query parameter page must be a whole number, got "abc"')
    assert_error(http.get("/api/tasks?page_size=1e99"), 400, "page_size must be a whole number from")
    assert http.get("/train/jobs?page=1&unknown=%ff").status_code == 200  # unknown parameters are ignored
    assert_error(http.get("/datasets/数据集"), 404, "数据集")  # valid UTF-8 reaches the service


def test_unknown_routes_and_methods(http: httpx.Client) -> None:
    assert_error(http.get("/no/such/route"), 404, "No route matches GET")
    detail = assert_error(http.delete("/train/jobs"), 405, "does not take DELETE")
    assert "GET" in detail and "POST" in detail
    assert http.delete("/train/jobs").headers["allow"]
    failure(http.post("/imgSeg/v1/predictNothing", json={}), 404, 808)


def test_annotations_need_their_boxes_and_every_box_field(http: httpx.Client) -> None:
    dataset_id, _ = prepared(http, datagen.dataset_zip(count=3, size=(64, 48)))
    task_id = http.post("/annotations/tasks", json={"dataset_id": dataset_id}).json()["task_id"]
    url = f"/annotations/tasks/{task_id}/items/img000"
    saved = http.get(url).json()["boxes"]
    assert saved  # imported from the dataset's labels
    for refused in ({}, {"boxes": None}):
        assert_error(http.post(url, json=refused), 400, "boxes is required")
    assert_error(http.post(url, content=b"", headers=JSON), 400, "boxes is required")
    for field in ("class_id", "x1", "y1", "x2", "y2"):
        box = {"class_id": 0, "x1": 1.0, "y1": 1.0, "x2": 10.0, "y2": 10.0}
        del box[field]
        assert_error(http.post(url, json={"boxes": [box]}), 400, f"boxes[0].{field} is required")
    assert http.get(url).json()["boxes"] == saved  # nothing the refused requests sent was stored
    assert http.post(url, json={"boxes": []}).json()["ok"] is True
    assert http.get(url).json()["boxes"] == []  # an explicit [] still records "no objects"


def test_json_bodies_are_bounded(http: httpx.Client) -> None:
    limit = 1024 * 1024
    body = b'{"description": "' + b"x" * limit + b'"}'
    assert_error(http.put("/datasets/ds_20000101_000000", content=body, headers=JSON), 413, str(limit))


def test_internal_rpcs_are_not_on_the_public_port(platform: PlatformInstance) -> None:
    with grpc.insecure_channel(platform.grpc_target) as public:
        with pytest.raises(grpc.RpcError) as unload:
            inference_pb2_grpc.ServingControlStub(public).UnloadModel(
                inference_pb2.ServedModelRequest(model_id="model_20000101_000000"), timeout=10
            )
        assert unload.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as read:
            ocr_pb2_grpc.TextReaderStub(public).ReadText(ocr_pb2.ReadTextRequest(image=b"x"), timeout=10)
        assert read.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stub = reflection_pb2_grpc.ServerReflectionStub(public)
        [listing] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for service in listing.list_services_response.service}
        assert "visionmesh.inference.v1.InferenceService" in names
        assert not names & {"visionmesh.inference.v1.ServingControl", "visionmesh.ocr.v1.TextReader"}
        # The shared port's health knows what it serves, reflection v1 included.
        health = health_pb2_grpc.HealthStub(public)
        for name in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == SERVING
    # The other services reach them on the owner's own port.
    with grpc.insecure_channel(platform.service_target("inference")) as own:
        served = inference_pb2_grpc.ServingControlStub(own).UnloadModel(
            inference_pb2.ServedModelRequest(model_id="model_20000101_000000"), timeout=30
        )
        assert served.model_id == "model_20000101_000000"
