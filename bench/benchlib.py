"""What every benchmark under bench/ shares: percentiles, verdicts, load average, JSON results, and the REST
calls and errors of setting a benchmark up."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx


class BenchError(RuntimeError):
    """The platform did not do what the set-up needed; the benchmark stops with this message."""


def log(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def json_or_raise(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise BenchError(f"{what} answered HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def wait_for_export(http: httpx.Client, model_id: str, timeout: float) -> tuple[dict[str, Any], float]:
    """A registered model's ONNX export runs in the background: wait until it is no longer pending; the model
    as GET /models/{id} answers then, and the seconds waited."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = json_or_raise(http.get(f"/models/{model_id}"), f"GET /models/{model_id}")
        if model.get("export_status") != "pending":
            return model, time.perf_counter() - started
        time.sleep(0.5)
    raise BenchError(f"the ONNX export of {model_id} was still pending after {timeout:.0f}s")


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(len(sorted_values) * pct / 100))
    return sorted_values[rank - 1]


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def load_average() -> float | None:
    """The 1-minute load average: a busy machine makes every figure worse, so reports print it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_json(report: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
