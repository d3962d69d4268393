"""Dataset service benchmark: upload + prepare throughput, and GET /datasets/{id} latency per access path.

Run it with `./mesh bench dataset_bench` (or `.venv/bin/python bench/dataset_bench.py [flags]`). By default it
starts a whole platform (launcher -> dataset service, gateway, Envoy) on free ports in a temporary data root
and stops it at the end; `--base-url` (plus `--grpc-target` / `--service-target`) benches a running one.

What is measured:

1. Upload + prepare. A dataset of `--images` generated 640x480 JPEGs (coloured shapes on a noisy gradient,
   ~30-80 KB each) with one YOLO label file per image is zipped as images/ + labels/ + classes.txt (deflated,
   as common zip tools do). The bench times `POST /datasets/upload` (multipart, reported in MB/s of the
   ZIP) and then `POST /datasets/{id}/prepare` `--prepare-runs` times (each run builds a new version v1,
   v2, ... of the same dataset), reporting the median in images/s and MB/s. Target: prepare >= 500 images/s.

2. `GET /datasets/{id}` latency (p50, p99) and throughput, at concurrency 1 and 16, over three paths:
     rest         REST through Envoy's gRPC-JSON transcoder: one keep-alive http.client connection per worker
                  thread (TCP_NODELAY), the lowest-overhead HTTP/1.1 client in the standard library;
     grpc-envoy   native gRPC through Envoy's shared port, sync stub, one channel per worker;
     grpc-direct  native gRPC straight to the dataset service, sync stub, one channel per worker.
   Each worker's connection is warmed up first (`--warmup` requests split across the workers), then all
   workers start together; `--requests` requests per path at concurrency 1 (twice as many at concurrency
   16) are sent in `--rounds` turns that alternate between the paths, so drifts of a shared machine do not
   favour one path. "Gateway overhead at p50" is p50(rest) - p50(grpc-direct). Target: <= 1 ms on loopback.

3. What the gateway's request checks (envoy/request_checks.lua: route resolution, path/query checks, strict
   JSON parsing and the walk of the body against the request message) cost: on a platform the bench starts,
   a second Envoy runs the same rendered config without that filter, in front of the same services, and the
   bench adds `rest-unchecked` (GET through it) and `rest-put` / `rest-put-unchecked` (PUT /datasets/{id} with
   a JSON body of description and tags, through each Envoy) to the interleaved paths. The cost at p50 is
   p50(through the platform's Envoy) - p50(through the one without checks). Target: < 1 ms.

Client and platform share the machine: at concurrency 16 the Python client threads (one GIL) compete with
Envoy and the dataset service for the same cores, so treat those figures as the whole system's, not the
server's alone. The figures are printed as a table and written to bench/results/dataset_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from unittest import mock
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import yaml
from PIL import Image, ImageDraw
from visionmesh.dataset.v1 import dataset_pb2 as pb
from visionmesh.dataset.v1 import dataset_pb2_grpc

from bench.benchlib import BenchError, json_or_raise, load_average, percentile, verdict, write_json
from launcher.instance import PlatformInstance

PREPARE_TARGET_IMAGES_PER_S = 500.0
GATEWAY_OVERHEAD_TARGET_MS = 1.0
CHECKS_OVERHEAD_TARGET_MS = 1.0
CONCURRENCIES = (1, 16)
CLASSES = ("circle", "square", "triangle")
IMAGE_SIZE = (640, 480)
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "dataset_bench.json"
MB = 1024 * 1024
_HTTP_TIMEOUT_S = 600.0
_RPC_TIMEOUT_S = 30.0
# Each channel gets its own connection (grpc shares subchannels between channels by default), and a loopback
# benchmark must never go through an http_proxy from the environment.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]


# ------------------------------------------------------------------------------------------ dataset ZIP


@dataclass(frozen=True)
class GeneratedDataset:
    path: Path
    images: int
    zip_bytes: int
    image_bytes: int  # JPEG bytes before zipping
    label_lines: int


def _render_image(rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """One JPEG (shapes on a noisy gradient) and its YOLO label lines."""
    width, height = IMAGE_SIZE
    left, right = rng.uniform(30, 220, 3).astype(np.float32), rng.uniform(30, 220, 3).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    pixels = (
        left * (1 - ramp)
        + right * ramp
        + rng.standard_normal((height, width, 3), dtype=np.float32) * float(rng.uniform(5.0, 11.0))
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    lines = []
    for _ in range(int(rng.integers(1, 6))):
        box_w, box_h = int(rng.integers(30, 250)), int(rng.integers(30, 200))
        x0, y0 = int(rng.integers(0, width - box_w)), int(rng.integers(0, height - box_h))
        x1, y1 = x0 + box_w, y0 + box_h
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        class_id = int(rng.integers(0, len(CLASSES)))
        if class_id == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif class_id == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon(((x0, y1), ((x0 + x1) / 2, y0), (x1, y1)), fill=colour)
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {box_w / width:.6f} {box_h / height:.6f}")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue(), lines


def generate_dataset(path: Path, images: int, seed: int = 20240115) -> GeneratedDataset:
    rng = np.random.default_rng(seed)
    image_bytes = label_lines = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr("classes.txt", "\n".join(CLASSES) + "\n")
        for index in range(images):
            jpeg, lines = _render_image(rng)
            archive.writestr(f"images/img{index:05d}.jpg", jpeg)
            archive.writestr(f"labels/img{index:05d}.txt", "\n".join(lines) + "\n")
            image_bytes += len(jpeg)
            label_lines += len(lines)
    return GeneratedDataset(path, images, path.stat().st_size, image_bytes, label_lines)


# ---------------------------------------------------------------------------------------- upload/prepare


@dataclass
class UploadPrepareResult:
    dataset_id: str
    images: int
    zip_mb: float
    mean_image_kb: float
    upload_s: float
    upload_mb_per_s: float
    prepare_runs_s: list[float]
    prepare_median_s: float
    prepare_images_per_s: float
    prepare_mb_per_s: float
    prepare_versions: list[str]
    train_count: int
    val_count: int
    target_images_per_s: float = PREPARE_TARGET_IMAGES_PER_S
    meets_target: bool = False


def upload_and_prepare(client: httpx.Client, dataset: GeneratedDataset, runs: int) -> UploadPrepareResult:
    with dataset.path.open("rb") as handle:
        started = time.perf_counter()
        response = client.post("/datasets/upload", files={"file": (dataset.path.name, handle, "application/zip")})
        upload_s = time.perf_counter() - started
    dataset_id = json_or_raise(response, "upload")["dataset_id"]

    durations, versions = [], []
    train = val = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = client.post(f"/datasets/{dataset_id}/prepare", json={})
        durations.append(time.perf_counter() - started)
        prepared = json_or_raise(response, "prepare")
        train, val = int(prepared.get("train_count", 0)), int(prepared.get("val_count", 0))
        accepted = int(prepared.get("report", {}).get("images_accepted", 0))
        if accepted != dataset.images or train + val != dataset.images:
            raise BenchError(f"prepare accepted {accepted} images ({train} train + {val} val) of {dataset.images}")
        versions.append(str(prepared.get("version", "")))

    median_s = statistics.median(durations)
    zip_mb = dataset.zip_bytes / MB
    result = UploadPrepareResult(
        dataset_id=dataset_id,
        images=dataset.images,
        zip_mb=zip_mb,
        mean_image_kb=dataset.image_bytes / dataset.images / 1024,
        upload_s=upload_s,
        upload_mb_per_s=zip_mb / upload_s,
        prepare_runs_s=durations,
        prepare_median_s=median_s,
        prepare_images_per_s=dataset.images / median_s,
        prepare_mb_per_s=zip_mb / median_s,
        prepare_versions=versions,
        train_count=train,
        val_count=val,
    )
    result.meets_target = result.prepare_images_per_s >= PREPARE_TARGET_IMAGES_PER_S
    return result


# ------------------------------------------------------------------------------------------------ latency


class Client(Protocol):
    """One worker's connection: each call sends one GET and checks the answer."""

    reconnects: int

    def __call__(self) -> None: ...

    def close(self) -> None: ...


