"""Training service benchmark: what the platform adds to a YOLO training run, and how late SSE log lines arrive.

Run it with `./mesh bench training_bench` (or `.venv/bin/python bench/training_bench.py [flags]`). It starts a
whole platform (launcher -> dataset service, training service, gateway, Envoy) on free ports in a temporary
data root, and stops it at the end, errors included. `--skip-overhead` / `--skip-sse` run one part only.

What is measured:

1. Platform overhead of a training run. One generated dataset (`--images` 128x128 JPEGs of squares and
   circles from synthetic/datagen.py, 2 classes, split 80/20 by the dataset service) is uploaded and prepared
   (not timed). Then the same training runs `--runs` times each way, alternating (platform, direct, direct,
   platform, ...) so slow drifts of a shared machine do not favour one side:
     platform  wall time from `POST /train/jobs` {epochs, imgsz, batch} until `GET /train/jobs/{id}` (polled
               every 0.2 s, so up to 0.2 s late) says `completed`. This covers the job queue, the dataset
               fetch from the dataset service, the worker process (a fresh Python: imports included), the
               training with its final validation, the model registration and the polling REST calls.
     direct    wall time of a fresh `python -c` process that does what the worker does without the
               platform: `YOLO("yolov8n.yaml").train(...)` (yolov8n.pt is not on this offline machine, so the
               worker trains that architecture from scratch too) on the dataset service's own data.yaml
               (the `data_yaml` of the prepare response) with the worker's arguments (device cpu, workers 0,
               seed 0, Ultralytics' default deterministic=True, plots off), its environment
               (ultralytics_environment(), OMP_NUM_THREADS, no auto-install) and its thread set-up (torch
               threads and Ultralytics' NUM_THREADS = the worker's thread count, `--threads`, which is also
               passed to the platform as VM_TRAINING_WORKER_THREADS_PER_JOB). Ultralytics' label caches
               are deleted before each direct run: the platform's worker always starts from a fresh copy.
   Both sides' threads are read back from the run (the worker's "Training on ..." log line, a callback in the
   direct process). The loop time (the last `time` of results.csv: Ultralytics' epochs, without start-up and
   final validation) is shown next to each wall time, to tell the platform's fixed costs from a slower loop,
   and so is the CPU time that the mesh's own processes (launcher, services, gateway, Envoy; not the worker)
   and the bench process (the polling client) used during the run: on 2 cores that is what competes with the
   worker's training thread.
   Before the timed runs one untimed `import torch, ultralytics` warms the page cache, and after each platform
   run the bench waits (untimed) for the model's background ONNX export, which would otherwise compete for
   the CPU with the next run. Overhead = (median platform - median direct) / median direct. Target: < 10 %.

2. SSE log latency. A long job (`--epochs` x 100) trains through the platform; once its worker logs
   "Training on ...", a thread follows `GET /logs/stream?job_id=` (httpx streaming, one `data: <line>` event per
   log line) while the bench appends `--markers` marker lines to the job's log file exactly as the worker does
   (one os.write of a whole `[timestamp] message` line on an O_APPEND descriptor), 20-30 ms apart at random.
   Each marker's latency runs from just before its write until the SSE client has its line (one clock, one
   process). Then `POST /train/jobs/{id}/stop` (which returns once the worker has finished its epoch) and
   the stream must end by itself. Target: p95 < 200 ms. The stream's source polls the file every 50 ms
   (services/training/domain/logs.py FOLLOW_POLL_SECONDS), so about 25 ms is expected on average.

The bench shares the machine with the platform; the figures are printed as a table and written to
bench/results/training_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

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
from services.common.clock import iso, utcnow
from services.training.ultralytics_env import ultralytics_environment
from synthetic import datagen

OVERHEAD_TARGET_PCT = 10.0
SSE_P95_TARGET_MS = 200.0
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "training_bench.json"
MODEL = "yolov8n.yaml"  # what the worker trains for the default model_name yolov8n.pt without its weights
POLL_S = 0.2
MARKER_GAP_S = (0.020, 0.030)
SSE_EPOCH_FACTOR = 100  # the SSE job's epochs: --epochs x this, far more than it will run before the stop
SSE_MAX_EPOCHS = 10_000  # the training service's default limit (VM_TRAINING_MAX_EPOCHS)
_HTTP_TIMEOUT_S = 120.0
_RUN_TIMEOUT_S = 1800.0
_MARKER = re.compile(r"bench-marker seq=(\d+)")
_THREADS_IN_LOG = re.compile(r"Training on .* threads (\d+);")

# The direct run: the worker's set-up (services/training/domain/yolo_training.py) without the platform.
DIRECT_SCRIPT = """
import json, sys
spec = json.loads(sys.argv[1])
import torch
from ultralytics.utils import patches, torch_utils
patches._pil_plugins_registered = True  # as the worker: never pip-install pi-heif
torch_utils.NUM_THREADS = spec["threads"]  # select_device() resets torch's threads to this
torch.set_num_threads(spec["threads"])
from ultralytics import YOLO
model = YOLO(spec["model"])
def on_train_start(trainer):
    print(f"BENCH threads={torch.get_num_threads()} train={len(trainer.train_loader.dataset)} "
          f"val={len(trainer.test_loader.dataset)}", flush=True)
