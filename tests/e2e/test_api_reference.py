"""The API reference through the real Envoy: GET /openapi.json, the /docs page and Swagger UI's files."""

from __future__ import annotations

import httpx
import pytest

from gateway.api_reference import swagger_ui_dir
from gateway.openapi import openapi_document
from gateway.settings import GatewaySettings
from tests.e2e.api import assert_error

pytestmark = pytest.mark.e2e


def test_the_openapi_document_is_served(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document(GatewaySettings().descriptor_set)
    assert http.head("/openapi.json").status_code == 200


def test_the_docs_page_and_its_files_are_served(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/docs/swagger-ui-bundle.js"' in page.text and 'url: "/openapi.json"' in page.text
    bundle = http.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.content == (swagger_ui_dir() / "swagger-ui-bundle.js").read_bytes()


def test_the_reference_takes_only_get_and_unknown_paths_stay_unknown(http: httpx.Client) -> None:
    response = http.post("/docs", json={})
    assert_error(response, 405, "takes GET, HEAD")
    assert response.headers["allow"] == "GET, HEAD"
    assert_error(http.get("/docs/swagger-ui-bundle.js.map"), 404)
