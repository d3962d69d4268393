"""The same platform with PostgreSQL as the metadata store (VM_DATASET_DATABASE_URL), as in docker-compose."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import assert_error, prepared
from tests.postgres import postgres_bin_dir, postgres_server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL server not installed (./mesh test installs it)"),
]


def test_the_dataset_service_on_postgresql(tmp_path: Path) -> None:
    with postgres_server(tmp_path / "pg") as url:
        instance = PlatformInstance(tmp_path / "data", extra_env={"VM_DATASET_DATABASE_URL": url})
        with instance, httpx.Client(base_url=instance.base_url, timeout=60) as http:
            dataset_id, body = prepared(http, datagen.dataset_zip(count=6))
            assert body["version"] == "v1"
            http.put(f"/datasets/{dataset_id}", json={"description": "on postgres", "tags": ["pg"]})
            task_id = http.post("/annotations/tasks", json={"dataset_id": dataset_id}).json()["task_id"]
            boxes = [{"class_id": 0, "x1": 1.0, "y1": 1.0, "x2": 20.0, "y2": 20.0}]
            assert http.post(f"/annotations/tasks/{task_id}/items/img001", json={"boxes": boxes}).status_code == 200
            assert http.get(f"/annotations/tasks/{task_id}/export").json()["exported_count"] == 6
            before = http.get(f"/datasets/{dataset_id}").json()
            assert_error(http.get("/datasets/ds_20000101_000000"), 404)
            instance.restart()
            with httpx.Client(base_url=instance.base_url, timeout=60) as again:
                assert again.get(f"/datasets/{dataset_id}").json() == before
                assert again.get(f"/annotations/tasks/{task_id}/items/img001").json()["boxes"] == boxes
                assert again.delete(f"/datasets/{dataset_id}").json()["ok"] is True
                assert again.get("/datasets").json() == {"datasets": [], "total": 0}