class RestClient:
    """GET /datasets/{id} (or PUT it with a JSON body) over one keep-alive HTTP/1.1 connection."""

    def __init__(self, base_url: str, dataset_id: str, method: str = "GET", body: dict | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise BenchError(f"--base-url must be http://host[:port][/prefix], not {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = f"{parts.path.rstrip('/')}/datasets/{dataset_id}"
        self._method = method
        self._body = None if body is None else json.dumps(body).encode()
        self._headers = {"Accept": "application/json"}
        if self._body is not None:
            self._headers["Content-Type"] = "application/json"
        self._connection = self._connect()
        self.reconnects = 0
        body = self._get()
        if json.loads(body).get("dataset_id") != dataset_id:
            raise BenchError(f"{method} {self._path} returned another dataset: {body[:200]!r}")

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=_RPC_TIMEOUT_S)
        connection.connect()
        assert connection.sock is not None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _get(self) -> bytes:
        try:
            self._connection.request(self._method, self._path, body=self._body, headers=self._headers)
            response = self._connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed an idle keep-alive connection: reconnect once (counted in the results).
            self.reconnects += 1
            self._connection.close()
            self._connection = self._connect()
            self._connection.request(self._method, self._path, body=self._body, headers=self._headers)
            response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"{self._method} {self._path} answered HTTP {response.status}: {body[:300]!r}")
        if response.will_close:
            self._connection.close()
            self._connection = self._connect()
            self.reconnects += 1
        return body

    def __call__(self) -> None:
        self._get()

    def close(self) -> None:
        self._connection.close()


