"""Request IDs and traces: one REST call can be followed through Envoy into the logs and spans of every service
it reaches."""

from __future__ import annotations

import contextlib
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


def _spans(log: str) -> list[dict]:
    """The spans ConsoleSpanExporter printed: JSON objects over several lines, from a `{` line to a `}` line."""
    spans, block = [], None
    for line in log.splitlines():
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                with contextlib.suppress(json.JSONDecodeError):  # another process's lines in between
                    spans.append(json.loads("\n".join(block)))
                block = None
    return spans


def _rpc_records(path: Path, request_id: str, components: set[str]) -> dict[str, dict]:
    """The `rpc` log line of each of `components` for `request_id` (each written just after its reply)."""
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in _json_lines(path) if r.get("request_id") == request_id and r["event"] == "rpc"]
        by_component = {record["component"]: record for record in records}
        if components <= set(by_component):
            assert len(records) == len(by_component), records  # one RPC per service
            return by_component
        assert time.monotonic() < deadline, f"no rpc line of {components - set(by_component)}: {records}"
        time.sleep(0.05)


def _job_of_a_missing_dataset(http: httpx.Client) -> str:
    """A request that crosses two services: the training service asks the dataset service for the dataset."""
    response = http.post("/train/jobs", json={"dataset_id": "ds_20000101_000000"})
    assert response.status_code == 404, response.text
    return response.headers["x-request-id"]


def test_the_gateway_request_id_reaches_the_service_log(platform: PlatformInstance, http: httpx.Client) -> None:
    response = http.get("/datasets/ds_20000101_000000")
    request_id = response.headers["x-request-id"]
    rpc = _rpc_records(platform.log_path, request_id, {"dataset"})["dataset"]
    assert rpc["rpc"] == "/visionmesh.dataset.v1.DatasetService/GetDataset"
    assert rpc["status"].startswith("NOT_FOUND 404")


def test_the_request_id_follows_the_request_to_the_services_it_calls(
    platform: PlatformInstance, http: httpx.Client
) -> None:
    request_id = _job_of_a_missing_dataset(http)
    records = _rpc_records(platform.log_path, request_id, {"training", "dataset"})
    assert records["training"]["rpc"] == "/visionmesh.training.v1.TrainingService/CreateJob"
    assert records["dataset"]["rpc"] == "/visionmesh.dataset.v1.DatasetService/GetDataset"
    assert records["dataset"]["status"].startswith("NOT_FOUND 404")


@pytest.mark.slow
def test_traces_are_exported_when_configured(tmp_path: Path) -> None:
    instance = PlatformInstance(tmp_path / "data", extra_env={"VM_OTEL_EXPORTER": "console"})
    with instance, httpx.Client(base_url=instance.base_url) as http:
        request_id = http.get("/datasets").headers["x-request-id"]
        crossing_id = _job_of_a_missing_dataset(http)
        records = _rpc_records(instance.log_path, request_id, {"dataset"})
        crossing = _rpc_records(instance.log_path, crossing_id, {"training", "dataset"})
    # Spans are flushed when the services stop.
    log = instance.log_path.read_text(errors="replace")
    assert '"name": "/visionmesh.dataset.v1.DatasetService/ListDatasets"' in log
    trace_id = records["dataset"]["trace_id"]
    assert len(trace_id) == 32 and trace_id in log.replace(trace_id, "", 1)
    # One trace across both services: the training service's span, its client call, the dataset service's span.
    assert crossing["training"]["trace_id"] == crossing["dataset"]["trace_id"] != trace_id
    spans = [span for span in _spans(log) if span["context"]["trace_id"] == f"0x{crossing['training']['trace_id']}"]
    assert sorted((span["name"], span["kind"]) for span in spans) == [
        ("/visionmesh.dataset.v1.DatasetService/GetDataset", "SpanKind.CLIENT"),
        ("/visionmesh.dataset.v1.DatasetService/GetDataset", "SpanKind.SERVER"),
        ("/visionmesh.training.v1.TrainingService/CreateJob", "SpanKind.SERVER"),
    ]
