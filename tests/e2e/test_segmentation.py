"""Document 004 end to end, through Envoy: screenshots the tests render (known layouts), the real segmentation
and OCR services, the built-in classifier on the real Triton, SAM's real code with random MobileSAM weights."""

from __future__ import annotations

import base64
import io
import statistics
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from PIL import Image, ImageDraw
from visionmesh.envelope.v1 import envelope_pb2
from visionmesh.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from launcher.instance import PlatformInstance
from services.common.fonts import cjk_font
from services.common.geometry import Box
from services.segmentation.domain.rendering import COMPONENT_TYPES, CONTAINER_TYPE
from synthetic.evaluation import match_boxes, recall, text_recall
from synthetic.image_server import ImageServer
from synthetic.pages import component, encode, page
from tests.e2e.segmentation_data import failure, ok_payload, wait_for_training

COMPONENT_KEYS = {"top_left_coord", "width", "height", "rgb_mean", "img_component_base64"}
DEFAULT_CLASSIFIER = "Train-imgSeg-default"


def _png(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def _style_box(entry: dict) -> Box:
    style = entry["props"]["style"]
    return Box(style["left"], style["top"], style["left"] + style["width"], style["top"] + style["height"])


def _tree_ids(node: dict) -> list[str]:
    return [node["id"], *(name for child in node["children"] for name in _tree_ids(child))]


# ---- predictText (OCR service) ----


def _text_card() -> Image.Image:
    image = Image.new("RGB", (520, 200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((20, 20, 260, 76), radius=8, fill=(49, 97, 245))
    draw.text((44, 30), "Submit order", font=cjk_font(26), fill=(255, 255, 255))
    draw.text((20, 110), "用户名", font=cjk_font(28), fill=(30, 30, 30))
    draw.text((20, 150), "Email address", font=cjk_font(24), fill=(30, 30, 30))
    return image


def test_predict_text_reads_english_and_chinese(http: httpx.Client, images: ImageServer) -> None:
    url = images.put_image("text-card.png", _text_card())
    blank = images.put_image("blank.png", Image.new("RGB", (200, 100), (250, 250, 250)))
    payload = ok_payload(http.post("/imgSeg/v1/predictText", json={"user_id": "u1", "image_url_list": [url, blank]}))
    assert payload["user_id"] == "u1"
    assert payload["text"][blank] == []
    *lines, align = payload["text"][url]
    assert set(align) == {"align"} and align["align"] in {"left", "center", "right"}
    assert text_recall(["Submit order", "用户名", "Email address"], [line["msg"] for line in lines]) == 1.0
    for line in lines:
        assert set(line) == {"left_top_coord", "width", "height", "msg", "backgroundColor", "color", "line_height"}
        assert len(line["left_top_coord"]) == 2 and line["width"] > 0 and line["height"] > 0
    button = next(line for line in lines if "Submit" in line["msg"])
    assert max(abs(a - b) for a, b in zip(button["backgroundColor"], (49, 97, 245), strict=True)) < 12
    assert min(button["color"]) > 200  # white text
    assert 20 <= button["left_top_coord"][0] <= 60 and 20 <= button["left_top_coord"][1] <= 50


def test_predict_text_errors_keep_the_envelope(http: httpx.Client, images: ImageServer) -> None:
    not_image = images.put("notes.png", b"this is not a picture")
    route = "/imgSeg/v1/predictText"
    assert (
        failure(http.post(route, json={"user_id": "u2", "image_url_list": [not_image]}), 400, "601")["user_id"] == "u2"
    )
    failure(http.post(route, json={"user_id": "u2", "image_url_list": ["http://10.1.2.3/a.png"]}), 400, "801")
    failure(http.post(route, json={"user_id": "u2", "image_url_list": [images.url("missing.png")]}), 400, "801")
    failure(http.post(route, json={"user_id": "u2", "image_url_list": ["file:///etc/passwd"]}), 400, "801")
    failure(http.post(route, json={"user_id": "u2", "image_url_list": []}), 400, "806")
    # Bodies the gateway cannot parse get the envelope too (err 806).
    failure(http.post(route, content=b'{"user_id": ', headers={"content-type": "application/json"}), 400, 806)
    failure(http.post(route, json={"user_id": "u2", "image_url_list": 5}), 400, 806)


# ---- /ingest, /ingest/status, /uploads ----


@pytest.mark.usefixtures("default_classifier")
def test_ingest_finds_the_components_of_rendered_pages(http: httpx.Client) -> None:
    recalls, type_hits, texts_expected, texts_read = [], [], [], []
    for seed in (101, 102, 103):
        rendered = page(seed)
        data = encode(rendered.image)
        response = http.post("/ingest", files={"image": ("page.png", data, "image/png")}, data={"user_id": "u3"})
        payload = ok_payload(response)
        assert payload["task_status"] == 200 and payload["task_id"].startswith("ingest_")
        assert payload["page_meta"] == {"width": 1280, "height": 800}
        assert payload["segmenter"] == "layout"
        components = payload["components_map"]
        assert components and all(name == entry["component_name"] for name, entry in components.items())
        tree = payload["components_tree"]
        assert tree["id"] == "page" and sorted(_tree_ids(tree)[1:]) == sorted(components)
        truth = [c for c in rendered.components if c.kind != CONTAINER_TYPE]
        found = list(components.values())
        recalls.append(recall([c.box for c in truth], [_style_box(entry) for entry in found]))
        for t, f in match_boxes([c.box for c in truth], [_style_box(entry) for entry in found]):
            type_hits.append(truth[t].kind == found[f]["component_type"])
        texts_expected += [c.text for c in truth if c.text]
        texts_read += [entry["props"]["text"] for entry in found if entry["props"]["text"]]
        # The upload is served back, and the task can be polled for the same result.
        served = http.get(payload["image_url"])
        assert served.status_code == 200 and served.content == data
        assert served.headers["content-type"] == "image/png"
        status = ok_payload(http.get("/ingest/status", params={"task_id": payload["task_id"]}))
        assert status["task_status"] == 200 and status["result"]["components_map"] == components
        assert status["created_at"] <= status["finished_at"]
    print(f"recall {recalls}, type accuracy {statistics.mean(type_hits):.3f}")
    assert statistics.mean(recalls) >= 0.8, recalls
    assert statistics.mean(type_hits) >= 0.5, type_hits
    assert text_recall(texts_expected, [" ".join(texts_read)]) >= 0.7


@pytest.mark.usefixtures("default_classifier")
def test_ingest_by_url_and_its_errors(http: httpx.Client, images: ImageServer) -> None:
    url = images.put_image("ingest-page.png", page(104).image)
    payload = ok_payload(http.post("/ingest", data={"image_url": url, "user_id": "u4"}))
    assert payload["task_status"] == 200 and payload["components_map"] and payload["image_url"] == ""

    failure(http.post("/ingest", data={"user_id": "u4"}), 400, 807)
    failure(http.post("/ingest", files={"image": ("x.png", b"not an image", "image/png")}), 400, 601)
    not_image = images.put("ingest-notes.png", b"plain text")
    assert failure(http.post("/ingest", data={"image_url": not_image}), 400, 601)["task_id"].startswith("ingest_")
    unreachable = failure(http.post("/ingest", data={"image_url": "http://192.168.77.1/x.png"}), 400, 801)
    failed = ok_payload(http.get("/ingest/status", params={"task_id": unreachable["task_id"]}))
    assert failed["task_status"] == 400 and failed["err"] == 801 and failed["detail"]
    failure(http.get("/ingest/status", params={"task_id": "ingest_nope"}), 404, 803)
    failure(http.get("/ingest/status"), 400, 807)  # a missing required field: invalid parameter
    missing = http.get("/uploads/nope.png")
    assert missing.status_code == 404 and missing.json() == {"detail": "file not found"}
    assert http.get("/uploads/..%2Fdb%2Fsegmentation.sqlite3").status_code in (400, 404)


@pytest.mark.usefixtures("default_classifier")
def test_concurrent_uploads_keep_their_own_images(http: httpx.Client) -> None:
    uploads = [encode(page(seed).image) for seed in (110, 111, 112)]

    def ingest(data: bytes) -> dict:
        return ok_payload(http.post("/ingest", files={"image": ("page.png", data, "image/png")}))

    with ThreadPoolExecutor(len(uploads)) as pool:
        payloads = list(pool.map(ingest, uploads))
    for data, payload in zip(uploads, payloads, strict=True):
        assert http.get(payload["image_url"]).content == data


# ---- predictSam, predictSam2, predictSam3 (SAM with random MobileSAM weights) ----


def _button_box(rendered) -> Box:
    """A control of the page (a button when there is one)."""
    controls = [c for c in rendered.components if c.kind != CONTAINER_TYPE and c.box.area >= 400]
    return next((c.box for c in controls if c.kind == "Button"), controls[0].box)


@pytest.mark.usefixtures("default_classifier")
def test_predict_sam_point_and_box_prompts(http: httpx.Client, images: ImageServer) -> None:
    rendered = page(105)
    url = images.put_image("sam-page.png", rendered.image)
    button = _button_box(rendered)
    centre = [(button.x0 + button.x1) // 2, (button.y0 + button.y1) // 2]
    body = {
        "image_url": url,
        "prompt": {"input_point": [centre], "input_label": [1], "input_box": []},
        "topic_id": "t1",
        "user_id": "u5",
        "is_predict_type": True,
        "read_text_component_list": list(COMPONENT_TYPES),
    }
    payload = ok_payload(http.post("/imgSeg/v1/predictSam", json=body))
    assert payload["topic_id"] == "t1" and payload["user_id"] == "u5" and payload["segmenter"] == "sam:vit_t"
    assert payload["task_status"] == 200 and payload["task_id"].startswith("samPredict_")
    for entry in payload["component_info"]:
        assert set(entry) == COMPONENT_KEYS | {"text", "component_type"}
        assert entry["component_type"] in COMPONENT_TYPES and isinstance(entry["text"], list)
        assert _png(entry["img_component_base64"]).size == (entry["width"], entry["height"])

    boxes = [[button.x0, button.y0, button.x1, button.y1], [10, 10, 200, 60]]
    body = {
        "image_url": url,
        "prompt": {"input_point": [], "input_label": [], "input_box": boxes},
        "cut_outline_flag": True,
    }
    entries = ok_payload(http.post("/imgSeg/v1/predictSam", json=body))["component_info"]
    assert len(entries) == 2
    for entry, box in zip(entries, boxes, strict=True):
        assert set(entry) == COMPONENT_KEYS  # no type or text unless asked
        assert box[0] <= entry["top_left_coord"][0] and entry["top_left_coord"][0] + entry["width"] <= box[2]
        assert _png(entry["img_component_base64"]).mode == "RGBA"


def test_predict_sam_without_prompt_gives_automatic_masks(http: httpx.Client, images: ImageServer) -> None:
    url = images.put_image("sam-small.png", page(106, 640, 400).image)
    payload = ok_payload(http.post("/imgSeg/v1/predictSam", json={"image_url": url, "user_id": "u6"}))
    for entry in payload["component_info"]:
        assert set(entry) == COMPONENT_KEYS  # the document: automatic masks carry no text or type


def test_predict_sam_refuses_bad_prompts(http: httpx.Client, images: ImageServer) -> None:
    url = images.put_image("sam-bad.png", page(107, 640, 400).image)
    route = "/imgSeg/v1/predictSam"

    def ask(prompt: dict, **extra: object) -> httpx.Response:
        return http.post(route, json={"image_url": url, "prompt": prompt, "topic_id": "t7", "user_id": "u7", **extra})

    payload = failure(ask({"input_point": [[1]], "input_label": [1]}), 400, 806)
    assert payload["topic_id"] == "t7" and payload["user_id"] == "u7" and payload["detail"]
    failure(ask({"input_point": [[10, 10]], "input_label": [1, 0]}), 400, 806)
    failure(ask({"input_point": [["a", 10]], "input_label": [1]}), 400, 806)
    failure(ask({"input_box": [30, 30, 10, 10]}), 400, 806)
    failure(ask({"input_point": [[5000, 10]], "input_label": [1]}), 400, 807)
    failure(ask({"input_point": [[10, 10]], "input_label": [1]}, resnet_model_id="Train-imgSeg-nope"), 404, 805)
    failure(http.post(route, json={"image_url": "http://10.9.9.9/x.png", "prompt": {}}), 400, 801)
    failure(http.post(route, json={"image_url": url, "prompt": "point"}), 400, 806)


def test_predict_sam2_father_node(http: httpx.Client, images: ImageServer) -> None:
    rendered = page(108)
    url = images.put_image("sam2-page.png", rendered.image)
    select = [100, 80, 900, 600]
    button = _button_box(rendered)
    body = {"image_url": url, "select_box": select, "prompt": {"input_point": [], "input_label": []}, "user_id": "u8"}
    (father,) = ok_payload(http.post("/imgSeg/v1/predictSam2", json=body))["component_info"]
    assert father["top_left_coord"] == select[:2]
    assert (father["width"], father["height"]) == (select[2] - select[0], select[3] - select[1])
    assert len(father["background_color"]) == 3 and len(father["rgb_mean"]) == 3
    assert father["children"], "OCR text boxes alone give children"
    for child in father["children"]:
        x, y = child["top_left_coord"]
        assert x >= 0 and y >= 0 and x + child["width"] <= father["width"] and y + child["height"] <= father["height"]
    inside = Box(*select).contains(button)
    if inside:
        point = [(button.x0 + button.x1) // 2, (button.y0 + button.y1) // 2]
        body["prompt"] = {"input_point": [point], "input_label": [1]}
        (father,) = ok_payload(http.post("/imgSeg/v1/predictSam2", json=body))["component_info"]
        assert father["children"]


def test_predict_sam3_lasso(http: httpx.Client, images: ImageServer) -> None:
    url = images.put_image("sam3-page.png", page(109, 640, 400).image)
    lasso = [[100, 100], [200, 150], [180, 300]]
    payload = ok_payload(http.post("/imgSeg/v1/predictSam3", json={"image_url": url, "points": lasso, "user_id": "u9"}))
    (entry,) = payload["component_info"]
    x, y = entry["top_left_coord"]
    assert x >= 100 and y >= 100 and x + entry["width"] <= 200 and y + entry["height"] <= 300
    assert _png(entry["img_component_base64"]).mode == "RGBA"  # the outline is cut out
    bad = failure(
        http.post("/imgSeg/v1/predictSam3", json={"image_url": "http://10.0.0.1/p.png", "points": lasso}),
        400,
        "READ_URL_FAIL",
    )
    assert bad["task_status"] == 400
    failure(http.post("/imgSeg/v1/predictSam3", json={"image_url": url, "points": [[1, 1]]}), 400, "DATA_FORMAT_ERROR")


# ---- predictResnet and the classifier training APIs ----


def test_predict_resnet_classifies_component_images(
    http: httpx.Client, images: ImageServer, default_classifier: dict
) -> None:
    assert default_classifier["acc"] >= 0.8, default_classifier
    expected = {}
    for index in range(32):
        kind = COMPONENT_TYPES[index % len(COMPONENT_TYPES)]
        expected[images.put_image(f"crop-{index}.png", component(kind, 5000 + index))] = kind
    body = {"image_url_list": list(expected), "model_id": "", "topic_id": "t10", "user_id": "u10"}
    payload = ok_payload(http.post("/imgSeg/v1/predictResnet", json=body))
    assert payload["image_num"] == 32 and payload["model_id"] == "Train-imgSeg-default"
    assert sum(payload["predict_result"].values()) == 32
    accuracy = statistics.mean(payload["component_type"][url] == kind for url, kind in expected.items())
    assert accuracy >= 0.75, payload["component_type"]

    buttons = [url for url, kind in expected.items() if kind == "Button"]
    broken = images.put("crop-broken.png", b"not an image")
    body = {"image_url_list": [*buttons, broken], "input_component_type": "Button", "user_id": "u10"}
    payload = ok_payload(http.post("/imgSeg/v1/predictResnet", json=body))
    assert 0 <= payload["predict_result"]["acc"] <= 1 and payload["failed"] == {broken: 601}
    failure(
        http.post("/imgSeg/v1/predictResnet", json={"image_url_list": buttons, "model_id": "Train-imgSeg-x"}), 404, 805
    )
    failure(http.post("/imgSeg/v1/predictResnet", json={"image_url_list": []}), 400, 806)


@pytest.mark.usefixtures("default_classifier")
def test_training_apis(http: httpx.Client, images: ImageServer) -> None:
    dataset = {
        f"res_{index}": {
            "url": images.put_image(f"res-{index}.png", component(kind, 9000 + index)),
            "component_type": kind,
        }
        for index, kind in enumerate(["Button", "Input", "Checkbox"])
    }
    payload = ok_payload(http.post("/imgSeg/v1/addTrainResource", json={"user_id": "trainer", "dataset": dataset}))
    assert payload["get_info"] == {key: 900 for key in dataset}
    bad = {
        "wrong_type": {"url": dataset["res_0"]["url"], "component_type": "Spaceship"},
        "unreadable": {"url": images.url("nothing-here.png"), "component_type": "Button"},
        "not_image": {"url": images.put("res-text.png", b"text"), "component_type": "Button"},
    }
    payload = failure(http.post("/imgSeg/v1/addTrainResource", json={"user_id": "trainer", "dataset": bad}), 400, 806)
    assert payload["get_info"] == {"wrong_type": 901, "unreadable": 902, "not_image": 601}

    start = {
        "user_id": "trainer",
        "task_type": "train",
        "train_params": {"epochs": 1, "batch_size": 16, "learning_rate": 0.001},
    }
    started = ok_payload(http.post("/imgSeg/v1/startTrain", json=start))
    task_id = started["train_task_id"]
    assert task_id.startswith("Train-imgSeg-") and started["task_status"] == 300 and started["task_type"] == "train"
    failure(http.post("/imgSeg/v1/startTrain", json=start), 409, 800)
    done = wait_for_training(http, task_id, user_id="trainer")
    assert done["task_status"] == 200 and done["model_ready"], done
    assert done["epoch"] == 1 and done["modelEpoch"] == 1 and len(done["valAccList"]) == 1
    assert set(done["labels"]) == set(COMPONENT_TYPES) and len(done["singleAcc"]) == len(done["labels"])
    assert done["dataset_num"] > 3
    crop = images.put_image("after-training.png", component("Button", 77))
    payload = ok_payload(http.post("/imgSeg/v1/predictResnet", json={"image_url_list": [crop], "model_id": task_id}))
    assert payload["model_id"] == task_id and payload["image_num"] == 1

    stopping = ok_payload(http.post("/imgSeg/v1/startTrain", json={**start, "train_params": {"epochs": 50}}))
    stopped = ok_payload(
        http.post("/imgSeg/v1/stopTrain", json={"train_task_id": stopping["train_task_id"], "user_id": "trainer"})
    )
    assert stopped["task_status"] == 500
    unknown = {"train_task_id": "Train-imgSeg-nope", "user_id": "trainer", "task_type": "train"}
    assert failure(http.post("/imgSeg/v1/queryTrain", json=unknown), 404, 803)["train_task_id"] == "Train-imgSeg-nope"
    failure(http.post("/imgSeg/v1/stopTrain", json=unknown), 404, 803)
    failure(http.post("/imgSeg/v1/startTrain", json={**start, "train_params": {"epochs": -1}}), 400, 807)


def _native_envelope(error: grpc.RpcError) -> dict:
    """The 004 envelope a native gRPC client finds in the status details."""
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    [detail] = status_pb2.Status.FromString(raw).details
    envelope = envelope_pb2.ErrorEnvelope()
    assert detail.Unpack(envelope)
    return {"status": envelope.status, "err": int(envelope.payload["err"]), "user_id": envelope.payload["user_id"]}


@pytest.mark.usefixtures("default_classifier")
def test_trainings_belong_to_the_user_who_started_them(http: httpx.Client, platform: PlatformInstance) -> None:
    start, query, stop = "/imgSeg/v1/startTrain", "/imgSeg/v1/queryTrain", "/imgSeg/v1/stopTrain"
    # No user_id: nothing starts (it used to start an "anonymous" training that blocked everyone with 800).
    # The service answers 807; the gateway may refuse a missing required field before it does (806).
    for body in ({}, {"user_id": "", "task_type": "train"}):
        response = http.post(start, json=body)
        assert failure(response, 400, response.json()["payload"]["err"])["err"] in (806, 807)
    assert failure(http.post(start, json={"user_id": "  "}), 400, 807)["detail"] == "user_id is required"
    # Native gRPC clients on the service's own port get the service's 807 as well.
    with grpc.insecure_channel(platform.service_target("segmentation")) as channel:
        stub = segmentation_pb2_grpc.ClassifierTrainingStub(channel)
        calls = [
            lambda: stub.StartTraining(segmentation_pb2.StartTrainingRequest(task_type="train")),
            lambda: stub.QueryTraining(segmentation_pb2.TrainingTaskRequest(train_task_id=DEFAULT_CLASSIFIER)),
            lambda: stub.StopTraining(segmentation_pb2.TrainingTaskRequest(train_task_id=DEFAULT_CLASSIFIER)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _native_envelope(refused.value) == {"status": 400, "err": 807, "user_id": ""}

    body = {"user_id": "alice", "task_type": "train", "train_params": {"epochs": 50, "batch_size": 16}}
    task_id = ok_payload(http.post(start, json=body))["train_task_id"]
    theirs = {"train_task_id": task_id, "user_id": "mallory", "task_type": "train"}
    nobodys = {**theirs, "train_task_id": "Train-imgSeg-7de43a30-fa97-4da2-ace6-ebbc4746bd0f"}
    for route in (query, stop):
        refused = failure(http.post(route, json=theirs), 404, 803)
        unknown = failure(http.post(route, json=nobodys), 404, 803)
        # The answer of an unknown id, with mallory's own fields echoed: nothing says alice's task exists.
        assert {**refused, "detail": ""} == {**theirs, "err": 803, "detail": ""}
        assert refused["detail"] == unknown["detail"].replace(nobodys["train_task_id"], task_id)
    busy = failure(http.post(start, json={**body, "user_id": "mallory"}), 409, 800)
    assert task_id not in busy["detail"] and busy["user_id"] == "mallory"
    mine = ok_payload(http.post(query, json={**theirs, "user_id": "alice"}))
    assert (mine["user_id"], mine["task_status"]) == ("alice", 300)  # mallory's stop did not stop it
    stopped = ok_payload(http.post(stop, json={**theirs, "user_id": "alice"}))
    assert (stopped["train_task_id"], stopped["user_id"], stopped["task_status"]) == (task_id, "alice", 500)

    # The built-in classifier's training is the platform's: everyone may read it, nobody may stop it.
    builtin = {"train_task_id": DEFAULT_CLASSIFIER, "user_id": "mallory", "task_type": "train"}
    progress = ok_payload(http.post(query, json=builtin))
    assert (progress["user_id"], progress["task_status"], progress["model_ready"]) == ("system", 200, True)
    refused = failure(http.post(stop, json=builtin), 403, 807)
    assert refused["train_task_id"] == DEFAULT_CLASSIFIER and "cannot be stopped" in refused["detail"]
    assert ok_payload(http.post(query, json=builtin))["task_status"] == 200