class GrpcClient:
    """DatasetService.GetDataset over its own channel (and so its own HTTP/2 connection)."""

    def __init__(self, target: str, dataset_id: str) -> None:
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        grpc.channel_ready_future(self._channel).result(timeout=_RPC_TIMEOUT_S)
        self._stub = dataset_pb2_grpc.DatasetServiceStub(self._channel)
        self._request = pb.GetDatasetRequest(dataset_id=dataset_id)
        self.reconnects = 0
        reply = self._stub.GetDataset(self._request, timeout=_RPC_TIMEOUT_S)
        if reply.dataset_id != dataset_id:
            raise BenchError(f"GetDataset via {target} returned another dataset: {reply.dataset_id!r}")

    def __call__(self) -> None:
        self._stub.GetDataset(self._request, timeout=_RPC_TIMEOUT_S)

    def close(self) -> None:
        self._channel.close()


@dataclass(frozen=True)
class AccessPath:
    name: str
    description: str
    factory: Callable[[], Client]


@dataclass
class LatencyResult:
    path: str
    description: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests_per_s: float
    wall_s: float
    reconnects: int = 0


def _timed_run(clients: list[Client], requests: int, warmup_each: int) -> tuple[list[float], float]:
    """Every client warms up on its own thread, then all start together; the latencies (ms) and wall time (s)."""
    concurrency = len(clients)
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    samples: list[list[float]] = [[] for _ in range(concurrency)]
    finished = [0.0] * concurrency
    errors: list[BaseException] = []
    ready = threading.Barrier(concurrency + 1)

    def worker(index: int) -> None:
        call, own = clients[index], samples[index]
        try:
            for _ in range(warmup_each):
                call()
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            errors.append(error)
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        clock = time.perf_counter_ns
        try:
            for _ in range(shares[index]):
                started = clock()
                call()
                own.append((clock() - started) / 1e6)
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            errors.append(error)
        finished[index] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [value for own in samples for value in own], max(finished) - started


