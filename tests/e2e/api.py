"""Small REST helpers for the end-to-end tests (real HTTP through Envoy)."""

from __future__ import annotations

import io
import re
import zipfile

import httpx

DATASET_ID = re.compile(r"^ds_\d{8}_\d{6}(_\d+)?$")
TASK_ID = re.compile(r"^task_\d{8}_\d{6}(_\d+)?$")
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


def upload(http: httpx.Client, data: bytes, filename: str = "dataset.zip") -> httpx.Response:
    return http.post("/datasets/upload", files={"file": (filename, data, "application/zip")})


def uploaded(http: httpx.Client, data: bytes, filename: str = "dataset.zip") -> str:
    response = upload(http, data, filename)
    assert response.status_code == 200, response.text
    return response.json()["dataset_id"]


def prepared(http: httpx.Client, data: bytes, body: dict | None = None) -> tuple[str, dict]:
    dataset_id = uploaded(http, data)
    response = http.post(f"/datasets/{dataset_id}/prepare", json=body or {})
    assert response.status_code == 200, response.text
    return dataset_id, response.json()


def assert_error(response: httpx.Response, status: int, contains: str = "") -> str:
    """The documents' error contract: the status, application/json, and exactly {"detail": "<text>"}."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str) and body["detail"], body
    assert contains.lower() in body["detail"].lower(), body["detail"]
    return body["detail"]


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