model.add_callback("on_train_start", on_train_start)
model.train(data=spec["data"], epochs=spec["epochs"], imgsz=spec["imgsz"], batch=spec["batch"], device="cpu",
            workers=0, seed=0, project=spec["project"], name="train", exist_ok=True, plots=False)
"""

_EXPORT_TIMEOUT_S = 600.0


def _last_epoch(results_csv: Path) -> tuple[float | None, float | None]:
    """From results.csv: Ultralytics' own clock at the end of the last epoch (seconds since the training loop
    started) and that epoch's train/box_loss (equal on both sides when they trained the same thing)."""
    try:
        with open(results_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return (float(rows[-1]["time"]), float(rows[-1]["train/box_loss"])) if rows else (None, None)
    except (OSError, KeyError, ValueError):
        return None, None


# -------------------------------------------------------------------------------------------------- dataset


@dataclass
class PreparedDataset:
    dataset_id: str
    version: str
    images: int
    image_size: str
    train_count: int
    val_count: int
    data_yaml: str


def upload_and_prepare(http: httpx.Client, work_dir: Path, images: int) -> PreparedDataset:
    size = (128, 128)
    archive = work_dir / "shapes.zip"
    archive.write_bytes(datagen.dataset_zip(count=images, size=size, seed=7))
    with archive.open("rb") as handle:
        response = http.post("/datasets/upload", files={"file": (archive.name, handle, "application/zip")})
    dataset_id = json_or_raise(response, "upload")["dataset_id"]
    prepared = json_or_raise(http.post(f"/datasets/{dataset_id}/prepare", json={}), "prepare")
    data_yaml = str(prepared.get("data_yaml", ""))
    if not data_yaml or not Path(data_yaml).is_file():
        raise BenchError(f"prepare did not name a readable data.yaml: {prepared}")
    return PreparedDataset(
        dataset_id=dataset_id,
        version=str(prepared.get("version", "")),
        images=images,
        image_size=f"{size[0]}x{size[1]}",
        train_count=int(prepared.get("train_count", 0)),
        val_count=int(prepared.get("val_count", 0)),
        data_yaml=data_yaml,
    )


# -------------------------------------------------------------------------------------------------- overhead


@dataclass
class TrainingRun:
    kind: str  # platform | direct
    index: int
    wall_s: float
    loop_s: float | None  # results.csv: the epochs alone
    threads: int | None  # torch threads the run trained with, as it reported them
    final_box_loss: float | None  # the last epoch's train/box_loss
    job_id: str = ""
    queued_s: float | None = None  # platform: POST until GET first said running
    after_last_epoch_s: float | None = None  # platform: last epoch seen in GET until completed
    export_wait_s: float | None = None  # platform: untimed wait for the ONNX export after the run
    mesh_cpu_s: float | None = None  # CPU time of the launcher, services, gateway and Envoy during the run
    bench_cpu_s: float | None = None  # CPU time of this process (the polling client) during the run


@dataclass
class OverheadResult:
    epochs: int
    imgsz: int
    batch: int
    threads: int
    runs: list[TrainingRun] = field(default_factory=list)
    median_platform_s: float = 0.0
    median_direct_s: float = 0.0
    overhead_pct: float = 0.0
    median_platform_loop_s: float | None = None
    median_direct_loop_s: float | None = None
    identical_losses: bool = False  # every run ended with the same train/box_loss: the same training
    target_pct: float = OVERHEAD_TARGET_PCT
    meets_target: bool = False


def _get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return json_or_raise(http.get(f"/train/jobs/{job_id}"), f"GET /train/jobs/{job_id}")


def platform_run(
    http: httpx.Client, instance: PlatformInstance, dataset: PreparedDataset, args: argparse.Namespace, index: int
) -> TrainingRun:
    body = {"dataset_id": dataset.dataset_id, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch}
    started = time.perf_counter()
    job_id = json_or_raise(http.post("/train/jobs", json=body), "POST /train/jobs")["job_id"]
    running_at = last_epoch_at = None
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    while True:
        job = _get_job(http, job_id)
        now = time.perf_counter()
        status = job.get("status")
        if status != "queued" and running_at is None:
            running_at = now
        if int(job.get("epochs_completed") or 0) >= args.epochs and last_epoch_at is None:
            last_epoch_at = now
        if status == "completed":
            break
        if status in ("failed", "stopped", "interrupted"):
            raise BenchError(f"platform job {job_id} ended {status}: {job.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"platform job {job_id} did not complete within {_RUN_TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)
    wall = now - started
    log_text = Path(job["log_file"]).read_text(errors="replace")
    threads = _THREADS_IN_LOG.search(log_text)
    results_csv = instance.data_root / "training" / "jobs" / job_id / "train" / "results.csv"
    loop_s, box_loss = _last_epoch(results_csv)
    run = TrainingRun(
        kind="platform",
        index=index,
        wall_s=wall,
        loop_s=loop_s,
        threads=int(threads.group(1)) if threads else None,
        final_box_loss=box_loss,
        job_id=job_id,
        queued_s=None if running_at is None else running_at - started,
        after_last_epoch_s=None if last_epoch_at is None else now - last_epoch_at,
    )
    return run


def _direct_environment(work_dir: Path, threads: int) -> dict[str, str]:
    """The worker's environment (services/training/domain/yolo_training.py _prepare_environment)."""
    env = {**os.environ, **ultralytics_environment(work_dir / "ultralytics-config")}
    env["OMP_NUM_THREADS"] = str(threads)
    env["YOLO_AUTOINSTALL"] = "false"
    env.pop("ULTRALYTICS_API_KEY", None)
    return env


def _drop_label_caches(data_yaml: Path) -> None:
    for cache in data_yaml.parent.rglob("*.cache"):
        cache.unlink(missing_ok=True)


def direct_run(dataset: PreparedDataset, args: argparse.Namespace, work_dir: Path, index: int) -> TrainingRun:
    project = work_dir / f"direct-{index}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    _drop_label_caches(Path(dataset.data_yaml))
    spec = {
        "model": MODEL,
        "data": dataset.data_yaml,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "threads": args.threads,
        "project": str(project),
    }
    output = project / "console.txt"
    with output.open("wb") as console:
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", DIRECT_SCRIPT, json.dumps(spec)],
            cwd=project,
            env=_direct_environment(work_dir, args.threads),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            timeout=_RUN_TIMEOUT_S,
            check=False,
        )
        wall = time.perf_counter() - started
    text = output.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"direct run exited with code {process.returncode}:\n{text[-3000:]}")
    threads = re.search(r"BENCH threads=(\d+)", text)
    loop_s, box_loss = _last_epoch(project / "train" / "results.csv")
    return TrainingRun(
        kind="direct",
        index=index,
        wall_s=wall,
        loop_s=loop_s,
        threads=int(threads.group(1)) if threads else None,
        final_box_loss=box_loss,
    )


