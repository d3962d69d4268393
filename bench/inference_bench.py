"""Inference service benchmark: YOLO detection throughput and latency through the mesh, next to direct gRPC,
direct Triton and a single-process Ultralytics, Triton's dynamic batching, and video streaming.

Run it with `./mesh bench inference_bench` (or `.venv/bin/python bench/inference_bench.py [flags]`). It starts
a whole platform (launcher -> Triton, dataset/training/inference services, gateway, Envoy) on free ports in a
temporary data root, and stops it at the end, errors included (`--keep` leaves the data root in place).

Set-up (not timed). The model is a real YOLOv8n (yolov8n.yaml, 3.0 M parameters, trained from scratch: no
pretrained weights offline) trained through the platform for 1 epoch at imgsz 640 on 16 generated 640x480
images of 2 classes (synthetic/datagen.py, `POST /datasets/upload` + `/prepare` + `POST /train/jobs`), then
exported by the training service to ONNX (dynamic batch) into Triton's repository. Its best.pt is uploaded
once more (`POST /models/upload`, a ZIP of weights/best.pt + model.json {"imgsz": 320}) for the video part,
which the training service exports at 320x320. One request per model loads it into Triton before any timing.
Test images, the same for every path: the two real photos shipped in the Ultralytics wheel
(ultralytics/assets/bus.jpg 810x1080, zidane.jpg 1280x720) and 4 generated 640x480 JPEGs (shapes on a noisy
gradient, quality 85); each worker cycles through them starting at its own offset. A 1-epoch model finds
little or nothing on them, so NMS costs next to nothing on every path alike; the bench prints the detection
counts so the paths can be compared.

1. Throughput (images/s = successful requests / wall time from the common start until the last worker's last
   answer) and latency (p50, p99 per request, client side) at each concurrency of `--levels` (default
   1,8,16), each level `--duration` seconds (default 12) after one untimed warm-up request per worker (which
   also opens its connection). Workers are threads of this process; each owns its connection:
     rest          `POST /infer/{model_id}` (multipart `file`) through Envoy's REST port: an httpx.Client
                   (keep-alive, TCP_NODELAY) per worker. This is the product path.
     grpc-direct   `InferenceService/Infer` client-streaming with one message (model_id, filename and the
                   JPEG as HttpBody(content_type="image/jpeg")), sync stub, a channel per worker (own
                   connection), straight to the inference service: the REST path minus Envoy/transcoding.
     grpc-envoy    the same call through Envoy's shared port (native gRPC, no transcoding).
     triton        tritonclient.grpc straight to Triton, a client per worker; the worker decodes the JPEG,
                   letterboxes (services.common.images.decode_image + detection.letterbox, as the service
                   does) and runs `postprocess` itself: the model server alone, without the inference service.
   The levels run in order and, within a level, the paths one after another, so one level's paths are
   measured close together in time.
   Baselines (c) - what a user would run instead, each in a child process (importing Ultralytics patches PIL
   and cv2 globally) with ultralytics_environment() (offline), while the platform is idle, for `--duration`
   seconds after 3 untimed calls, sequentially on the same image files (paths, so Ultralytics reads and
   decodes them as the service does):
     ultralytics-pt    `YOLO(best.pt).predict(path, imgsz=640, device="cpu")` - its default threads
                       (Ultralytics sets torch to cores - 1); the target's reference.
     ultralytics-onnx  `YOLO(model.onnx)` (the very file Triton runs), same call. Ultralytics letterboxes a
                       dynamic ONNX model to the smallest multiple-of-32 rectangle, not the 640x640 square
                       the mesh sends, so it computes fewer pixels on non-square photos.
   Target: rest at concurrency 16 >= 1.5 x the images/s of ultralytics-pt.

2. Dynamic batching. Triton's `get_inference_statistics(model_id)` is read right before and after each
   timed run; the difference gives inference_count (images), execution_count (model executions: batches)
   and the batch_stats histogram (batch size -> executions), plus Triton's mean queue time per image and
   mean compute_infer time per execution. Batching happened when executions < images.

3. Video at 320x320: a generated clip (`--video-frames`, default 300 frames, 320x320, 30 fps, OpenCV mp4v,
   a square and a circle moving across a plain background) with the 320 model:
     stream      `POST /infer/video/{model_id}/stream` (multipart upload, then Server-Sent Events read with
                 httpx): frames/s = frames / (first frame event -> end event); also end to end (frames /
                 (request start -> end event), the upload included) and the time to the first event.
     non-stream  `POST /infer/video/{model_id}`: frames / (request start -> the JSON answer with the base64
                 H.264 MP4).
   Target: stream frames/s >= 15.

4. Where the CPU goes. Around every timed run the bench reads the user+system CPU time (psutil) of Envoy,
   the inference service, the tritonserver process, its Python-backend stub processes (the model instances
   running ONNX Runtime: children of tritonserver), the gateway, the rest of the mesh (launcher, dataset and
   training services) and this bench process, and the busy time of the whole machine (/proc/stat), whose
   remainder is "rest of machine": other work on a shared host. Shown as % of one core (the machine has
   `cpus` x 100 %) and as CPU ms per image. The 1-minute load average before and after each run and the core
   count are printed too: on a busy host every figure is pessimistic. "Ceiling" = cores x 1000 / (CPU ms per
   image of the mesh and the client together): the images/s the run's own CPU cost would allow if nothing
   else ran (an estimate that ignores that CPU time itself grows on a contended machine).

Everything shares one machine: the client threads, Envoy, the service, Triton and the baselines compete for
the same cores, so the figures are the whole system's. They are printed as tables and written to
bench/results/inference_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import grpc
import httpx
import numpy as np
import psutil
import tritonclient.grpc as triton_grpc
from google.api import httpbody_pb2
from visionmesh.inference.v1 import inference_pb2 as pb
from visionmesh.inference.v1 import inference_pb2_grpc

from bench.benchlib import (
    BenchError,
    json_or_raise,
    load_average,
    log,
    package_version,
    percentile,
    verdict,
    wait_for_export,
    write_json,
)
from launcher.instance import PlatformInstance
from services.common.images import decode_image
from services.inference.domain.detection import letterbox, postprocess
from services.training.ultralytics_env import ultralytics_environment
from synthetic import datagen

THROUGHPUT_RATIO_TARGET = 1.5
VIDEO_FPS_TARGET = 15.0
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "inference_bench.json"
PATHS = ("rest", "grpc-direct", "grpc-envoy", "triton")
IMGSZ = 640
VIDEO_IMGSZ = 320
VIDEO_SIZE = 320
VIDEO_FPS = 30
TRAIN_IMAGES = 16
GENERATED_IMAGES = 4
GENERATED_SIZE = (640, 480)
CONF, IOU = 0.25, 0.45  # the service's defaults
MAX_PIXELS = 64_000_000  # the service's default max_image_pixels
BASELINE_WARMUP_CALLS = 3
MAX_ERRORS_PER_WORKER = 20
_HTTP_TIMEOUT_S = 120.0
_RPC_TIMEOUT_S = 120.0
_EXPORT_TIMEOUT_S = 600.0
_TRAIN_TIMEOUT_S = 900.0
# Each channel gets its own connection (grpc shares subchannels between channels by default), and a loopback
# benchmark must never go through an http_proxy from the environment.
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 64 * 1024**2),
    ("grpc.max_send_message_length", 64 * 1024**2),
]
_BASELINE_MARKER = "INFERENCE_BENCH_RESULT="

# A baseline in a child process: the same images, sequentially, with Ultralytics' own predict.
BASELINE_SCRIPT = """
import json, sys, time
spec = json.loads(sys.argv[1])
import psutil
from ultralytics.utils import patches
patches._pil_plugins_registered = True  # as the training worker: never pip-install pi-heif
import torch
from ultralytics import YOLO

