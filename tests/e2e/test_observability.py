"""Request IDs and traces: one REST call can be followed through Envoy into the service's logs and spans."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from launcher.instance import PlatformInstance

pytestmark = pytest.mark.e2e


def _json_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # Envoy's own lines and multi-line span dumps are not JSON log records
    return lines


def test_the_gateway_request_id_reaches_the_service_log(platform: PlatformInstance, http: httpx.Client) -> None:
    response = http.get("/datasets/ds_20000101_000000")
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 5  # the RPC's log line is written just after its reply is sent
    while not (records := [r for r in _json_lines(platform.log_path) if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "the service logged nothing for this request id"
        time.sleep(0.05)
    [rpc] = [r for r in records if r["event"] == "rpc"]
    assert rpc["rpc"] == "/visionmesh.dataset.v1.DatasetService/GetDataset"
    assert rpc["component"] == "dataset" and rpc["status"].startswith("NOT_FOUND 404")


@pytest.mark.slow
def test_traces_are_exported_when_configured(tmp_path: Path) -> None:
    instance = PlatformInstance(tmp_path / "data", extra_env={"VM_OTEL_EXPORTER": "console"})
    with instance, httpx.Client(base_url=instance.base_url) as http:
        request_id = http.get("/datasets").headers["x-request-id"]
    # Spans are flushed when the services stop.
    log = instance.log_path.read_text(errors="replace")
    assert '"name": "/visionmesh.dataset.v1.DatasetService/ListDatasets"' in log
    [record] = [r for r in _json_lines(instance.log_path) if r.get("request_id") == request_id and r["event"] == "rpc"]
    assert len(record["trace_id"]) == 32 and record["trace_id"] in log.replace(record["trace_id"], "", 1)