def _mesh_pids(instance: PlatformInstance) -> list[int]:
    """The launcher and its components (services, gateway, Envoy); not the training workers."""
    state = json.loads((instance.data_root / "run" / "processes.json").read_text())
    pids = [state["launcher"]] + [component["pid"] for component in state["components"].values()]
    return [int(pid) for pid in pids if pid]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes themselves (children they reaped are not counted)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def warm_up(work_dir: Path, threads: int) -> None:
    """One untimed import of torch and Ultralytics, so the first timed run does not pay for a cold page cache."""
    subprocess.run(
        [sys.executable, "-c", "import torch, ultralytics"],
        cwd=work_dir,
        env=_direct_environment(work_dir, threads),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=600,
    )


def measure_overhead(
    http: httpx.Client,
    instance: PlatformInstance,
    dataset: PreparedDataset,
    args: argparse.Namespace,
    work_dir: Path,
) -> OverheadResult:
    result = OverheadResult(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, threads=args.threads)
    log("warming up (untimed import of torch and ultralytics) ...")
    warm_up(work_dir, args.threads)
    for index in range(args.runs):
        # ABBA: platform, direct, direct, platform, ...
        order = ("platform", "direct") if index % 2 == 0 else ("direct", "platform")
        for kind in order:
            log(f"run {index + 1}/{args.runs}: {kind} ({args.epochs} epochs) ...")
            pids = _mesh_pids(instance)
            mesh_cpu, bench_cpu = _cpu_seconds(pids), time.process_time()
            if kind == "platform":
                run = platform_run(http, instance, dataset, args, index)
            else:
                run = direct_run(dataset, args, work_dir, index)
            run.mesh_cpu_s = _cpu_seconds(pids) - mesh_cpu
            run.bench_cpu_s = time.process_time() - bench_cpu
            if run.job_id:
                model_id = _get_job(http, run.job_id).get("model_id")
                if model_id:
                    run.export_wait_s = wait_for_export(http, str(model_id), _EXPORT_TIMEOUT_S)[1]
            loop = "" if run.loop_s is None else f", loop {run.loop_s:.1f}s"
            log(f"  {run.wall_s:.1f}s{loop}, threads {run.threads}, mesh CPU {run.mesh_cpu_s:.1f}s")
            result.runs.append(run)

    def median(kind: str, attribute: str) -> float | None:
        values = [getattr(run, attribute) for run in result.runs if run.kind == kind]
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None

    result.median_platform_s = median("platform", "wall_s") or 0.0
    result.median_direct_s = median("direct", "wall_s") or 0.0
    result.median_platform_loop_s = median("platform", "loop_s")
    result.median_direct_loop_s = median("direct", "loop_s")
    result.overhead_pct = (result.median_platform_s - result.median_direct_s) / result.median_direct_s * 100
    result.meets_target = result.overhead_pct < OVERHEAD_TARGET_PCT
    losses = {run.final_box_loss for run in result.runs}
    result.identical_losses = len(losses) == 1 and None not in losses
    return result


