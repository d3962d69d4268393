"""Every REST route of protos/ with malformed path, query and body values, through the real Envoy.

The route list comes from the descriptor set (the same one the gateway serves), so a new route is covered
without editing this file. Every answer must be a 4xx in the route's documented error shape, with no stack
trace, no server path and no internal address in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.envoy_config import api_services
from gateway.request_schema import request_schema
from gateway.settings import GatewaySettings
from launcher.instance import PlatformInstance
from services.common.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

SCHEMA = request_schema(GatewaySettings().descriptor_set, api_services(GatewaySettings().descriptor_set))
MESSAGES = SCHEMA["messages"]

# Path values: invalid UTF-8, traversal (encoded and not), a huge number, an overlong value, a NUL byte.
BAD_PATH_VALUES = ["%ff%fe", "..%2F..%2Fetc%2Fpasswd", "..", "9" * 40, "a" * 3000, "%00", "%c0%af"]
WRONG_JSON = {
    "string": 123,
    "bytes": 5,
    "bool": "yes",
    "int32": "abc",
    "uint32": -1,
    "int64": "1.5",
    "uint64": [],
    "double": "many",
    "float": 1e39,
    "enum": "NO_SUCH_VALUE",
    "message": "not an object",
    "map": [1, 2],
    "struct": 5,
    "list": "x",
}
WRONG_QUERY = {"int32": "abc", "uint32": "-5", "int64": "1e999", "uint64": "x", "double": "many", "float": "1e99"}
WRONG_QUERY |= {"bool": "maybe"}
STACK_TRACE = re.compile(r"Traceback|File \"|\bline \d+, in\b|Exception:|grpc\._|_pb2")
INTERNAL_ADDRESS = re.compile(r"(127\.0\.0\.1|localhost|0\.0\.0\.0):\d+")


@dataclass(frozen=True)
class Case:
    route: dict[str, Any]
    method: str
    url: str
    what: str
    content: bytes | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.route['template']}: {self.what}"


def _url(route: dict[str, Any], values: dict[str, str], query: str = "") -> str:
    """The route's template with its variables replaced (already percent-encoded values)."""
    url = route["template"]
    for variable in route["variables"]:
        url = re.sub(r"\{" + re.escape(variable) + r"(=[^}]*)?\}", values.get(variable, "x"), url)
    return url + (f"?{query}" if query else "")


def _fields(route: dict[str, Any]) -> list[dict[str, Any]]:
    return MESSAGES[route["message"]]["fields"]


def _path_cases(route: dict[str, Any]) -> Iterator[Case]:
    for variable in route["variables"]:
        for value in BAD_PATH_VALUES:
            yield Case(route, route["method"], _url(route, {variable: value}), f"path {variable}={value[:20]}")


def _query_cases(route: dict[str, Any]) -> Iterator[Case]:
    if route["body"] == "*":
        return  # every field comes from the body
    bound = set(route["variables"]) | {route["body"]}
    for field in _fields(route):
        name, kind = field["name"], field["kind"]
        if name in bound or kind not in (*WRONG_QUERY, "string", "enum"):
            continue
        yield Case(route, route["method"], _url(route, {}, f"{name}=%ff"), f"query {name} not UTF-8")
        if kind in WRONG_QUERY:
            yield Case(route, route["method"], _url(route, {}, f"{name}={WRONG_QUERY[kind]}"), f"query {name}")


def _body_cases(route: dict[str, Any]) -> Iterator[Case]:
    url, method = _url(route, {}), route["method"]
    if route["streamed_body"]:
        yield Case(route, method, url, "empty upload", b"", {"content-type": "multipart/form-data"})
        yield Case(route, method, url, "garbage upload", b"\x00\xff" * 64, {"content-type": "application/json"})
        multipart = {"content-type": "multipart/form-data; boundary=zz"}
        yield Case(route, method, url, "truncated multipart", b"--zz\r\nContent-Disp", multipart)
        return
    if route["body"] != "*":
        return
    fields = [f for f in _fields(route) if f["name"] not in route["variables"]]
    bodies: dict[str, bytes] = {
        "a list": b"[1]",
        "invalid JSON": b'{"a": ',
        "invalid UTF-8": b'{"\xff": 1}',
        "unknown field": json.dumps({"no_such_field_here": 1}).encode(),
    }
    if any(field.get("required") for field in fields):  # a request of optional fields only may be empty
        bodies |= {"empty body": b"", "null body": b"null"}
    for field in fields:
        if field["kind"] not in ("value", "httpbody"):
            wrong = {"oops": 1} if field.get("repeated") else WRONG_JSON[field["kind"]]
            bodies[f"wrong type for {field['name']}"] = json.dumps({field["name"]: wrong}).encode()
        if field["kind"] in WRONG_QUERY and field["kind"] != "bool" and not field.get("repeated"):
            bodies[f"huge number for {field['name']}"] = b'{"' + field["name"].encode() + b'": 1e400}'
    for what, content in bodies.items():
        yield Case(route, method, url, what, content, {"content-type": "application/json"})


def _cases() -> Iterator[Case]:
    for route in SCHEMA["routes"]:
        yield Case(route, "PATCH", _url(route, {}), "a method no route takes")
        yield from _path_cases(route)
        yield from _query_cases(route)
        yield from _body_cases(route)


CASES = list(_cases())


def _assert_shape(case: Case, response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), (str(case), response.headers)
    body = response.json()
    if case.route["shape"] == "envelope":
        assert (body["code"], body["status"], body["message"]) == (-3000, response.status_code, "失败"), body
        assert body["payload"]["err"] in (601, 801, 802, 803, 804, 805, 806, 807, 808, "601", "806", "807"), body
        detail = body["payload"]["detail"]
    else:
        assert list(body) == ["detail"], body
        detail = body["detail"]
    assert isinstance(detail, str) and detail, body


def test_the_fuzz_covers_every_route() -> None:
    covered = {case.route["template"] for case in CASES}
    assert covered == {route["template"] for route in SCHEMA["routes"]}
    assert len(CASES) > 300


@pytest.mark.parametrize("case", CASES, ids=str)
def test_malformed_requests_get_a_4xx_in_the_documents_shape(
    http: httpx.Client, platform: PlatformInstance, case: Case
) -> None:
    response = http.request(case.method, case.url, content=case.content, headers=case.headers)
    if response.status_code == 429:  # the per-client upload limit: also an answer in the document's shape
        _assert_shape(case, response)
        return
    assert 400 <= response.status_code < 500, (str(case), response.status_code, response.text[:500])
    _assert_shape(case, response)
    text = response.text
    assert not STACK_TRACE.search(text), (str(case), text)
    assert not INTERNAL_ADDRESS.search(text), (str(case), text)
    for server_path in (str(platform.data_root), str(REPO_ROOT), "site-packages"):
        assert server_path not in text, (str(case), text)