def measure_latency(
    paths: list[AccessPath], concurrency: int, requests: int, warmup: int, rounds: int
) -> list[LatencyResult]:
    """`requests` per path at `concurrency`, in `rounds` that take turns between the paths.

    Interleaving spreads slow drifts of a shared machine (other load, CPU frequency, the database's WAL
    growing) over every path instead of biasing whichever path happened to run last.
    """
    clients: dict[str, list[Client]] = {}
    samples: dict[str, list[float]] = {path.name: [] for path in paths}
    walls = dict.fromkeys(samples, 0.0)
    try:
        for path in paths:
            clients[path.name] = [path.factory() for _ in range(concurrency)]
        for turn in range(rounds):
            share = requests // rounds + (1 if turn < requests % rounds else 0)
            rotated = paths[turn % len(paths) :] + paths[: turn % len(paths)]
            for path in rotated:
                # Full warm-up on the first round; a few requests re-warm the path after the others ran.
                warmup_each = max(warmup // concurrency, 10) if turn == 0 else 3
                try:
                    latencies, wall = _timed_run(clients[path.name], share, warmup_each)
                except BaseException as error:
                    raise BenchError(f"{path.name} at concurrency {concurrency}: {error!r}") from error
                samples[path.name] += latencies
                walls[path.name] += wall
    finally:
        for opened in clients.values():
            for client in opened:
                client.close()

    results = []
    for path in paths:
        latencies = sorted(samples[path.name])
        results.append(
            LatencyResult(
                path=path.name,
                description=path.description,
                concurrency=concurrency,
                requests=len(latencies),
                p50_ms=percentile(latencies, 50),
                p99_ms=percentile(latencies, 99),
                mean_ms=statistics.fmean(latencies),
                max_ms=latencies[-1],
                requests_per_s=len(latencies) / walls[path.name],
                wall_s=walls[path.name],
                reconnects=sum(client.reconnects for client in clients[path.name]),
            )
        )
    return results


@dataclass
class Overhead:
    concurrency: int
    gateway_p50_ms: float  # p50(rest) - p50(grpc-direct)
    envoy_grpc_p50_ms: float | None  # p50(grpc-envoy) - p50(grpc-direct)
    # p50(rest) - p50(rest-unchecked), and the same for the PUT with a JSON body: what the request checks cost.
    checks_get_p50_ms: float | None = None
    checks_put_p50_ms: float | None = None
    target_ms: float = GATEWAY_OVERHEAD_TARGET_MS
    meets_target: bool = False
    checks_meet_target: bool | None = None


def overheads(results: list[LatencyResult]) -> list[Overhead]:
    by_key = {(r.path, r.concurrency): r for r in results}

    def difference(path: str, baseline: str, concurrency: int) -> float | None:
        measured, base = by_key.get((path, concurrency)), by_key.get((baseline, concurrency))
        return None if measured is None or base is None else measured.p50_ms - base.p50_ms

    found = []
    for concurrency in CONCURRENCIES:
        gateway = difference("rest", "grpc-direct", concurrency)
        if gateway is None:
            continue
        checks = [difference(path, f"{path}-unchecked", concurrency) for path in ("rest", "rest-put")]
        measured_checks = [value for value in checks if value is not None]
        found.append(
            Overhead(
                concurrency=concurrency,
                gateway_p50_ms=gateway,
                envoy_grpc_p50_ms=difference("grpc-envoy", "grpc-direct", concurrency),
                checks_get_p50_ms=checks[0],
                checks_put_p50_ms=checks[1],
                meets_target=gateway <= GATEWAY_OVERHEAD_TARGET_MS,
                checks_meet_target=(
                    all(value <= CHECKS_OVERHEAD_TARGET_MS for value in measured_checks) if measured_checks else None
                ),
            )
        )
    return found


@contextlib.contextmanager
def envoy_without_checks(instance: PlatformInstance, work_dir: Path) -> Iterator[str]:
    """A second Envoy in front of the same services, with the platform's config minus the request checks
    (envoy/request_checks.lua): the baseline their cost is measured against. Yields its base URL."""
    from gateway.envoy_config import envoy_command, render
    from gateway.settings import GatewaySettings
    from launcher.instance import free_port

    with mock.patch.dict(os.environ, instance.env):
        settings = GatewaySettings()
        config = render(settings)
    listener = config["static_resources"]["listeners"][0]
    port = free_port()
    listener["address"]["socket_address"]["port_value"] = port
    listener.pop("additional_addresses", None)
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != "visionmesh.request_checks"]
    path = work_dir / "envoy-unchecked.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    envoy = str(Path(sys.executable).parent / "envoy")
    process = subprocess.Popen(envoy_command(settings, path, envoy), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/datasets?page_size=1", timeout=2, trust_env=False).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the Envoy without request checks did not start: {process.stderr.read()[-500:]!r}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


# ------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    started_at: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    upload_prepare: UploadPrepareResult | None = None
    latency: list[LatencyResult] = field(default_factory=list)
    gateway_overhead: list[Overhead] = field(default_factory=list)


def render_table(report: Report) -> str:
    lines = []
    env = report.environment
    lines.append(
        f"VisionMesh dataset bench  ({env['cpus']} CPUs, Python {env['python']}, {env['platform_source']} platform, "
        f"1-min load average {env['load_avg_1m_start']} before the bench)"
    )
    load = env["load_avg_1m_start"]
    if load is not None and load > 0.5 * (env["cpus"] or 1):
        lines.append("  note: other work was running on this machine; the figures are pessimistic and noisy")
    up = report.upload_prepare
    if up is not None:
        lines += [
            "",
            f"Upload + prepare: {up.images} images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} "
            f"(mean {up.mean_image_kb:.0f} KB JPEG), ZIP {up.zip_mb:.1f} MB, dataset {up.dataset_id}",
            f"  {'step':<34}{'seconds':>9}{'images/s':>11}{'MB/s':>9}   target",
            f"  {'upload':<34}{up.upload_s:>9.3f}{up.images / up.upload_s:>11.0f}{up.upload_mb_per_s:>9.1f}",
            f"  {f'prepare (median of {len(up.prepare_runs_s)})':<34}{up.prepare_median_s:>9.3f}"
            f"{up.prepare_images_per_s:>11.0f}{up.prepare_mb_per_s:>9.1f}"
            f"   >= {up.target_images_per_s:.0f} images/s  {verdict(up.meets_target)}",
            f"  prepare runs (s): {', '.join(f'{s:.3f}' for s in up.prepare_runs_s)}"
            f"  -> versions {', '.join(up.prepare_versions)}; last split {up.train_count} train / {up.val_count} val",
        ]
    if report.latency:
        lines += [
            "",
            "GET /datasets/{id}",
            f"  {'path':<44}{'conc':>5}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}",
        ]
        for r in report.latency:
            note = f"  ({r.reconnects} reconnects)" if r.reconnects else ""
            lines.append(
                f"  {r.description:<44}{r.concurrency:>5}{r.requests:>10}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
                f"{r.mean_ms:>9.3f}{r.requests_per_s:>9.0f}{note}"
            )
    if report.latency and not report.gateway_overhead:
        lines += ["", "Gateway overhead: not measured (pass --service-target for the direct gRPC path)"]
    if report.gateway_overhead:
        lines += ["", "Gateway overhead at p50 = p50(REST via Envoy) - p50(direct gRPC)"]
        for o in report.gateway_overhead:
            envoy_grpc = (
                "" if o.envoy_grpc_p50_ms is None else f"   (native gRPC via Envoy: {o.envoy_grpc_p50_ms:+.3f} ms)"
            )
            lines.append(
                f"  concurrency {o.concurrency:>2}: {o.gateway_p50_ms:+.3f} ms   target <= {o.target_ms:g} ms  "
                f"{verdict(o.meets_target)}{envoy_grpc}"
            )
        checked = [o for o in report.gateway_overhead if o.checks_get_p50_ms is not None]
        if checked:
            lines += ["", "Request checks (envoy/request_checks.lua) at p50 = p50(Envoy) - p50(Envoy without them)"]
        for o in checked:
            put = "" if o.checks_put_p50_ms is None else f", PUT with a JSON body {o.checks_put_p50_ms:+.3f} ms"
            lines.append(
                f"  concurrency {o.concurrency:>2}: GET {o.checks_get_p50_ms:+.3f} ms{put}   "
                f"target <= {CHECKS_OVERHEAD_TARGET_MS:g} ms  {verdict(bool(o.checks_meet_target))}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Targets:
    base_url: str
    grpc_target: str
    service_target: str | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images in the generated dataset (default 200)")
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="GET requests per path at concurrency 1; concurrency 16 sends twice as many (default 2000)",
    )
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per path and concurrency")
    parser.add_argument("--rounds", type=int, default=4, help="turns the paths take at each concurrency")
    parser.add_argument("--prepare-runs", type=int, default=5, help="prepare calls; the median is reported")
    parser.add_argument("--keep", action="store_true", help="leave the data root (and the bench dataset) in place")
    parser.add_argument("--base-url", help="bench a running platform: its REST base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--grpc-target", help="its shared gRPC port (default: host:port of --base-url)")
    parser.add_argument("--service-target", help="the dataset service's own gRPC address (omit to skip that path)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    if (args.grpc_target or args.service_target) and not args.base_url:
        parser.error("--grpc-target and --service-target need --base-url")
    if args.images < 2 or args.requests < 1 or args.prepare_runs < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--images must be >= 2, --requests, --prepare-runs and --rounds >= 1, --warmup >= 0")
    if args.requests < args.rounds:
        parser.error("--requests must be at least --rounds")
    return args


def external_targets(args: argparse.Namespace) -> Targets:
    base_url = args.base_url.rstrip("/")
    parts = urlsplit(base_url)
    grpc_target = args.grpc_target or f"{parts.hostname}:{parts.port or 80}"
    return Targets(base_url, grpc_target, args.service_target)


def run_bench(
    args: argparse.Namespace, targets: Targets, work_dir: Path, report: Report, unchecked_url: str | None = None
) -> str:
    """Fill `report`; return the bench dataset's ID."""
    print(f"generating {args.images} images ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    dataset = generate_dataset(work_dir / "bench-dataset.zip", args.images)
    print(
        f"  {dataset.zip_bytes / MB:.1f} MB ZIP, {dataset.label_lines} label lines, "
        f"{time.perf_counter() - started:.1f}s",
        file=sys.stderr,
        flush=True,
    )

    with httpx.Client(base_url=targets.base_url, timeout=_HTTP_TIMEOUT_S, trust_env=False) as client:
        print(f"upload + {args.prepare_runs} prepare runs ...", file=sys.stderr, flush=True)
        report.upload_prepare = upload_and_prepare(client, dataset, args.prepare_runs)
    dataset_id = report.upload_prepare.dataset_id

    paths = [
        AccessPath(
            "rest", "REST via Envoy (http.client, keep-alive)", lambda: RestClient(targets.base_url, dataset_id)
        ),
        AccessPath("grpc-envoy", "native gRPC via Envoy", lambda: GrpcClient(targets.grpc_target, dataset_id)),
    ]
    update = {"description": "benchmark dataset", "tags": ["bench", "shapes"]}
    if unchecked_url:
        paths += [
            AccessPath(
                "rest-unchecked", "REST via Envoy without request checks", lambda: RestClient(unchecked_url, dataset_id)
            ),
            AccessPath(
                "rest-put",
                "REST PUT (JSON body) via Envoy",
                lambda: RestClient(targets.base_url, dataset_id, "PUT", update),
            ),
            AccessPath(
                "rest-put-unchecked",
                "REST PUT via Envoy without request checks",
                lambda: RestClient(unchecked_url, dataset_id, "PUT", update),
            ),
        ]
    if targets.service_target:
        service_target = targets.service_target
        paths.append(
            AccessPath(
                "grpc-direct", "direct gRPC to the dataset service", lambda: GrpcClient(service_target, dataset_id)
            )
        )
    for concurrency in CONCURRENCIES:
        requests = args.requests * (1 if concurrency == 1 else 2)
        names = ", ".join(path.name for path in paths)
        print(f"GET latency at concurrency {concurrency}: {names} ...", file=sys.stderr, flush=True)
        report.latency += measure_latency(paths, concurrency, requests, args.warmup, args.rounds)
    report.gateway_overhead = overheads(report.latency)
    return dataset_id


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="visionmesh-dataset-bench-"))
    report = Report(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "system": platform.platform(),
            "grpcio": grpc.__version__,
            "platform_source": "external" if args.base_url else "started",
            "load_avg_1m_start": load_average(),
        },
        settings={
            "images": args.images,
            "requests_concurrency_1": args.requests,
            "requests_concurrency_16": args.requests * 2,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "prepare_runs": args.prepare_runs,
        },
    )
    instance: PlatformInstance | None = None
    dataset_id = ""
    try:
        if args.base_url:
            targets = external_targets(args)
        else:
            print(f"starting the platform in {work_dir} ...", file=sys.stderr, flush=True)
            instance = PlatformInstance(work_dir / "data")
            instance.start()
            targets = Targets(instance.base_url, instance.grpc_target, instance.service_target("dataset"))
        report.settings.update(asdict(targets))
        with contextlib.ExitStack() as stack:
            # The request checks' cost needs a second Envoy on the same services: only on a platform started here.
            unchecked = stack.enter_context(envoy_without_checks(instance, work_dir)) if instance else None
            dataset_id = run_bench(args, targets, work_dir, report, unchecked)
    finally:
        if instance is not None:
            instance.stop()
        elif dataset_id and not args.keep:
            httpx.delete(f"{targets.base_url}/datasets/{dataset_id}", timeout=60, trust_env=False)
        if args.keep:
            print(f"kept {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    print(render_table(report))
    write_json(report, args.output)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
