"""Screenshot -> components benchmark (document 004), through Envoy on a platform this script starts.

Figures (1280x800 screenshots rendered with known layouts, never seen by the built-in classifier):
  /ingest latency per image with the built-in layout segmenter (target < 2 s), then with MobileSAM-shaped
  random weights (the real SAM code; its masks mean nothing, only its time does);
  component recall at IoU >= 0.5 of the layout segmenter over >= 20 pages (target >= 0.8) and the type accuracy of
  the matched components; OCR text recall of predictText over the same pages (target >= 0.9) and its latency;
  predictResnet latency for a batch of 32 component crops, and its accuracy.

Usage: ./mesh bench segmentation_bench [--pages 20] [--sam-pages 2] [--output FILE]
The platform trains its built-in classifier first (a few minutes); the SAM run restarts the platform on the same
data root with a random vit_t checkpoint as its ingest segmenter.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
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
    write_json,
)
from launcher.instance import PlatformInstance
from services.common.geometry import Box
from services.segmentation.domain.rendering import COMPONENT_TYPES, CONTAINER_TYPE
from synthetic.evaluation import match_boxes, recall, text_recall
from synthetic.image_server import image_server
from synthetic.pages import component, encode, page
from synthetic.sam_checkpoints import write_random_checkpoint

RESULTS_PATH = Path(__file__).parent / "results" / "segmentation_bench.json"
DEFAULT_CLASSIFIER = "Train-imgSeg-default"
PAGE_SEED = 20_000  # pages the built-in classifier never saw (it trains on single components, not pages)


@dataclass
class Report:
    started_at: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "mean_s": round(statistics.mean(ordered), 3),
        "p50_s": round(percentile(ordered, 50), 3),
        "p90_s": round(percentile(ordered, 90), 3),
        "max_s": round(ordered[-1], 3),
    }


def _envelope(response: httpx.Response, what: str) -> dict[str, Any]:
    body = json_or_raise(response, what)
    if body.get("code") != 100:
        raise BenchError(f"{what}: {body}")
    return body["payload"]


def _wait_for_classifier(http: httpx.Client, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    while True:
        query = {"train_task_id": DEFAULT_CLASSIFIER, "user_id": "bench"}  # the built-in's is readable by all
        payload = _envelope(http.post("/imgSeg/v1/queryTrain", json=query), "query")
        if payload["task_status"] == 200 and payload["model_ready"]:
            payload["waited_s"] = round(time.monotonic() - started, 1)
            return payload
        if payload["task_status"] not in (200, 300):
            raise BenchError(f"the built-in classifier failed: {payload}")
        if time.monotonic() - started > timeout:
            raise BenchError("the built-in classifier was not ready in time")
        time.sleep(3)


def _style_box(entry: dict[str, Any]) -> Box:
    style = entry["props"]["style"]
    return Box(style["left"], style["top"], style["left"] + style["width"], style["top"] + style["height"])


def bench_ingest(http: httpx.Client, pages: int) -> dict[str, Any]:
    latencies, recalls, container_recalls, type_hits = [], [], [], []
    for index in range(pages):
        rendered = page(PAGE_SEED + index)
        data = encode(rendered.image)
        started = time.perf_counter()
        payload = _envelope(http.post("/ingest", files={"image": ("page.png", data, "image/png")}), "ingest")
        latencies.append(time.perf_counter() - started)
        if payload["task_status"] != 200:
            raise BenchError(f"ingest did not finish synchronously: {payload}")
        found = [_style_box(entry) for entry in payload["components_map"].values()]
        entries = list(payload["components_map"].values())
        truth = [c for c in rendered.components if c.kind != CONTAINER_TYPE]
        containers = [c.box for c in rendered.components if c.kind == CONTAINER_TYPE]
        recalls.append(recall([c.box for c in truth], found))
        if containers:
            container_recalls.append(recall(containers, found))
        for t, f in match_boxes([c.box for c in truth], found):
            type_hits.append(truth[t].kind == entries[f]["component_type"])
        log(f"  page {index + 1}/{pages}: {latencies[-1]:.2f} s, recall {recalls[-1]:.3f}, {len(found)} components")
    return {
        "latency": _summary(latencies),
        "component_recall_iou50": round(statistics.mean(recalls), 4),
        "container_recall_iou50": round(statistics.mean(container_recalls), 4) if container_recalls else None,
        "type_accuracy_of_matched": round(statistics.mean(type_hits), 4) if type_hits else None,
    }


def bench_text(http: httpx.Client, served, pages: int) -> dict[str, Any]:
    latencies, recalls = [], []
    for index in range(pages):
        rendered = page(PAGE_SEED + index)
        url = served.put_image(f"text-{index}.png", rendered.image)
        started = time.perf_counter()
        payload = _envelope(
            http.post("/imgSeg/v1/predictText", json={"user_id": "bench", "image_url_list": [url]}), "text"
        )
        latencies.append(time.perf_counter() - started)
        read = [entry["msg"] for entry in payload["text"][url] if "msg" in entry]
        recalls.append(text_recall([c.text for c in rendered.components if c.text], read))
    return {"latency": _summary(latencies), "text_recall": round(statistics.mean(recalls), 4)}


def bench_resnet(http: httpx.Client, served, rounds: int) -> dict[str, Any]:
    latencies, hits = [], []
    for round_index in range(rounds):
        expected = {}
        for index in range(32):
            kind = COMPONENT_TYPES[index % len(COMPONENT_TYPES)]
            url = served.put_image(
                f"crop-{round_index}-{index}.png", component(kind, 70_000 + 100 * round_index + index)
            )
            expected[url] = kind
        started = time.perf_counter()
        payload = _envelope(http.post("/imgSeg/v1/predictResnet", json={"image_url_list": list(expected)}), "resnet")
        latencies.append(time.perf_counter() - started)
        hits += [payload["component_type"].get(url) == kind for url, kind in expected.items()]
    return {"batch": 32, "latency": _summary(latencies), "accuracy": round(statistics.mean(hits), 4)}


def run(report: Report, args: argparse.Namespace, work_dir: Path) -> None:
    data_root = work_dir / "data"
    (work_dir / "served").mkdir()
    env = {"VM_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32"}
    with (
        image_server(work_dir / "served") as served,
        PlatformInstance(data_root, extra_env=env) as instance,
        httpx.Client(base_url=instance.base_url, timeout=600) as http,
    ):
        log("waiting for the built-in classifier (trained at first start) ...")
        classifier = _wait_for_classifier(http, timeout=1800)
        report.results["builtin_classifier"] = {
            key: classifier.get(key) for key in ("acc", "labels", "singleAcc", "dataset_num", "waited_s")
        }
        report.results["builtin_classifier"]["heldout_acc"] = classifier.get("heldout_acc")
        _envelope(http.post("/ingest", files={"image": ("w.png", encode(page(1).image), "image/png")}), "warm-up")
        log(f"/ingest with the layout segmenter on {args.pages} pages ...")
        report.results["ingest_layout"] = bench_ingest(http, args.pages)
        log(f"predictText on {args.pages} pages ...")
        report.results["predict_text"] = bench_text(http, served, args.pages)
        log("predictResnet, batches of 32 crops ...")
        report.results["predict_resnet"] = bench_resnet(http, served, args.resnet_rounds)
    if args.sam_pages:
        checkpoint = write_random_checkpoint("vit_t", work_dir / "mobile_sam_random.pt")
        env |= {
            "VM_SEGMENTATION_SAM_CHECKPOINT": str(checkpoint),
            "VM_SEGMENTATION_INGEST_SEGMENTER": "sam",
            "VM_SEGMENTATION_INGEST_WAIT_SECONDS": "600",
        }
        with (
            PlatformInstance(data_root, extra_env=env) as instance,
            httpx.Client(base_url=instance.base_url, timeout=900) as http,
        ):
            log(f"/ingest with random-weight MobileSAM on {args.sam_pages} pages ...")
            latencies = []
            for index in range(args.sam_pages):
                data = encode(page(PAGE_SEED + index).image)
                started = time.perf_counter()
                payload = _envelope(http.post("/ingest", files={"image": ("p.png", data, "image/png")}), "sam ingest")
                latencies.append(time.perf_counter() - started)
                log(f"  page {index + 1}: {latencies[-1]:.1f} s ({payload['segmenter']})")
            report.results["ingest_sam_vit_t_random"] = {
                "latency": _summary(latencies),
                "segmenter": payload["segmenter"],
            }


def print_summary(report: Report) -> None:
    results = report.results
    print("\n== segmentation benchmark ==")
    if "builtin_classifier" in results:
        c = results["builtin_classifier"]
        print(
            f"built-in classifier: val acc {c['acc']}, held-out acc {c['heldout_acc']}, ready after {c['waited_s']} s"
        )
    if "ingest_layout" in results:
        r = results["ingest_layout"]
        lat = r["latency"]
        fast = verdict(lat["p90_s"] < 2)
        print(f"/ingest (layout) p50 {lat['p50_s']} s, p90 {lat['p90_s']} s, max {lat['max_s']} s  [< 2 s: {fast}]")
        found = r["component_recall_iou50"]
        print(f"component recall@0.5 {found}  [>= 0.8: {verdict(found >= 0.8)}]")
        containers, types = r["container_recall_iou50"], r["type_accuracy_of_matched"]
        print(f"container recall@0.5 {containers}, type accuracy of matched components {types}")
    if "predict_text" in results:
        r = results["predict_text"]
        read = r["text_recall"]
        print(f"predictText p50 {r['latency']['p50_s']} s, text recall {read}  [>= 0.9: {verdict(read >= 0.9)}]")
    if "predict_resnet" in results:
        r = results["predict_resnet"]
        print(f"predictResnet (32 crops) p50 {r['latency']['p50_s']} s, accuracy {r['accuracy']}")
    if "ingest_sam_vit_t_random" in results:
        r = results["ingest_sam_vit_t_random"]
        print(f"/ingest (MobileSAM, random weights) p50 {r['latency']['p50_s']} s, max {r['latency']['max_s']} s")
    for error in report.errors:
        print(f"ERROR: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20, help="rendered 1280x800 pages (default 20)")
    parser.add_argument("--sam-pages", type=int, default=2, help="pages for the SAM run; 0 skips it (default 2)")
    parser.add_argument("--resnet-rounds", type=int, default=5, help="predictResnet batches of 32 (default 5)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="visionmesh-segmentation-bench-"))
    report = Report(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "rapidocr": package_version("rapidocr"),
            "torch": package_version("torch"),
            "load_avg_1m_start": load_average(),
        },
        settings=vars(args) | {"output": str(args.output)},
    )
    exit_code = 0
    try:
        run(report, args, work_dir)
    except (BenchError, httpx.HTTPError, OSError, RuntimeError, KeyError, ValueError) as error:
        report.errors.append(f"{type(error).__name__}: {error}")
        exit_code = 1
    report.environment["load_avg_1m_end"] = load_average()
    write_json(report, args.output)
    print_summary(report)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