def machine_busy():
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq

model = YOLO(spec["weights"], task="detect")
images = spec["images"]
for index in range(spec["warmup"]):
    model.predict(images[index % len(images)], imgsz=spec["imgsz"], device="cpu", verbose=False)
latencies, detections, count = [], 0, 0
busy, cpu = machine_busy(), time.process_time()
started = time.perf_counter()
deadline = started + spec["duration"]
while time.perf_counter() < deadline:
    t = time.perf_counter()
    result = model.predict(images[count % len(images)], imgsz=spec["imgsz"], device="cpu", verbose=False)
    latencies.append(time.perf_counter() - t)
    detections += len(result[0].boxes)
    count += 1
wall = time.perf_counter() - started
report = {
    "images": count, "wall_s": wall, "latencies_s": latencies, "detections": detections,
    "torch_threads": torch.get_num_threads(), "process_cpu_s": time.process_time() - cpu,
    "machine_busy_s": machine_busy() - busy, "input_shape": list(result[0].orig_shape),
    "speed_ms": result[0].speed,
}
print(__MARKER__ + json.dumps(report), flush=True)
""".replace("__MARKER__", repr(_BASELINE_MARKER))


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class TestImage:
    name: str
    source: str  # ultralytics asset | generated
    width: int
    height: int
    size_bytes: int
    path: str
    data: bytes = field(repr=False, default=b"")


def _generated_jpeg(rng: np.random.Generator) -> bytes:
    """A 640x480 JPEG: a few filled shapes on a noisy colour gradient (photo-like size, ~50-80 KB)."""
    width, height = GENERATED_SIZE
    left, right = rng.uniform(30, 220, 3).astype(np.float32), rng.uniform(30, 220, 3).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * float(rng.uniform(5.0, 11.0))
    image = np.clip(left * (1 - ramp) + right * ramp + noise, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 120))
        side = int(rng.integers(40, 120))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x0, y0), (x0 + side, y0 + side), colour, thickness=-1)
        else:
            cv2.circle(image, (x0 + side // 2, y0 + side // 2), side // 2, colour, thickness=-1)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise BenchError("OpenCV could not encode a generated image")
    return encoded.tobytes()


def test_images(directory: Path) -> list[TestImage]:
    """Ultralytics' two real photos and the generated JPEGs, written to `directory` for the baselines."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("ultralytics is not installed: its sample photos are part of the test images")
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    directory.mkdir(parents=True, exist_ok=True)
    found: list[tuple[str, str, bytes]] = []
    for name in ("bus.jpg", "zidane.jpg"):
        found.append((name, "ultralytics asset", (assets / name).read_bytes()))
    rng = np.random.default_rng(20240115)
    found += [(f"generated{index}.jpg", "generated", _generated_jpeg(rng)) for index in range(GENERATED_IMAGES)]
    images = []
    for name, source, data in found:
        path = directory / name
        path.write_bytes(data)
        height, width = decode_image(data, MAX_PIXELS).shape[:2]
        images.append(TestImage(name, source, width, height, len(data), str(path), data))
    return images


