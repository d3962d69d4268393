"""What the gateway port answers besides the API: the OpenAPI document at GET /openapi.json and the interactive
reference at GET /docs, Swagger UI's own files from the swagger-ui-py package (nothing from a CDN: the page works
offline). Envoy answers them itself, as direct responses (gateway/envoy_config.py)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from gateway.openapi import openapi_document
from services.common.settings import REPO_ROOT

# The same document as a file, for tools that read one (client generators, editors).
OPENAPI_FILE = REPO_ROOT / "build" / "openapi.json"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# The files of Swagger UI the page loads, from the package's static/ folder.
_SWAGGER_UI_FILES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

# Paths the gateway answers itself, and the methods they take.
REFERENCE_PATHS = (OPENAPI_PATH, DOCS_PATH, *(f"{DOCS_PATH}/{name}" for name in _SWAGGER_UI_FILES))
REFERENCE_METHODS = ("GET", "HEAD")

# BaseLayout: the reference alone, without the standalone top bar (a URL box and the online validator's badge).
_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>VisionMesh REST API</title>
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png">
  <link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
  <style>body {{ margin: 0; background: #fafafa; }}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{OPENAPI_PATH}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    }});
  </script>
</body>
</html>
"""


@dataclass(frozen=True)
class StaticResponse:
    path: str
    content_type: str
    body: bytes


def swagger_ui_dir() -> Path:
    # Located without importing the package (its __init__ loads web-framework adapters the gateway does not use).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the swagger-ui-py package is missing: run ./mesh setup")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def openapi_json(descriptor_set: Path) -> bytes:
    return json.dumps(openapi_document(descriptor_set), ensure_ascii=False, indent=1).encode() + b"\n"


def write_openapi(descriptor_set: Path, output: Path = OPENAPI_FILE) -> Path:
    output.write_bytes(openapi_json(descriptor_set))
    return output


def api_reference(descriptor_set: Path) -> list[StaticResponse]:
    """Every response of the API reference, one per path of REFERENCE_PATHS."""
    static = swagger_ui_dir()
    return [
        StaticResponse(OPENAPI_PATH, "application/json", openapi_json(descriptor_set)),
        StaticResponse(DOCS_PATH, "text/html; charset=utf-8", _PAGE.encode()),
        *(
            StaticResponse(f"{DOCS_PATH}/{name}", content_type, (static / name).read_bytes())
            for name, content_type in _SWAGGER_UI_FILES.items()
        ),
    ]