# ------------------------------------------------------------------------------------------------------- SSE


@dataclass
class SseResult:
    job_id: str
    job_epochs: int
    markers_written: int
    markers_received: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    lines_received: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    epochs_during_markers: str = ""
    stop_s: float | None = None  # POST stop until it answered (the worker finishes its epoch)
    stream_end_after_stop_ms: float | None = None  # stop answered until the SSE stream ended; None: it did not
    final_status: str = ""
    target_p95_ms: float = SSE_P95_TARGET_MS
    meets_target: bool = False


class SseFollower:
    """GET /logs/stream in a thread: the receive time (perf_counter_ns) of every `data:` line."""

    def __init__(self, base_url: str, job_id: str) -> None:
        self._base_url = base_url
        self._job_id = job_id
        self.received: list[tuple[int, str]] = []
        self.first_line = threading.Event()
        self.ended_ns: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sse-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        clock = time.perf_counter_ns
        timeout = httpx.Timeout(30.0, read=None)
        try:
            with (
                httpx.Client(base_url=self._base_url, timeout=timeout, trust_env=False) as http,
                http.stream("GET", "/logs/stream", params={"job_id": self._job_id}) as response,
            ):
                if response.status_code != 200:
                    raise BenchError(f"GET /logs/stream answered HTTP {response.status_code}")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.received.append((clock(), line[6:]))
                        self.first_line.set()
            self.ended_ns = clock()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            self.error = error
        finally:
            self.first_line.set()