def write_video(path: Path, frames: int) -> int:
    """A 320x320 mp4v clip at 30 fps: a red square moving right along the top, a blue circle moving left
    along the bottom, on a plain background. Returns the file size."""
    side = VIDEO_SIZE // 3
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (VIDEO_SIZE, VIDEO_SIZE))
    if not writer.isOpened():
        raise BenchError(f"cv2.VideoWriter cannot write {path} with mp4v")
    try:
        for index in range(frames):
            t = index / max(frames - 1, 1)
            frame = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), (220, 235, 235), np.uint8)
            x = round(4 + t * (VIDEO_SIZE - side - 8))
            cv2.rectangle(frame, (x, 20), (x + side, 20 + side), (30, 30, 200), thickness=-1)
            cx = VIDEO_SIZE - side // 2 - 4 - round(t * (VIDEO_SIZE - side - 8))
            cv2.circle(frame, (cx, VIDEO_SIZE - side // 2 - 20), side // 2, (200, 30, 30), thickness=-1)
            writer.write(frame)
    finally:
        writer.release()
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------- models


@dataclass
class ModelSetup:
    dataset_id: str = ""
    job_id: str = ""
    weights_source: str = ""
    train_s: float = 0.0
    model_id: str = ""  # imgsz 640
    export_s: float = 0.0
    onnx_path: str = ""
    weights_path: str = ""
    classes: list[str] = field(default_factory=list)
    video_model_id: str = ""  # the same best.pt, imgsz 320
    video_export_s: float = 0.0
    triton_input: str = ""
    triton_output: str = ""
    first_request_s: float = 0.0  # the warm-up request that loads the 640 model into Triton


def _served(http: httpx.Client, model_id: str) -> tuple[dict[str, Any], float]:
    model, waited = wait_for_export(http, model_id, _EXPORT_TIMEOUT_S)
    if model.get("export_status") != "ready":
        raise BenchError(
            f"the ONNX export of {model_id} ended {model.get('export_status')}: {model.get('export_error')}"
        )
    return model, waited


def train_model(http: httpx.Client) -> ModelSetup:
    """1 epoch of yolov8n at imgsz 640 through the platform, then its ONNX export."""
    setup = ModelSetup()
    archive = datagen.dataset_zip(count=TRAIN_IMAGES, size=GENERATED_SIZE, seed=7)
    response = http.post("/datasets/upload", files={"file": ("shapes.zip", archive, "application/zip")})
    setup.dataset_id = json_or_raise(response, "upload")["dataset_id"]
    json_or_raise(http.post(f"/datasets/{setup.dataset_id}/prepare", json={}), "prepare")
    body = {"dataset_id": setup.dataset_id, "epochs": 1, "imgsz": IMGSZ, "batch": 8}
    started = time.perf_counter()
    setup.job_id = json_or_raise(http.post("/train/jobs", json=body), "POST /train/jobs")["job_id"]
    deadline = time.monotonic() + _TRAIN_TIMEOUT_S
    while True:
        job = json_or_raise(http.get(f"/train/jobs/{setup.job_id}"), "GET /train/jobs")
        if job.get("status") == "completed":
            break
        if job.get("status") in ("failed", "stopped", "interrupted"):
            raise BenchError(f"training job {setup.job_id} ended {job.get('status')}: {job.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"training job {setup.job_id} did not complete within {_TRAIN_TIMEOUT_S:.0f}s")
        time.sleep(0.5)
    setup.train_s = time.perf_counter() - started
    setup.weights_source = str(job.get("weights_source", ""))
    setup.model_id = str(job["model_id"])
    model, setup.export_s = _served(http, setup.model_id)
    setup.onnx_path, setup.weights_path = str(model["onnx_path"]), str(model["weights_path"])
    setup.classes = list(model.get("classes", []))
    if int(model.get("imgsz", 0)) != IMGSZ:
        raise BenchError(f"model {setup.model_id} has imgsz {model.get('imgsz')}, not {IMGSZ}")
    return setup


def upload_video_model(http: httpx.Client, setup: ModelSetup) -> None:
    """The same best.pt as a new model exported at 320 (model.json {"imgsz": 320})."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(setup.weights_path, "weights/best.pt")
        archive.writestr("model.json", json.dumps({"imgsz": VIDEO_IMGSZ, "name": "inference-bench-320"}))
    response = http.post("/models/upload", files={"file": ("bench320.zip", buffer.getvalue(), "application/zip")})
    setup.video_model_id = str(json_or_raise(response, "POST /models/upload")["model_id"])
    model, setup.video_export_s = _served(http, setup.video_model_id)
    if int(model.get("imgsz", 0)) != VIDEO_IMGSZ:
        raise BenchError(f"model {setup.video_model_id} has imgsz {model.get('imgsz')}, not {VIDEO_IMGSZ}")


def warm_model(http: httpx.Client, model_id: str, image: TestImage) -> float:
    """One request: the first one loads the model into Triton (if the export did not already)."""
    started = time.perf_counter()
    files = {"file": (image.name, image.data, "image/jpeg")}
    json_or_raise(http.post(f"/infer/{model_id}", files=files), f"POST /infer/{model_id}")
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------- CPU accounting


CPU_GROUPS = ("envoy", "inference", "triton", "triton stubs", "gateway", "other mesh", "bench", "rest of machine")


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


class CpuMeter:
    """CPU seconds per group of processes over an interval (processes looked up when it starts)."""

    def __init__(self, instance: PlatformInstance) -> None:
        state = json.loads((instance.data_root / "run" / "processes.json").read_text())
        components = {name: int(c["pid"]) for name, c in state["components"].items() if c.get("pid")}
        self._groups: dict[str, list[psutil.Process]] = {name: [] for name in CPU_GROUPS}

        def add(group: str, pid: int) -> None:
            with contextlib.suppress(psutil.Error):
                self._groups[group].append(psutil.Process(pid))

        for name, pid in components.items():
            group = name if name in ("envoy", "inference", "triton", "gateway") else "other mesh"
            add(group, pid)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    add("triton stubs" if name == "triton" else "other mesh", child.pid)
        add("other mesh", int(state["launcher"]))
        add("bench", os.getpid())
        self._start: dict[str, float] = {}
        self._busy = 0.0
        self._wall = 0.0

    def _read(self) -> dict[str, float]:
        totals = {}
        for group, processes in self._groups.items():
            total = 0.0
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
            totals[group] = total
        return totals

    def start(self) -> None:
        self._start, self._busy, self._wall = self._read(), _machine_busy_s(), time.perf_counter()

    def stop(self) -> tuple[dict[str, float], float]:
        """CPU seconds per group (rest of machine included) and the wall time since start()."""
        end, busy, wall = self._read(), _machine_busy_s(), time.perf_counter() - self._wall
        used = {group: end[group] - self._start.get(group, 0.0) for group in end}
        used["rest of machine"] = (busy - self._busy) - sum(used.values())
        return used, wall


@dataclass
class CpuUse:
    wall_s: float
    cpu_s: dict[str, float]
    percent: dict[str, float]  # of one core
    ms_per_image: dict[str, float]
    total_percent: float  # whole machine busy, of one core (cpus x 100 is everything)
    own_ms_per_image: float  # every group but the rest of the machine: the mesh and the client
    ceiling_per_s: float  # cpus x 1000 / own_ms_per_image: images/s if the mesh and client had every core


def cpu_use(used: dict[str, float], wall: float, images: int) -> CpuUse:
    own_ms = sum(value for group, value in used.items() if group != "rest of machine") / max(images, 1) * 1000
    return CpuUse(
        wall_s=wall,
        cpu_s={group: round(value, 3) for group, value in used.items()},
        percent={group: round(value / wall * 100, 1) for group, value in used.items()},
        ms_per_image={group: round(value / max(images, 1) * 1000, 1) for group, value in used.items()},
        total_percent=round(sum(used.values()) / wall * 100, 1),
        own_ms_per_image=round(own_ms, 1),
        ceiling_per_s=round((os.cpu_count() or 1) * 1000 / own_ms, 2) if own_ms > 0 else 0.0,
    )


# ------------------------------------------------------------------------------------- Triton statistics


@dataclass
class TritonDelta:
    inference_count: int
    execution_count: int
    batch_histogram: dict[str, int]  # batch size -> executions
    infer_ms_by_batch: dict[str, float]  # batch size -> mean compute_infer ms of one execution
    queue_ms_per_image: float | None
    compute_infer_ms_per_execution: float | None
    compute_input_ms_per_image: float | None
    compute_output_ms_per_image: float | None
    request_ms_per_image: float | None  # Triton's `success` time: a request's whole stay in Triton

    @property
    def batched(self) -> bool:
        return any(int(size) > 1 and count > 0 for size, count in self.batch_histogram.items())


class TritonStats:
    def __init__(self, target: str) -> None:
        self._client = triton_grpc.InferenceServerClient(target)

    def snapshot(self, model_id: str) -> dict[str, Any]:
        stats = self._client.get_inference_statistics(model_id, as_json=True)
        return stats["model_stats"][0]

    def close(self) -> None:
        self._client.close()


def _ns(section: dict[str, Any], key: str) -> tuple[int, int]:
    entry = section.get(key) or {}
    return int(entry.get("count", 0) or 0), int(entry.get("ns", 0) or 0)


def triton_delta(before: dict[str, Any], after: dict[str, Any]) -> TritonDelta:
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))

    def per_batch(stats: dict[str, Any]) -> dict[int, tuple[int, int]]:
        return {int(entry["batch_size"]): _ns(entry, "compute_infer") for entry in stats.get("batch_stats", [])}

    old, new = per_batch(before), per_batch(after)
    histogram: dict[str, int] = {}
    infer_ms: dict[str, float] = {}
    for size in sorted(new):
        count = new[size][0] - old.get(size, (0, 0))[0]
        if count > 0:
            histogram[str(size)] = count
            infer_ms[str(size)] = round((new[size][1] - old.get(size, (0, 0))[1]) / count / 1e6, 1)

    def mean_ms(key: str, per: int) -> float | None:
        a, b = _ns(before.get("inference_stats", {}), key), _ns(after.get("inference_stats", {}), key)
        return round((b[1] - a[1]) / per / 1e6, 2) if per > 0 else None

    exec_infer_ns = sum(
        new[size][1] - old.get(size, (0, 0))[1] for size in new if new[size][0] > old.get(size, (0, 0))[0]
    )
    return TritonDelta(
        inference_count=inferences,
        execution_count=executions,
        batch_histogram=histogram,
        infer_ms_by_batch=infer_ms,
        queue_ms_per_image=mean_ms("queue", inferences),
        compute_infer_ms_per_execution=round(exec_infer_ns / executions / 1e6, 1) if executions > 0 else None,
        compute_input_ms_per_image=mean_ms("compute_input", inferences),
        compute_output_ms_per_image=mean_ms("compute_output", inferences),
        request_ms_per_image=mean_ms("success", inferences),
    )


# ------------------------------------------------------------------------------------------- load runs


Call = Callable[[TestImage], int]  # one request; returns the number of detections, raises on failure
ClientFactory = Callable[[], tuple[Call, Callable[[], None]]]


def rest_client(base_url: str, model_id: str) -> ClientFactory:
    def make() -> tuple[Call, Callable[[], None]]:
        client = httpx.Client(base_url=base_url, timeout=_HTTP_TIMEOUT_S, trust_env=False)

        def call(image: TestImage) -> int:
            response = client.post(f"/infer/{model_id}", files={"file": (image.name, image.data, "image/jpeg")})
            if response.status_code != 200:
                raise BenchError(f"HTTP {response.status_code}: {response.text[:300]}")
            return len(response.json()["detections"])

        return call, client.close

    return make


def grpc_client(target: str, model_id: str) -> ClientFactory:
    def make() -> tuple[Call, Callable[[], None]]:
        channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        def call(image: TestImage) -> int:
            body = httpbody_pb2.HttpBody(content_type="image/jpeg", data=image.data)
            request = pb.InferRequest(model_id=model_id, filename=image.name, body=body)
            return len(stub.Infer(iter([request]), timeout=_RPC_TIMEOUT_S).detections)

        return call, channel.close

    return make


def triton_client(target: str, setup: ModelSetup) -> ClientFactory:
    def make() -> tuple[Call, Callable[[], None]]:
        client = triton_grpc.InferenceServerClient(target)
        output = triton_grpc.InferRequestedOutput(setup.triton_output)

        def call(image: TestImage) -> int:
            tensor, box = letterbox(decode_image(image.data, MAX_PIXELS), IMGSZ)
            batch = tensor[np.newaxis]
            infer_input = triton_grpc.InferInput(setup.triton_input, list(batch.shape), "FP32")
            infer_input.set_data_from_numpy(batch)
            result = client.infer(setup.model_id, [infer_input], outputs=[output], client_timeout=_RPC_TIMEOUT_S)
            raw = result.as_numpy(setup.triton_output)
            return len(postprocess(raw[0], box, setup.classes, CONF, IOU))

        return call, client.close

    return make


@dataclass
class LoadRun:
    path: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    images_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    detections: int
    warmup_s: float
    load_before: float | None
    load_after: float | None
    triton: TritonDelta | None
    cpu: CpuUse | None
    outside_triton_ms: float | None = None  # mean client latency - mean time inside Triton
    first_error: str = ""


class _Worker(threading.Thread):
    """One client: a warm-up request (which also opens its connection), then requests until the deadline."""

    def __init__(self, index: int, factory: ClientFactory, images: list[TestImage], start: _Start) -> None:
        super().__init__(name=f"bench-worker-{index}", daemon=True)
        self._index = index
        self._factory = factory
        self._images = images
        self._start = start
        self.latencies: list[float] = []
        self.last_end = 0.0
        self.errors = 0
        self.detections = 0
        self.first_error = ""

    def _failed(self, error: Exception, when: str = "") -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{when}{type(error).__name__}: {error}"

    def run(self) -> None:
        call: Call | None = None
        close: Callable[[], None] | None = None
        try:
            call, close = self._factory()
            call(self._images[self._index % len(self._images)])
        except Exception as error:  # noqa: BLE001 - reported in the run's result
            self._failed(error, "warm-up: ")
        self._start.ready.wait()
        self._start.go.wait()
        k = self._index
        try:
            while call is not None and self.errors < MAX_ERRORS_PER_WORKER:
                began = time.perf_counter()
                if began >= self._start.deadline:
                    break
                try:
                    self.detections += call(self._images[k % len(self._images)])
                except Exception as error:  # noqa: BLE001 - reported in the run's result
                    self._failed(error)
                else:
                    self.last_end = time.perf_counter()
                    self.latencies.append(self.last_end - began)
                k += 1
        finally:
            if close is not None:
                close()


@dataclass
class _Start:
    ready: threading.Barrier
    go: threading.Event = field(default_factory=threading.Event)
    at: float = 0.0
    deadline: float = 0.0


def run_load(
    path: str,
    factory: ClientFactory,
    concurrency: int,
    *,
    duration: float,
    images: list[TestImage],
    instance: PlatformInstance,
    stats: TritonStats,
    model_id: str,
) -> LoadRun:
    """`concurrency` workers, each warmed by one request, then all start together for `duration` seconds."""
    start = _Start(threading.Barrier(concurrency + 1))
    workers = [_Worker(index, factory, images, start) for index in range(concurrency)]
    warm_started = time.perf_counter()
    for worker in workers:
        worker.start()
    start.ready.wait()
    warmup_s = time.perf_counter() - warm_started
    load_before = load_average()
    meter = CpuMeter(instance)
    before = stats.snapshot(model_id)
    meter.start()
    start.at = time.perf_counter()
    start.deadline = start.at + duration
    start.go.set()
    for worker in workers:
        worker.join()
    used, _ = meter.stop()
    after = stats.snapshot(model_id)
    latencies = sorted(value * 1000 for worker in workers for value in worker.latencies)
    wall = max(max((worker.last_end for worker in workers), default=start.at) - start.at, 1e-9)
    requests = len(latencies)
    delta = triton_delta(before, after)
    outside = None
    if latencies and delta.request_ms_per_image is not None:
        outside = round(statistics.fmean(latencies) - delta.request_ms_per_image, 1)
    return LoadRun(
        path=path,
        concurrency=concurrency,
        requests=requests,
        errors=sum(worker.errors for worker in workers),
        wall_s=round(wall, 3),
        images_per_s=round(requests / wall, 2),
        p50_ms=round(percentile(latencies, 50), 1) if latencies else None,
        p99_ms=round(percentile(latencies, 99), 1) if latencies else None,
        mean_ms=round(statistics.fmean(latencies), 1) if latencies else None,
        max_ms=round(latencies[-1], 1) if latencies else None,
        detections=sum(worker.detections for worker in workers),
        warmup_s=round(warmup_s, 2),
        load_before=load_before,
        load_after=load_average(),
        triton=delta,
        cpu=cpu_use(used, wall, requests),
        outside_triton_ms=outside,
        first_error=next((worker.first_error for worker in workers if worker.first_error), ""),
    )


# ------------------------------------------------------------------------------------------ step costs


@dataclass
class StepCost:
    image: str  # an image name, or "mean"
    decode_ms: float  # decode_image: Pillow header check and decode
    letterbox_ms: float  # letterbox to 640x640 float32 CHW
    request_ms: float  # the tensor into tritonclient's ModelInferRequest, serialised
    postprocess_ms: float  # postprocess of the model's real output for this image
    system_ms: float  # of the four steps' CPU time, kernel time (mostly page faults of fresh buffers)
    page_faults: float  # minor page faults of the four steps
    tensor_mb: float  # the float32 input tensor on the wire

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.letterbox_ms + self.request_ms + self.postprocess_ms


STEP_REPEATS = 5
_STEPS = ("decode", "letterbox", "request", "postprocess")


def _usage() -> tuple[float, float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def measure_steps(images: list[TestImage], setup: ModelSetup, triton_target: str) -> list[StepCost]:
    """What the inference service does per image besides waiting for Triton, one call at a time in this
    process (CPU = user + system time of the process: OpenCV may use several threads). Every step works on the
    previous step's fresh output, as in the service, so the cost of touching new memory is included. The
    request step is what TritonLink.infer does before gRPC sends: tritonclient's InferInput.set_data_from_numpy
    and its ModelInferRequest (the tensor bytes copied in), serialised."""
    from tritonclient.grpc import _utils as triton_utils

    client = triton_grpc.InferenceServerClient(triton_target)
    output = triton_grpc.InferRequestedOutput(setup.triton_output)
    # image -> step -> [(cpu s, system s, page faults)]
    samples: dict[str, dict[str, list[tuple[float, float, int]]]] = {
        image.name: {step: [] for step in _STEPS} for image in images
    }
    tensor_mb = 0.0

    def timed(image: str, step: str, call: Callable[[], Any]) -> Any:
        user, system, faults = _usage()
        result = call()
        user2, system2, faults2 = _usage()
        samples[image][step].append((user2 - user + system2 - system, system2 - system, faults2 - faults))
        return result

    try:
        for _ in range(STEP_REPEATS):
            for image in images:
                bgr = timed(image.name, "decode", lambda image=image: decode_image(image.data, MAX_PIXELS))
                tensor, box = timed(image.name, "letterbox", lambda bgr=bgr: letterbox(bgr, IMGSZ))
                batch = tensor[np.newaxis]
                tensor_mb = batch.nbytes / 1024**2
                infer_input = triton_grpc.InferInput(setup.triton_input, list(batch.shape), "FP32")

                def to_request(infer_input: Any = infer_input, batch: np.ndarray = batch) -> bytes:
                    infer_input.set_data_from_numpy(batch)
                    request = triton_utils._get_inference_request(
                        setup.model_id, [infer_input], "", "", [output], 0, False, False, 0, None, None
                    )
                    return request.SerializeToString()

                timed(image.name, "request", to_request)
                raw = client.infer(setup.model_id, [infer_input], outputs=[output]).as_numpy(setup.triton_output)
                timed(
                    image.name,
                    "postprocess",
                    lambda raw=raw, box=box: postprocess(raw[0], box, setup.classes, CONF, IOU),
                )
    finally:
        client.close()

    def cost(name: str, per_step: dict[str, list[tuple[float, float, int]]], average: Callable[..., float]) -> StepCost:
        cpu = {step: average(value[0] for value in values) * 1000 for step, values in per_step.items()}
        system = sum(average(value[1] for value in values) for values in per_step.values()) * 1000
        faults = sum(statistics.fmean(value[2] for value in values) for values in per_step.values())
        return StepCost(
            image=name,
            decode_ms=round(cpu["decode"], 2),
            letterbox_ms=round(cpu["letterbox"], 2),
            request_ms=round(cpu["request"], 2),
            postprocess_ms=round(cpu["postprocess"], 2),
            system_ms=round(system, 2),
            page_faults=round(faults),
            tensor_mb=round(tensor_mb, 2),
        )

    costs = [cost(name, per_step, statistics.median) for name, per_step in samples.items()]
    every = {step: [value for per_step in samples.values() for value in per_step[step]] for step in _STEPS}
    costs.append(cost("mean", every, statistics.fmean))
    return costs


# ------------------------------------------------------------------------------------------- baselines


@dataclass
class BaselineRun:
    name: str
    weights: str
    images: int = 0
    wall_s: float = 0.0
    images_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    detections: int = 0
    torch_threads: int | None = None
    process_cpu_percent: float | None = None  # of one core, the timed loop
    cpu_ms_per_image: float | None = None  # the baseline process's CPU time per image
    rest_of_machine_percent: float | None = None  # machine busy minus the baseline process
    mesh_cpu_s: float | None = None  # the idle platform's CPU seconds during the whole child run
    speed_ms: dict[str, float] = field(default_factory=dict)  # Ultralytics' last preprocess/inference/postprocess
    process_s: float = 0.0  # the child process from start to exit (imports, model load, warm-up included)
    load_before: float | None = None
    load_after: float | None = None
    error: str = ""


def run_baseline(
    name: str, weights: Path, images: list[TestImage], *, duration: float, work_dir: Path, instance: PlatformInstance
) -> BaselineRun:
    run = BaselineRun(name=name, weights=weights.name)
    spec = {
        "weights": str(weights),
        "images": [image.path for image in images],
        "imgsz": IMGSZ,
        "duration": duration,
        "warmup": BASELINE_WARMUP_CALLS,
    }
    env = {**os.environ, **ultralytics_environment(work_dir / "ultralytics-config"), "YOLO_AUTOINSTALL": "false"}
    env.pop("OMP_NUM_THREADS", None)  # Ultralytics' own default threads
    run.load_before = load_average()
    meter = CpuMeter(instance)
    meter.start()
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, json.dumps(spec)],
        cwd=weights.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=duration + 600,
        check=False,
    )
    run.process_s = round(time.perf_counter() - started, 1)
    used, _ = meter.stop()
    run.mesh_cpu_s = round(sum(v for k, v in used.items() if k not in ("bench", "rest of machine")), 2)
    run.load_after = load_average()
    line = next((x for x in reversed(process.stdout.splitlines()) if x.startswith(_BASELINE_MARKER)), None)
    if process.returncode != 0 or line is None:
        run.error = f"exit code {process.returncode}: {(process.stderr or process.stdout).strip()[-1500:]}"
        return run
    result = json.loads(line.removeprefix(_BASELINE_MARKER))
    latencies = sorted(value * 1000 for value in result["latencies_s"])
    run.images, run.wall_s = int(result["images"]), round(float(result["wall_s"]), 3)
    run.images_per_s = round(run.images / run.wall_s, 2)
    run.p50_ms, run.p99_ms = round(percentile(latencies, 50), 1), round(percentile(latencies, 99), 1)
    run.mean_ms = round(statistics.fmean(latencies), 1)
    run.detections, run.torch_threads = int(result["detections"]), int(result["torch_threads"])
    run.process_cpu_percent = round(result["process_cpu_s"] / run.wall_s * 100, 1)
    run.cpu_ms_per_image = round(result["process_cpu_s"] / max(run.images, 1) * 1000, 1)
    run.rest_of_machine_percent = round((result["machine_busy_s"] - result["process_cpu_s"]) / run.wall_s * 100, 1)
    run.speed_ms = {key: round(float(value), 1) for key, value in (result.get("speed_ms") or {}).items()}
    return run


# ----------------------------------------------------------------------------------------------- video


@dataclass
class VideoRun:
    kind: str  # stream | non-stream
    frames: int = 0
    total_s: float = 0.0  # request start -> end event / answer
    first_event_s: float | None = None  # stream: request start -> first frame event
    stream_s: float | None = None  # stream: first frame event -> end event
    fps: float = 0.0  # stream: frames / stream_s; non-stream: frames / total_s
    fps_end_to_end: float = 0.0
    response_bytes: int = 0
    detections: int = 0
    triton: TritonDelta | None = None
    cpu: CpuUse | None = None
    load_before: float | None = None
    load_after: float | None = None
    error: str = ""


@dataclass
class VideoResult:
    model_id: str
    frames: int
    size: str
    fps: int
    video_bytes: int
    runs: list[VideoRun] = field(default_factory=list)
    target_fps: float = VIDEO_FPS_TARGET
    meets_target: bool = False


def _stream_video(http: httpx.Client, model_id: str, video: Path, run: VideoRun) -> None:
    started = time.perf_counter()
    first = end = None
    timeout = httpx.Timeout(_HTTP_TIMEOUT_S, read=600.0)
    files = {"file": (video.name, video.read_bytes(), "video/mp4")}
    with http.stream("POST", f"/infer/video/{model_id}/stream", files=files, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            raise BenchError(f"HTTP {response.status_code}: {response.text[:300]}")
        event = ""
        for line in response.iter_lines():
            run.response_bytes += len(line) + 1
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                now = time.perf_counter()
                payload = json.loads(line[5:])
                if event == "end":
                    end = now
                    if int(payload.get("total_frames", -1)) != run.frames:
                        raise BenchError(f"end event says {payload.get('total_frames')} frames, got {run.frames}")
                elif event == "error":
                    raise BenchError(f"error event after {run.frames} frames: {payload}")
                else:
                    if int(payload["frame"]) != run.frames:
                        raise BenchError(f"frame event {payload['frame']} arrived as number {run.frames}")
                    first = first or now
                    run.frames += 1
                    run.detections += len(payload.get("detections", []))
            elif not line:
                event = ""
    if first is None or end is None:
        raise BenchError(f"the stream ended without frame events or without its end event ({run.frames} frames)")
    run.total_s = round(end - started, 3)
    run.first_event_s = round(first - started, 3)
    run.stream_s = round(end - first, 3)
    run.fps = round(run.frames / run.stream_s, 2)
    run.fps_end_to_end = round(run.frames / run.total_s, 2)


def _infer_video(http: httpx.Client, model_id: str, video: Path, run: VideoRun) -> None:
    started = time.perf_counter()
    files = {"file": (video.name, video.read_bytes(), "video/mp4")}
    response = http.post(f"/infer/video/{model_id}", files=files, timeout=httpx.Timeout(_HTTP_TIMEOUT_S, read=600.0))
    body = json_or_raise(response, f"POST /infer/video/{model_id}")
    run.total_s = round(time.perf_counter() - started, 3)
    run.frames = int(body["stats"]["total_frames"])
    run.detections = sum(int(n) for n in body["stats"]["detections_per_frame"])
    run.response_bytes = len(response.content)
    run.fps = run.fps_end_to_end = round(run.frames / run.total_s, 2)


def measure_video(
    http: httpx.Client, instance: PlatformInstance, stats: TritonStats, model_id: str, *, work_dir: Path, frames: int
) -> VideoResult:
    video = work_dir / "clip320.mp4"
    result = VideoResult(model_id, frames, f"{VIDEO_SIZE}x{VIDEO_SIZE}", VIDEO_FPS, write_video(video, frames))
    for kind, runner in (("stream", _stream_video), ("non-stream", _infer_video)):
        log(f"video: {kind} ({frames} frames) ...")
        run = VideoRun(kind=kind, load_before=load_average())
        meter = CpuMeter(instance)
        before = stats.snapshot(model_id)
        meter.start()
        try:
            runner(http, model_id, video, run)
        except (BenchError, httpx.HTTPError, ValueError, KeyError) as error:
            run.error = f"{type(error).__name__}: {error}"
        used, wall = meter.stop()
        run.triton = triton_delta(before, stats.snapshot(model_id))
        run.cpu = cpu_use(used, wall, run.frames)
        run.load_after = load_average()
        result.runs.append(run)
    stream = next(run for run in result.runs if run.kind == "stream")
    result.meets_target = not stream.error and stream.fps >= VIDEO_FPS_TARGET
    return result


# ------------------------------------------------------------------------------------------------ report


@dataclass
class Report:
    started_at: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)  # the TestImages without their bytes
    models: ModelSetup | None = None
    steps: list[StepCost] = field(default_factory=list)
    runs: list[LoadRun] = field(default_factory=list)
    baselines: list[BaselineRun] = field(default_factory=list)
    video: VideoResult | None = None
    ratios: dict[str, float] = field(default_factory=dict)  # rest c16 images/s / baseline images/s
    throughput_target: float = THROUGHPUT_RATIO_TARGET
    meets_throughput_target: bool | None = None
    batching_seen: bool | None = None
    errors: list[str] = field(default_factory=list)


def _num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


_CPU_SHORT = {
    "envoy": "envoy",
    "inference": "infer",
    "triton": "triton",
    "triton stubs": "stubs",
    "gateway": "gw",
    "other mesh": "mesh",
    "bench": "bench",
    "rest of machine": "other",
}


def _cpu_line(cpu: CpuUse | None, cpus: int) -> str:
    if cpu is None:
        return ""
    parts = " ".join(f"{_CPU_SHORT[group]} {cpu.percent.get(group, 0):.0f}" for group in CPU_GROUPS)
    return f"CPU % of one core: {parts} | machine {cpu.total_percent:.0f} of {cpus * 100}"


def _cpu_per_image(cpu: CpuUse | None) -> str:
    if cpu is None:
        return ""
    parts = " ".join(f"{_CPU_SHORT[group]} {cpu.ms_per_image.get(group, 0):.1f}" for group in CPU_GROUPS)
    return (
        f"CPU ms per image: {parts} | mesh + client {cpu.own_ms_per_image:.0f} ms: ceiling "
        f"{cpu.ceiling_per_s:.1f}/s on all cores"
    )


def _triton_line(delta: TritonDelta | None) -> str:
    if delta is None:
        return ""
    average = delta.inference_count / delta.execution_count if delta.execution_count else 0.0
    histogram = ", ".join(f"{size}: {count}" for size, count in delta.batch_histogram.items()) or "-"
    infer = ", ".join(f"{size}: {ms:.0f}" for size, ms in delta.infer_ms_by_batch.items()) or "-"
    return (
        f"Triton: inference_count {delta.inference_count}, execution_count {delta.execution_count} "
        f"(mean batch {average:.2f}); batch_stats {{{histogram}}}; compute_infer ms per execution by batch "
        f"{{{infer}}}; in Triton {_num(delta.request_ms_per_image, 0)} ms/image, of which queue "
        f"{_num(delta.queue_ms_per_image, 0)} ms, "
        f"input {_num(delta.compute_input_ms_per_image, 0)} ms, output {_num(delta.compute_output_ms_per_image, 0)} ms"
    )


def render_table(report: Report) -> str:  # noqa: PLR0912, PLR0915 - one linear report
    env = report.environment
    cpus = int(env.get("cpus") or 1)
    lines = [
        f"VisionMesh inference bench  ({cpus} CPUs, Python {env['python']}, onnxruntime {env['onnxruntime']}, "
        f"torch {env['torch']}, ultralytics {env['ultralytics']}, tritonclient {env['tritonclient']}; "
        f"1-min load average {env['load_avg_1m_start']} before the bench)"
    ]
    load = env["load_avg_1m_start"]
    if load is not None and load > 0.5 * cpus:
        lines.append("  note: other work was running on this machine; the figures are pessimistic and noisy")
    m = report.models
    if m is not None and m.model_id:
        lines.append(
            f"Model {m.model_id}: yolov8n ({m.weights_source}), 1 epoch at imgsz {IMGSZ} on {TRAIN_IMAGES} "
            f"generated images, classes {m.classes}; trained in {m.train_s:.0f} s, ONNX export {m.export_s:.0f} s; "
            f"first request (loads it into Triton) {m.first_request_s:.2f} s"
        )
        if m.video_model_id:
            lines.append(
                f"Model {m.video_model_id}: the same best.pt uploaded with imgsz {VIDEO_IMGSZ} (export "
                f"{m.video_export_s:.0f} s)"
            )
    if report.images:
        described = ", ".join(
            f"{i['name']} {i['width']}x{i['height']} {i['size_bytes'] // 1024} KB ({i['source']})"
            for i in report.images
        )
        lines.append(f"Images: {described}")

    if report.steps:
        lines += [
            "",
            f"Per-image steps of the service's path outside the model, measured in this process with the platform "
            f"idle (CPU ms, median of {STEP_REPEATS}; mean row: means)",
            f"  {'image':<16}{'decode':>8}{'letterbox':>10}{'request':>9}{'postproc':>9}{'sum':>7}{'of it sys':>10}"
            f"{'faults':>8}{'tensor MB':>10}",
        ]
        for step in report.steps:
            lines.append(
                f"  {step.image:<16}{step.decode_ms:>8.1f}{step.letterbox_ms:>10.1f}{step.request_ms:>9.1f}"
                f"{step.postprocess_ms:>9.1f}{step.total_ms:>7.1f}{step.system_ms:>10.1f}{step.page_faults:>8.0f}"
                f"{step.tensor_mb:>10.2f}"
            )
        lines.append(
            "  request = tritonclient's InferInput.set_data_from_numpy + ModelInferRequest with the tensor copied in, "
            "serialised (what TritonLink.infer does before gRPC sends it); sys = kernel time, faults = minor page "
            "faults (fresh multi-MB buffers)"
        )

    if report.baselines:
        lines += ["", "Baselines: Ultralytics in one process, sequential, platform idle"]
        lines.append(
            f"  {'baseline':<18}{'images':>7}{'img/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'threads':>8}{'CPU %':>7}"
            f"{'CPU ms/img':>11}{'other %':>8}{'mesh s':>7}   Ultralytics' own split of the last call (ms)"
        )
        for b in report.baselines:
            if b.error:
                lines.append(f"  {b.name:<18}FAILED: {b.error}")
                continue
            speed = ", ".join(f"{key} {value:.1f}" for key, value in b.speed_ms.items())
            lines.append(
                f"  {b.name:<18}{b.images:>7}{b.images_per_s:>8.2f}{_num(b.p50_ms, 8)}{_num(b.p99_ms, 8)}"
                f"{b.torch_threads if b.torch_threads is not None else '-':>8}{_num(b.process_cpu_percent, 7, 0)}"
                f"{_num(b.cpu_ms_per_image, 11)}{_num(b.rest_of_machine_percent, 8, 0)}{_num(b.mesh_cpu_s, 7)}"
                f"   {speed}"
            )
        lines.append(
            "  threads = torch threads (the .pt); CPU % = the baseline process, other % = the rest of the machine, "
            "both of one core; mesh s = the idle platform's CPU seconds during the child's whole life"
        )

    if report.runs:
        lines += ["", f"Detection on one image per request, {IMGSZ}x{IMGSZ}, {report.settings['duration']:g} s per run"]
        lines.append(
            f"  {'path':<12}{'conc':>5}{'requests':>9}{'errors':>7}{'img/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'mean ms':>9}{'outside':>9}{'dets':>6}{'other %':>8}{'ceiling':>8}{'load':>12}"
        )
        for run in report.runs:
            loads = f"{_num(run.load_before, 0, 2)}->{_num(run.load_after, 0, 2)}"
            lines.append(
                f"  {run.path:<12}{run.concurrency:>5}{run.requests:>9}{run.errors:>7}{run.images_per_s:>8.2f}"
                f"{_num(run.p50_ms, 9)}{_num(run.p99_ms, 9)}{_num(run.mean_ms, 9)}{_num(run.outside_triton_ms, 9)}"
                f"{run.detections:>6}{_num(run.cpu.percent['rest of machine'] if run.cpu else None, 8, 0)}"
                f"{_num(run.cpu.ceiling_per_s if run.cpu else None, 8)}{loads:>12}"
            )
            lines.append(f"      {_triton_line(run.triton)}")
            lines.append(f"      {_cpu_line(run.cpu, cpus)}")
            lines.append(f"      {_cpu_per_image(run.cpu)}")
            if run.first_error:
                lines.append(f"      first error: {run.first_error}")
        lines.append(
            "  outside = mean latency - Triton's mean time per request (its `success` statistic): the time spent in "
            "the client, Envoy and the inference service"
        )
        lines.append(
            "  CPU groups: envoy, infer = inference service, triton = tritonserver, stubs = its Python-backend model "
            "instances (ONNX Runtime), gw = gateway, mesh = launcher + dataset + training services, bench = this "
            "client process, other = the rest of the machine (other users' work); ceiling = cores x 1000 / (mesh + "
            "client CPU ms per image): the images/s the run's own CPU cost would allow with every core to itself"
        )
        if report.batching_seen is not None:
            lines.append(
                "  dynamic batching at concurrency 8/16 (some executions with batch > 1 on the rest path): "
                + ("yes" if report.batching_seen else "NO")
            )
    if report.ratios:
        rest16 = next((r for r in report.runs if r.path == "rest" and r.concurrency == 16), None)
        lines.append("")
        for name, ratio in report.ratios.items():
            lines.append(
                f"  rest c16 {rest16.images_per_s if rest16 else 0:.2f} img/s / {name} = {ratio:.2f}x"
                + (
                    f"   target >= {THROUGHPUT_RATIO_TARGET:g}x  {verdict(bool(report.meets_throughput_target))}"
                    if name == "ultralytics-pt"
                    else ""
                )
            )
        if rest16 is not None and rest16.cpu is not None:
            other = rest16.cpu.percent["rest of machine"]
            lines.append(
                f"  during rest c16 other work used {other:.0f} % of one core; its own CPU cost allows at most "
                f"{rest16.cpu.ceiling_per_s:.1f} img/s on all {cpus} cores (ceiling), "
                + ", ".join(
                    f"{rest16.cpu.ceiling_per_s / b.images_per_s:.2f}x {b.name}"
                    for b in report.baselines
                    if not b.error and b.images_per_s > 0
                )
            )

    v = report.video
    if v is not None:
        lines += [
            "",
            f"Video {v.size}, {v.frames} frames at {v.fps} fps (mp4v, {v.video_bytes // 1024} KB), model {v.model_id}",
            f"  {'kind':<12}{'frames':>7}{'total s':>9}{'first s':>9}{'fps':>8}{'fps e2e':>9}{'dets':>6}"
            f"{'answer KB':>11}",
        ]
        for run in v.runs:
            if run.error:
                lines.append(f"  {run.kind:<12}FAILED: {run.error}")
            lines.append(
                f"  {run.kind:<12}{run.frames:>7}{run.total_s:>9.2f}{_num(run.first_event_s, 9, 2)}{run.fps:>8.2f}"
                f"{run.fps_end_to_end:>9.2f}{run.detections:>6}{run.response_bytes // 1024:>11}"
            )
            lines.append(f"      {_triton_line(run.triton)}")
            lines.append(f"      {_cpu_line(run.cpu, cpus)}")
            lines.append(f"      {_cpu_per_image(run.cpu).replace('per image', 'per frame')}")
        lines.append(
            "  stream: fps = frames / (first frame event -> end event), fps e2e = frames / (request start -> end "
            "event), first s = request start -> first frame event; non-stream: fps = frames / whole request"
        )
        stream = next((run for run in v.runs if run.kind == "stream"), None)
        if stream is not None:
            lines.append(f"  stream {stream.fps:.2f} frames/s   target >= {v.target_fps:g}  {verdict(v.meets_target)}")
    for error in report.errors:
        lines += ["", f"ERROR: {error}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per timed run (default 12)")
    parser.add_argument("--levels", default="1,8,16", help="concurrency levels (default 1,8,16)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"access paths to measure (default {','.join(PATHS)})")
    parser.add_argument("--video-frames", type=int, default=300, help="frames of the generated clip (default 300)")
    parser.add_argument("--skip-video", action="store_true", help="skip the video part")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the Ultralytics baselines")
    parser.add_argument("--keep", action="store_true", help="leave the data root and work files in place")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(level) for level in args.levels.split(",") if level.strip()]
    except ValueError:
        parser.error("--levels takes comma-separated whole numbers, e.g. 1,8,16")
    args.paths = [path.strip() for path in args.paths.split(",") if path.strip()]
    if not args.levels or any(level < 1 for level in args.levels):
        parser.error("--levels must name concurrency levels >= 1")
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown --paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    if args.duration <= 0 or args.video_frames < 1:
        parser.error("--duration must be > 0 and --video-frames >= 1")
    return args


def _factory(path: str, instance: PlatformInstance, setup: ModelSetup) -> ClientFactory:
    if path == "rest":
        return rest_client(instance.base_url, setup.model_id)
    if path == "grpc-direct":
        return grpc_client(instance.service_target("inference"), setup.model_id)
    if path == "grpc-envoy":
        return grpc_client(instance.grpc_target, setup.model_id)
    return triton_client(instance.triton_target, setup)


def run_bench(report: Report, args: argparse.Namespace, instance: PlatformInstance, work_dir: Path) -> None:
    with httpx.Client(base_url=instance.base_url, timeout=_HTTP_TIMEOUT_S, trust_env=False) as http:
        images = test_images(work_dir / "images")
        report.images = [{key: value for key, value in vars(image).items() if key != "data"} for image in images]
        log("training yolov8n for 1 epoch at imgsz 640 through the platform, then its ONNX export ...")
        setup = report.models = train_model(http)
        setup.first_request_s = round(warm_model(http, setup.model_id, images[0]), 2)
        stats = TritonStats(instance.triton_target)
        try:
            meta = triton_grpc.InferenceServerClient(instance.triton_target).get_model_metadata(
                setup.model_id, as_json=True
            )
            setup.triton_input, setup.triton_output = meta["inputs"][0]["name"], meta["outputs"][0]["name"]

            log("timing the per-image steps outside the model ...")
            report.steps = measure_steps(images, setup, instance.triton_target)

            if not args.skip_baseline:
                baseline_dir = work_dir / "baseline"
                baseline_dir.mkdir(exist_ok=True)
                weights = baseline_dir / "best.pt"
                onnx_file = baseline_dir / "model.onnx"
                shutil.copyfile(setup.weights_path, weights)
                shutil.copyfile(setup.onnx_path, onnx_file)
                for name, file in (("ultralytics-pt", weights), ("ultralytics-onnx", onnx_file)):
                    log(f"baseline {name} ({args.duration:g} s, in a child process) ...")
                    report.baselines.append(
                        run_baseline(name, file, images, duration=args.duration, work_dir=work_dir, instance=instance)
                    )

            for level in args.levels:
                for path in args.paths:
                    log(f"{path} at concurrency {level} ({args.duration:g} s) ...")
                    report.runs.append(
                        run_load(
                            path,
                            _factory(path, instance, setup),
                            level,
                            duration=args.duration,
                            images=images,
                            instance=instance,
                            stats=stats,
                            model_id=setup.model_id,
                        )
                    )

            if not args.skip_video:
                log("uploading the same best.pt with imgsz 320 for the video part ...")
                upload_video_model(http, setup)
                warm_model(http, setup.video_model_id, images[0])
                report.video = measure_video(
                    http, instance, stats, setup.video_model_id, work_dir=work_dir, frames=args.video_frames
                )
        finally:
            stats.close()


def summarise(report: Report) -> None:
    rest16 = next((r for r in report.runs if r.path == "rest" and r.concurrency == 16), None)
    if rest16 is not None:
        for baseline in report.baselines:
            if not baseline.error and baseline.images_per_s > 0:
                report.ratios[baseline.name] = round(rest16.images_per_s / baseline.images_per_s, 2)
        if "ultralytics-pt" in report.ratios:
            report.meets_throughput_target = report.ratios["ultralytics-pt"] >= THROUGHPUT_RATIO_TARGET
    batched = [r for r in report.runs if r.path == "rest" and r.concurrency >= 8 and r.triton is not None]
    if batched:
        report.batching_seen = any(r.triton.batched for r in batched if r.triton is not None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="visionmesh-inference-bench-"))
    report = Report(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "system": platform.platform(),
            "onnxruntime": package_version("onnxruntime"),
            "torch": package_version("torch"),
            "ultralytics": package_version("ultralytics"),
            "tritonclient": package_version("tritonclient"),
            "nvidia-pytriton": package_version("nvidia-pytriton"),
            "load_avg_1m_start": load_average(),
        },
        settings={
            "duration": args.duration,
            "levels": args.levels,
            "paths": args.paths,
            "imgsz": IMGSZ,
            "video_imgsz": VIDEO_IMGSZ,
            "video_frames": args.video_frames,
            "skip_video": args.skip_video,
            "skip_baseline": args.skip_baseline,
            "conf": CONF,
            "iou": IOU,
        },
    )
    started = time.perf_counter()
    instance = PlatformInstance(work_dir / "data")
    exit_code = 0
    try:
        log(f"starting the platform in {work_dir} ...")
        with instance:
            run_bench(report, args, instance, work_dir)
    except (
        BenchError,
        httpx.HTTPError,
        grpc.RpcError,
        subprocess.SubprocessError,
        OSError,
        RuntimeError,
        KeyError,
        ValueError,
    ) as error:
        report.errors.append(f"{type(error).__name__}: {error}")
        exit_code = 1
    finally:
        if args.keep:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    summarise(report)
    report.environment["bench_wall_s"] = round(time.perf_counter() - started, 1)
    report.environment["load_avg_1m_end"] = load_average()

    print(render_table(report))
    print(f"\nbench wall time {report.environment['bench_wall_s']:.0f} s")
    write_json(report, args.output)
    print(f"wrote {args.output}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
