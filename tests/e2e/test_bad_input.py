"""Bad input through Envoy: a 4xx in the documents' {"detail"} shape, and nothing left behind."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.conftest import TEST_MAX_UPLOAD_BYTES, datasets_dir
from tests.e2e.api import assert_error, prepared, upload, uploaded
from tests.e2e.segmentation_data import failure

pytestmark = pytest.mark.e2e


def _leftovers(platform: PlatformInstance) -> list[Path]:
    return [path for path in datasets_dir(platform).rglob(".*")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a zip", "not a valid zip"),
        (b"", "empty"),
        (datagen.zip_with_unsafe_entry("../../evil.txt"), "unsafe path"),
        (datagen.zip_with_unsafe_entry("/tmp/evil.txt"), "unsafe path"),
        (datagen.zip_bomb(), "zip bomb"),
        (datagen.zip_bytes({"readme.md": b"# nothing here"}), "no images"),
        (datagen.dataset_zip(count=3)[:-200], "not a valid zip"),
    ],
    ids=["not-a-zip", "empty", "zip-slip", "absolute-path", "zip-bomb", "no-images", "truncated-zip"],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    http: httpx.Client, platform: PlatformInstance, data: bytes, message: str
) -> None:
    before = http.get("/datasets").json()["total"]
    assert_error(upload(http, data), 400, message)
    assert http.get("/datasets").json()["total"] == before
    assert _leftovers(platform) == []
    assert not (platform.data_root.parent / "evil.txt").exists()


def test_upload_without_the_file_field(http: httpx.Client) -> None:
    assert_error(http.post("/datasets/upload", files={"other": ("x.zip", b"PK")}), 400, 'form field "other"')
    assert_error(http.post("/datasets/upload", data={"file": "not a file"}), 400, '"file"')
    assert_error(http.post("/datasets/upload", json={"file": "x"}), 400, "content type")


def test_unknown_form_fields_are_refused_by_name(http: httpx.Client) -> None:
    """As unknown JSON fields are: a misspelt `confidence` must not silently run with the default threshold."""
    image = ("a.png", datagen.draw_image(32, 32, [], ext="png"), "image/png")
    detail = assert_error(
        http.post("/infer/model_20000101_000000", files={"file": image}, data={"confidence": "0.9"}), 400
    )
    assert detail == 'Unknown form field "confidence"; this route takes: conf, file, iou'
    zipped = ("d.zip", datagen.dataset_zip(count=2), "application/zip")
    before = http.get("/datasets").json()["total"]
    assert_error(http.post("/datasets/upload", files={"file": zipped}, data={"name": "x"}), 400, '"name"')
    assert http.get("/datasets").json()["total"] == before
    payload = failure(http.post("/ingest", files={"image": image}, data={"userid": "u"}), 400, 807)
    assert payload["detail"].startswith('Unknown form field "userid"')
    with_latin1 = b'--b\r\nContent-Disposition: form-data; name="user_id"\r\n\r\ncaf\xe9\r\n--b--\r\n'
    payload = failure(
        http.post("/ingest", content=with_latin1, headers={"content-type": "multipart/form-data; boundary=b"}),
        400,
        807,
    )
    assert payload["detail"] == 'Form field "user_id" is not valid UTF-8'


def test_upload_over_the_size_limit(http: httpx.Client, platform: PlatformInstance) -> None:
    before = http.get("/datasets").json()["total"]
    too_big = b"\0" * (TEST_MAX_UPLOAD_BYTES + 1024)
    assert_error(upload(http, too_big), 413, "limit")
    assert http.get("/datasets").json()["total"] == before
    assert _leftovers(platform) == []


def test_bad_prepare_requests(http: httpx.Client, platform: PlatformInstance) -> None:
    dataset_id = uploaded(http, datagen.dataset_zip(count=6))
    url = f"/datasets/{dataset_id}/prepare"
    assert_error(http.post(url, json={"split_ratio": {"train": 0.7, "val": 0.2}}), 400, "add up to 1")
    assert_error(http.post(url, json={"split_ratio": {"train": 1.2, "val": -0.2}}), 400, "between 0 and 1")
    assert_error(http.post(url, json={"split_ratio": {"train": 1.0}}), 400, "greater than 0")
    assert_error(http.post(url, json={"split_ratio": "80/20"}), 400)
    assert_error(http.post(url, json={"classes": ["a", " "]}), 400, "non-empty")
    assert_error(http.post("/datasets/ds_20000101_000000/prepare", json={}), 404)
    assert_error(http.post("/datasets/..%2F..%2Fetc/prepare", json={}), 404)
    assert http.get(f"/datasets/{dataset_id}").json()["versions"] == []
    assert _leftovers(platform) == []


def test_prepare_refuses_a_dataset_with_no_usable_images(http: httpx.Client, platform: PlatformInstance) -> None:
    members = {
        "images/a.jpg": datagen.truncated_jpeg(),
        "images/b.png": datagen.decompression_bomb_png(),
        "images/c.jpg": b"\xff\xd8 not really",
    }
    dataset_id = uploaded(http, datagen.zip_bytes(members))
    detail = assert_error(http.post(f"/datasets/{dataset_id}/prepare", json={}), 400, "usable")
    assert "images/a.jpg" in detail
    assert http.get(f"/datasets/{dataset_id}").json()["versions"] == []
    assert _leftovers(platform) == []


def test_unknown_ids_are_404_everywhere(http: httpx.Client) -> None:
    missing = "ds_20000101_000000"
    for method, url in [
        ("GET", f"/datasets/{missing}"),
        ("PUT", f"/datasets/{missing}"),
        ("DELETE", f"/datasets/{missing}"),
        ("GET", f"/datasets/{missing}/export/annotated"),
        ("GET", f"/datasets/{missing}/export/original"),
        ("GET", "/datasets/not-an-id"),
        ("GET", f"/static/datasets/{missing}/v1/images/train/a.jpg"),
        ("GET", "/annotations/tasks/task_20000101_000000/items/img000"),
        ("GET", "/annotations/tasks/task_20000101_000000/export"),
    ]:
        body = {} if method == "PUT" else None
        assert_error(http.request(method, url, json=body), 404)


def test_gateway_errors_use_the_same_shape(http: httpx.Client) -> None:
    assert_error(http.get("/no/such/route"), 404)
    assert_error(
        http.put("/datasets/ds_20000101_000000", content=b"[1,2", headers={"content-type": "application/json"}), 400
    )
    assert_error(http.put("/datasets/ds_20000101_000000", json={"tags": "notalist"}), 400)


def test_concurrent_uploads_get_distinct_ids(http: httpx.Client) -> None:
    data = datagen.dataset_zip(count=3)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: uploaded(http, data), range(12)))
    assert len(set(ids)) == 12


def test_concurrent_prepares_make_distinct_complete_versions(http: httpx.Client) -> None:
    dataset_id = uploaded(http, datagen.dataset_zip(count=8))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: http.post(f"/datasets/{dataset_id}/prepare", json={}), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert sorted(r.json()["version"] for r in responses) == ["v1", "v2", "v3", "v4"]
    for response in responses:
        assert Path(response.json()["data_yaml"]).exists()
    _, body = prepared(http, datagen.dataset_zip(count=4))
    assert body["version"] == "v1"