class LogWriter:
    """Appends lines to a job log as the worker's JobLog does: one os.write per whole line, O_APPEND."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, message: str) -> None:
        os.write(self._fd, f"[{iso(utcnow())}] {message}\n".encode())

    def close(self) -> None:
        os.close(self._fd)


def _wait_for_log(log_file: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if pattern in log_file.read_text(errors="replace"):
                return
        time.sleep(0.2)
    raise BenchError(f"{log_file} did not show {pattern!r} within {timeout:.0f}s")


def _write_markers(log_file: Path, markers: int) -> list[int]:
    """Append the markers 20-30 ms apart; each one's perf_counter_ns just before its write."""
    rng = random.Random(11)
    sent_ns = [0] * markers
    writer = LogWriter(log_file)
    try:
        for seq in range(markers):
            sent_ns[seq] = time.perf_counter_ns()
            writer.write(f"bench-marker seq={seq} wall_ns={time.time_ns()}")
            time.sleep(rng.uniform(*MARKER_GAP_S))
    finally:
        writer.close()
    return sent_ns


def _marker_latencies(result: SseResult, received: list[tuple[int, str]], sent_ns: list[int]) -> None:
    latencies: list[float] = []
    seen: set[int] = set()
    last = -1
    for received_ns, text in received:
        marker = _MARKER.search(text)
        if marker is None:
            continue
        seq = int(marker.group(1))
        if seq in seen:
            result.duplicates += 1
            continue
        seen.add(seq)
        result.out_of_order += seq < last
        last = max(last, seq)
        latencies.append((received_ns - sent_ns[seq]) / 1e6)
    result.markers_received = len(seen)
    if not latencies:
        return
    latencies.sort()
    result.p50_ms, result.p95_ms = percentile(latencies, 50), percentile(latencies, 95)
    result.p99_ms, result.max_ms = percentile(latencies, 99), latencies[-1]
    result.mean_ms = statistics.fmean(latencies)
    result.meets_target = result.p95_ms < SSE_P95_TARGET_MS and result.markers_received == result.markers_written


def measure_sse(http: httpx.Client, base_url: str, dataset: PreparedDataset, args: argparse.Namespace) -> SseResult:
    epochs = min(args.epochs * SSE_EPOCH_FACTOR, SSE_MAX_EPOCHS)
    body = {"dataset_id": dataset.dataset_id, "epochs": epochs, "imgsz": args.imgsz, "batch": args.batch}
    job_id = json_or_raise(http.post("/train/jobs", json=body), "POST /train/jobs")["job_id"]
    log_file = Path(_get_job(http, job_id)["log_file"])
    result = SseResult(job_id=job_id, job_epochs=epochs, markers_written=args.markers)
    try:
        log(f"SSE: job {job_id} ({epochs} epochs): waiting for its worker to train ...")
        _wait_for_log(log_file, "Training on ", timeout=300)
        follower = SseFollower(base_url, job_id)
        follower.start()
        if not follower.first_line.wait(30) or follower.error is not None:
            raise BenchError(f"the SSE stream sent nothing within 30 s: {follower.error!r}")
        time.sleep(0.5)  # let the replay of the existing lines finish
        epoch_before = _get_job(http, job_id).get("epochs_completed")
        log(f"SSE: writing {args.markers} markers ...")
        sent_ns = _write_markers(log_file, args.markers)
        time.sleep(0.5)  # the last markers' way through
        result.epochs_during_markers = f"{epoch_before} -> {_get_job(http, job_id).get('epochs_completed')}"

        log("SSE: stopping the job ...")
        started = time.perf_counter()
        json_or_raise(http.post(f"/train/jobs/{job_id}/stop"), "POST stop")
        stopped_ns = time.perf_counter_ns()
        result.stop_s = time.perf_counter() - started
        if follower.join(60) and follower.ended_ns is not None:
            result.stream_end_after_stop_ms = (follower.ended_ns - stopped_ns) / 1e6
    except BaseException:
        with contextlib.suppress(httpx.HTTPError):
            http.post(f"/train/jobs/{job_id}/stop")
        raise
    if follower.error is not None:
        raise BenchError(f"the SSE stream failed: {follower.error!r}")
    result.final_status = str(_get_job(http, job_id).get("status"))
    result.lines_received = len(follower.received)
    _marker_latencies(result, follower.received, sent_ns)
    return result


