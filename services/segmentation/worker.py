"""Component classifier training worker: `python -m services.segmentation.worker <job_dir>` runs one training
job (services/segmentation/domain/classifier.py does the training). No gRPC here.

Files in the job directory:
- spec.json (read): {"epochs", "batch_size", "learning_rate", "seed", "rendered_per_class", "heldout_per_class",
  "resources": [{"path", "label"}], "threads"}. The training data is rendered_per_class rendered crops of
  every component type plus the resource images (relative paths are relative to the job directory;
  unreadable ones are skipped with a warning).
- work/last.pt, work/best.pt: the checkpoints. Running the worker again on the same job directory resumes
  from work/last.pt: that is how a job survives a killed process.
- progress.json (written atomically when an epoch starts and when it ends): TrainingProgress.as_dict().
- model.onnx: exported from work/best.pt at the end, also after a stop if an epoch was completed.
- result.json (written atomically at the end): progress.json's fields plus "stopped", "model" ("model.onnx",
  or null when no epoch was completed) and "heldout_acc": the exported ONNX model's accuracy, run with
  onnxruntime as Triton runs it, on heldout_per_class fresh rendered crops per type (seed + 1000); null
  when heldout_per_class is 0, after a stop, or when there is no model.

Exit codes: 0 completed; 3 stopped by SIGTERM or SIGINT (training stops before its next batch and saves
last.pt); 1 failed (the reason on stderr); 2 usage error.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from PIL import Image

from services.common.errors import InvalidArgument, ServiceError
from services.common.logging import configure_logging
from services.common.settings import CommonSettings
from services.common.storage.files import atomic_write_text
from services.segmentation.domain.classifier import (
    BEST_CHECKPOINT,
    INPUT_NAME,
    OUTPUT_NAME,
    TrainingProgress,
    TrainSpec,
    export_onnx,
    load_image,
    preprocess,
    rendered_samples,
    train_classifier,
)

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
SPEC_FILE = "spec.json"
PROGRESS_FILE = "progress.json"
RESULT_FILE = "result.json"
MODEL_FILE = "model.onnx"
WORK_DIR = "work"
HELDOUT_SEED_OFFSET = 1000
_HELDOUT_BATCH = 64

log = structlog.get_logger("services.segmentation.worker")


@dataclass(frozen=True)
class WorkerSpec:
    train: TrainSpec
    rendered_per_class: int
    heldout_per_class: int
    resources: list[tuple[Path, str]]  # (image file, label)
    threads: int | None

    @classmethod
    def read(cls, job_dir: Path) -> WorkerSpec:
        try:
            raw = json.loads((job_dir / SPEC_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidArgument(f"Cannot read {SPEC_FILE}: {error}") from error
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{SPEC_FILE} must hold a JSON object")
        learning_rate = raw.get("learning_rate")
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float):
            raise InvalidArgument(f"learning_rate must be a number, not {learning_rate!r}")
        train = TrainSpec(
            epochs=_integer(raw, "epochs"),
            batch_size=_integer(raw, "batch_size"),
            learning_rate=float(learning_rate),
            seed=_integer(raw, "seed", 0),
        )
        resources = raw.get("resources", [])
        if not isinstance(resources, list):
            raise InvalidArgument("resources must be a list of {path, label}")
        threads = raw.get("threads")
        return cls(
            train=train,
            rendered_per_class=_integer(raw, "rendered_per_class", 0),
            heldout_per_class=_integer(raw, "heldout_per_class", 0),
            resources=[_resource(job_dir, entry) for entry in resources],
            threads=None if threads is None else _integer(raw, "threads", minimum=1),
        )


def _integer(raw: dict[str, Any], key: str, default: int | None = None, *, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


def _resource(job_dir: Path, entry: object) -> tuple[Path, str]:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"A resource must be {{path, label}}, not {entry!r}")
    path, label = entry.get("path"), entry.get("label")
    if not isinstance(path, str) or not path or not isinstance(label, str) or not label.strip():
        raise InvalidArgument(f"A resource needs a path and a label, got {entry!r}")
    return job_dir / path, label.strip()  # an absolute path stays as it is


def load_samples(spec: WorkerSpec) -> list[tuple[Image.Image, str]]:
    samples = rendered_samples(spec.rendered_per_class, spec.train.seed)
    for path, label in spec.resources:
        try:
            samples.append((load_image(path), label))
        except InvalidArgument as error:
            log.warning("skipping an unreadable resource", path=str(path), label=label, error=error.detail)
    return samples


def heldout_accuracy(model_file: Path, labels: list[str], spec: WorkerSpec) -> float:
    """Accuracy of the exported ONNX model on fresh rendered crops; a type the model has no label for
    counts as wrong."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = spec.threads or 0  # 0: onnxruntime's default
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    samples = rendered_samples(spec.heldout_per_class, spec.train.seed + HELDOUT_SEED_OFFSET)
    correct = 0
    for start in range(0, len(samples), _HELDOUT_BATCH):
        chunk = samples[start : start + _HELDOUT_BATCH]
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: preprocess([image for image, _ in chunk])})
        correct += sum(
            labels[index] == label for index, (_, label) in zip(probabilities.argmax(axis=1), chunk, strict=True)
        )
    return correct / len(samples)