# ------------------------------------------------------------------------------------------------------ report


@dataclass
class Report:
    started_at: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    dataset: PreparedDataset | None = None
    overhead: OverheadResult | None = None
    sse: SseResult | None = None
    errors: list[str] = field(default_factory=list)


def _seconds(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def render_table(report: Report) -> str:
    env = report.environment
    lines = [
        f"VisionMesh training bench  ({env['cpus']} CPUs, Python {env['python']}, torch {env['torch']}, "
        f"ultralytics {env['ultralytics']}, 1-min load average {env['load_avg_1m_start']} before the bench)"
    ]
    load = env["load_avg_1m_start"]
    if load is not None and load > 0.5 * (env["cpus"] or 1):
        lines.append("  note: other work was running on this machine; the figures are pessimistic and noisy")
    ds = report.dataset
    if ds is not None:
        lines.append(
            f"Dataset {ds.dataset_id} {ds.version}: {ds.images} images {ds.image_size}, {len(datagen.CLASSES)} "
            f"classes, {ds.train_count} train / {ds.val_count} val"
        )
    o = report.overhead
    if o is not None:
        lines += [
            "",
            f"Training run: {MODEL}, {o.epochs} epochs, imgsz {o.imgsz}, batch {o.batch}, "
            f"{o.threads} torch thread(s), CPU",
            f"  {'run':<16}{'wall s':>8}{'loop s':>8}{'outside':>9}{'threads':>9}{'box_loss':>10}{'mesh CPU':>10}"
            f"{'bench CPU':>11}   platform detail",
        ]
        for run in o.runs:
            outside = None if run.loop_s is None else run.wall_s - run.loop_s
            detail = ""
            if run.kind == "platform":
                detail = (
                    f"{run.job_id}: running after {_seconds(run.queued_s, 0)}s, completed "
                    f"{_seconds(run.after_last_epoch_s, 0)}s after the last epoch"
                )
            box_loss = "-" if run.final_box_loss is None else f"{run.final_box_loss:.5f}"
            lines.append(
                f"  {f'{run.kind} {run.index + 1}':<16}{_seconds(run.wall_s)}{_seconds(run.loop_s)}"
                f"{_seconds(outside, 9)}{run.threads if run.threads is not None else '-':>9}{box_loss:>10}"
                f"{_seconds(run.mesh_cpu_s, 10)}{_seconds(run.bench_cpu_s, 11)}   {detail}".rstrip()
            )
        for kind, wall, loop in (
            ("platform", o.median_platform_s, o.median_platform_loop_s),
            ("direct", o.median_direct_s, o.median_direct_loop_s),
        ):
            outside = None if loop is None else wall - loop
            lines.append(f"  {f'median {kind}':<16}{_seconds(wall)}{_seconds(loop)}{_seconds(outside, 9)}")
        lines.append(
            "  loop = the epochs by Ultralytics' clock (results.csv); outside = the rest: process start, imports, "
            "set-up, final validation (platform: + queue, dataset fetch, registration, 0.2 s polling)"
        )
        lines.append(
            "  mesh CPU = CPU seconds of the launcher, services, gateway and Envoy during the run (the worker "
            "excluded); bench CPU = this process's"
        )
        lines.append(
            "  same training both ways (identical final box_loss in every run): "
            + ("yes" if o.identical_losses else "NO - the runs did not train the same thing")
        )
        lines.append(
            f"  Platform overhead = (median platform - median direct) / median direct = {o.overhead_pct:+.1f} %"
            f"   target < {o.target_pct:g} %  {verdict(o.meets_target)}"
        )
    s = report.sse
    if s is not None:
        lines += [
            "",
            f"SSE log latency: {s.markers_received}/{s.markers_written} markers received "
            f"({s.out_of_order} out of order, {s.duplicates} duplicates) while job {s.job_id} trained "
            f"(epochs completed {s.epochs_during_markers})",
        ]
        if s.p50_ms is not None:
            lines += [
                f"  {'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}{'mean ms':>9}",
                f"  {s.p50_ms:>8.1f}{s.p95_ms:>8.1f}{s.p99_ms:>8.1f}{s.max_ms:>8.1f}{s.mean_ms:>9.1f}"
                f"   target p95 < {s.target_p95_ms:g} ms  {verdict(s.meets_target)}",
            ]
        end = (
            "did NOT end within 60 s"
            if s.stream_end_after_stop_ms is None
            else f"ended {s.stream_end_after_stop_ms:.0f} ms after it"
        )
        lines.append(f"  stop answered after {_seconds(s.stop_s, 0)} s (job {s.final_status}); the stream {end}")
    for error in report.errors:
        lines += ["", f"ERROR: {error}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ driver


def _default_threads() -> int:
    """The training service's default for one job at a time: cores - 1, at least 1."""
    return max(1, (os.cpu_count() or 1) - 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each timed run (default 12)")
    parser.add_argument("--imgsz", type=int, default=128, help="training image size (default 128)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--images", type=int, default=200, help="generated images, split 80/20 (default 200)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each kind, alternating (default 2)")
    parser.add_argument("--markers", type=int, default=300, help="SSE marker lines (default 300)")
    parser.add_argument(
        "--threads",
        type=int,
        default=_default_threads(),
        help=f"torch threads of both kinds of run (default cores - 1 = {_default_threads()}, as the service)",
    )
    parser.add_argument("--skip-overhead", action="store_true", help="skip the training overhead part")
    parser.add_argument("--skip-sse", action="store_true", help="skip the SSE latency part")
    parser.add_argument("--keep", action="store_true", help="leave the data root and the direct runs in place")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    if args.skip_overhead and args.skip_sse:
        parser.error("--skip-overhead and --skip-sse together leave nothing to measure")
    if args.epochs < 1 or args.runs < 1 or args.markers < 1 or args.threads < 1 or args.batch < 1:
        parser.error("--epochs, --runs, --markers, --threads and --batch must be >= 1")
    if args.imgsz < 32 or args.images < 10:
        parser.error("--imgsz must be >= 32 and --images >= 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="visionmesh-training-bench-"))
    report = Report(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "system": platform.platform(),
            "torch": package_version("torch"),
            "ultralytics": package_version("ultralytics"),
            "load_avg_1m_start": load_average(),
        },
        settings={
            "epochs": args.epochs,
            "imgsz": args.imgsz,
            "batch": args.batch,
            "images": args.images,
            "runs": args.runs,
            "markers": args.markers,
            "threads": args.threads,
            "model": MODEL,
            "poll_s": POLL_S,
            "sse_job_epochs": min(args.epochs * SSE_EPOCH_FACTOR, SSE_MAX_EPOCHS),
            "parts": [
                name for name, skipped in (("overhead", args.skip_overhead), ("sse", args.skip_sse)) if not skipped
            ],
        },
    )
    started = time.perf_counter()
    instance = PlatformInstance(work_dir / "data", extra_env={"VM_TRAINING_WORKER_THREADS_PER_JOB": str(args.threads)})
    exit_code = 0
    try:
        log(f"starting the platform in {work_dir} ...")
        instance.start()
        with httpx.Client(base_url=instance.base_url, timeout=_HTTP_TIMEOUT_S, trust_env=False) as http:
            log(f"generating, uploading and preparing {args.images} images ...")
            report.dataset = upload_and_prepare(http, work_dir, args.images)
            if not args.skip_overhead:
                report.overhead = measure_overhead(http, instance, report.dataset, args, work_dir)
            if not args.skip_sse:
                report.sse = measure_sse(http, instance.base_url, report.dataset, args)
    except (BenchError, httpx.HTTPError, subprocess.SubprocessError, OSError, RuntimeError) as error:
        report.errors.append(f"{type(error).__name__}: {error}")
        exit_code = 1
    finally:
        log("stopping the platform ...")
        instance.stop()
        if args.keep:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    report.environment["bench_wall_s"] = round(time.perf_counter() - started, 1)
    report.environment["load_avg_1m_end"] = load_average()

    print(render_table(report))
    print(f"\nbench wall time {report.environment['bench_wall_s']:.0f} s")
    write_json(report, args.output)
    print(f"wrote {args.output}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