def report_progress(job_dir: Path, progress: TrainingProgress) -> None:
    atomic_write_text(job_dir / PROGRESS_FILE, json.dumps(progress.as_dict()))
    if len(progress.val_acc_list) == progress.epoch:
        log.info(
            "epoch finished",
            epoch=progress.epoch,
            acc=progress.val_acc_list[-1],
            loss=progress.val_loss_list[-1],
            best_acc=progress.acc,
            best_epoch=progress.model_epoch,
        )
    else:
        log.info("epoch started", epoch=progress.epoch)


def run_job(job_dir: Path, stop: threading.Event) -> int:
    spec = WorkerSpec.read(job_dir)
    samples = load_samples(spec)
    log.info("training", samples=len(samples), epochs=spec.train.epochs, batch_size=spec.train.batch_size)
    outcome = train_classifier(
        spec.train,
        samples,
        job_dir / WORK_DIR,
        on_epoch=lambda progress: report_progress(job_dir, progress),
        should_stop=stop.is_set,
        threads=spec.threads,
    )
    result: dict[str, Any] = {**outcome.progress.as_dict(), "stopped": outcome.stopped, "model": None}
    heldout_acc = None
    if outcome.best_checkpoint is not None:
        labels = export_onnx(job_dir / WORK_DIR / BEST_CHECKPOINT, job_dir / MODEL_FILE)
        result["model"] = MODEL_FILE
        if spec.heldout_per_class > 0 and not outcome.stopped:  # a stop should be prompt
            heldout_acc = heldout_accuracy(job_dir / MODEL_FILE, labels, spec)
    result["heldout_acc"] = heldout_acc
    atomic_write_text(job_dir / RESULT_FILE, json.dumps(result))
    log.info("training ended", stopped=outcome.stopped, acc=outcome.progress.acc, heldout_acc=heldout_acc)
    return EXIT_STOPPED if outcome.stopped else EXIT_COMPLETED


def main(argv: list[str]) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Only a flag: the signal may arrive anywhere, in a checkpoint write too; training looks at it
        # between batches.
        signal.signal(signum, lambda _signum, _frame: stop.set())
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m services.segmentation.worker <job_dir>  (an existing directory)", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("segmentation-worker", CommonSettings())
    try:
        return run_job(Path(argv[0]), stop)
    except ServiceError as error:
        print(f"error: {error.detail}", file=sys.stderr)
    except Exception:  # noqa: BLE001 - any failure ends the job with its traceback for the operator
        traceback.print_exc(file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
