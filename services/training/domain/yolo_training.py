"""One YOLO training job, run by the worker process (services/training/worker.py). No gRPC here.

Files in the job directory:
- job.json (read): what to train; see JobSpec.
- progress.json (written atomically after each epoch): {"epoch": completed, "epochs": total, "metrics": {...}}.
- result.json (written atomically at the end): status completed | stopped | failed and what the run produced.
- weights_source.txt: where the first run's weights came from, so a resumed run reports the same source.
- train/: the Ultralytics run directory (weights/{best,last}.pt, results.csv, args.yaml).
The job's log (job.json's log_file) gets one `[timestamp] message` line per event, appended as one write.

Graceful stop: SIGTERM (or SIGINT) lets the current epoch finish, validate and save, then raises _StopRequested
from the epoch-end callback. That skips Ultralytics' final_eval, whose strip_optimizer would otherwise drop
the optimizer and epoch from last.pt, so last.pt stays resumable. A stop before the first epoch starts ends
at once. Checkpoints are written to temporary names and renamed, so a SIGKILL at any moment leaves the last
completed epoch's last.pt intact.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from services.common.clock import iso, utcnow
from services.common.errors import without_server_paths
from services.common.storage.files import atomic_write_text
from services.training.domain.metrics import from_ultralytics
from services.training.domain.reasons import ANSI_ESCAPE, fit_for_users
from services.training.ultralytics_env import ultralytics_environment

RUN_NAME = "train"
WEIGHTS_SOURCE_FILE = "weights_source.txt"
EXIT_OK = 0  # completed or stopped
EXIT_FAILED = 1

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pt$")


class JobError(Exception):
    """A job that cannot run as specified; the message is shown to users as is."""


class _StopRequested(Exception):
    """Raised from a training callback to leave Ultralytics' loop without its end-of-training steps."""


# -- job spec ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    data_yaml: Path
    model: str
    weights_dir: Path
    epochs: int
    imgsz: int
    batch: int
    resume: bool
    log_file: Path
    device: str = "cpu"
    workers: int = 0
    threads: int = 1
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: object) -> JobSpec:
        if not isinstance(raw, dict):
            raise JobError("job.json must hold a JSON object")

        def get(key: str, kind: type, default: Any = None) -> Any:
            value = raw.get(key, default)
            # bool is an int subclass: refuse `true` as a number of epochs
            if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise JobError(f"job.json: {key!r} must be {kind.__name__}, got {value!r}")
            return value

        spec = cls(
            job_id=get("job_id", str),
            data_yaml=Path(get("data_yaml", str)),
            model=get("model", str).strip(),
            weights_dir=Path(get("weights_dir", str)),
            epochs=get("epochs", int),
            imgsz=get("imgsz", int),
            batch=get("batch", int),
            resume=get("resume", bool, False),
            log_file=Path(get("log_file", str)),
            device=str(get("device", str, "cpu")),
            workers=get("workers", int, 0),
            threads=get("threads", int, 1),
            seed=get("seed", int, 0),
        )
        for key in ("data_yaml", "weights_dir", "log_file"):
            if not getattr(spec, key).is_absolute():
                raise JobError(f"job.json: {key!r} must be an absolute path")
        if spec.epochs < 1 or spec.imgsz < 32 or spec.workers < 0 or spec.threads < 1:
            raise JobError("job.json: epochs >= 1, imgsz >= 32, workers >= 0 and threads >= 1 are required")
        if spec.batch == 0 or spec.batch < -1:
            raise JobError("job.json: batch must be positive, or -1 for automatic")
        return spec


def load_spec(job_dir: Path) -> JobSpec:
    try:
        raw = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    except OSError as error:
        raise JobError(f"cannot read job.json: {error.strerror}") from error
    except ValueError as error:
        raise JobError(f"cannot read job.json: {error}") from error
    return JobSpec.from_dict(raw)


# -- log, stop flag ----------------------------------------------------------------------------------------


class JobLog:
    """Appends `[YYYY-MM-DDTHH:MM:SS] message` lines (UTC). One os.write per line on an O_APPEND descriptor:
    the service appends to the same file, and a live reader sees every line as soon as it is written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, message: str) -> None:
        stamp = iso(utcnow())
        text = ANSI_ESCAPE.sub("", message).rstrip()
        for line in [line.rstrip() for line in text.splitlines() if line.strip()] or [""]:
            os.write(self._fd, f"[{stamp}] {line}\n".encode())

    def close(self) -> None:
        os.close(self._fd)


class StopFlag:
    """Set by SIGTERM/SIGINT; training callbacks look at it at safe points. The handler only sets the flag:
    the signal may interrupt anything, a checkpoint write included."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _log_handler(log: JobLog) -> Any:
    """A logging handler that copies what users should see of Ultralytics' own output into the job log: its
    warnings and errors (ignored resume arguments, ...) and the images it skips as corrupt, which it reports
    at INFO level."""
    import logging

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                # Ultralytics' own formatter may already have prefixed the message with "WARNING ⚠️".
                message = re.sub(r"^(WARNING|ERROR)\s*\S*\s", "", record.getMessage().strip())
                if record.levelno >= logging.WARNING:
                    log(f"Ultralytics {record.levelname.lower()}: {message}")
                else:
                    for line in message.splitlines():
                        if "ignoring corrupt" in line:
                            log(f"Ultralytics: {line.strip()}")
            except Exception:  # noqa: BLE001 - logging must never break training
                self.handleError(record)

    return Handler(level=logging.INFO)


# -- weights -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    model: str  # what YOLO() is built from: a .pt path, or an architecture yaml name
    source: str  # pretrained:<path> | scratch:<name>.yaml | checkpoint:<path>


def resolve_weights(spec: JobSpec, log: JobLog) -> Weights:
    """The job's `model` as something YOLO() loads without the network."""
    model = spec.model
    if os.path.isabs(model):
        path = Path(model)
        if path.suffix != ".pt" or not path.is_file():
            raise JobError(f"checkpoint {model} does not exist or is not a .pt file")
        _require_detection(path)
        return Weights(str(path), f"checkpoint:{path}")
    if not _MODEL_NAME.match(model):
        raise JobError(f"unknown model {model!r}: expected a pretrained name such as yolov8n.pt or an absolute path")
    pretrained = spec.weights_dir / model
    if pretrained.is_file():
        _require_detection(pretrained)
        return Weights(str(pretrained), f"pretrained:{pretrained}")
    architecture = f"{model[: -len('.pt')]}.yaml"
    _require_architecture(model, architecture)
    log(
        f"pretrained weights {model} not found in {spec.weights_dir}: "
        f"training {model[: -len('.pt')]} from scratch ({architecture}, random initial weights)"
    )
    return Weights(architecture, f"scratch:{architecture}")


def _require_architecture(model: str, architecture: str) -> None:
    """Only model yamls that ship with Ultralytics; anything else would make it search, or download."""
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    try:
        config = yaml_model_load(architecture)
    except (FileNotFoundError, OSError) as error:
        raise JobError(
            f"unknown model {model!r}: no pretrained weights of that name on this server, and not an Ultralytics "
            f"model architecture (no {architecture})"
        ) from error
    task = guess_model_task(config)
    if task != "detect":
        raise JobError(f"model {model!r} is a {task} model: training supports detection models only")


def _require_detection(path: Path) -> None:
    from ultralytics.nn.tasks import load_checkpoint

    try:
        model, _ = load_checkpoint(str(path))
    except Exception as error:  # any load failure means the same thing to the user
        raise JobError(f"cannot load {path.name}: {without_server_paths(fit_for_users(str(error)))}") from error
    task = getattr(model, "task", "detect")
    if task != "detect":
        raise JobError(f"{path.name} is a {task} model: training supports detection models only")


def _atomic_save_trainer() -> type:
    """DetectionTrainer whose checkpoints appear by rename: Ultralytics writes last.pt/best.pt in place, and a
    SIGKILL during that write would leave a truncated last.pt that cannot be resumed."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    class AtomicSaveTrainer(DetectionTrainer):  # type: ignore[misc]
        def save_model(self) -> bool:
            last, best = self.last, self.best
            staged = {last: last.with_name(f".{last.name}.tmp"), best: best.with_name(f".{best.name}.tmp")}
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)  # from a killed run: must not be renamed over a good file
            self.last, self.best = staged[last], staged[best]
            try:
                saved = super().save_model()
            finally:
                self.last, self.best = last, best
            for final, tmp in staged.items():
                if tmp.exists():
                    os.replace(tmp, final)
            return bool(saved)

    return AtomicSaveTrainer


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    completed: int  # epochs completed; 0 when stripped (a finished run)
    total: int
    resumable: bool
    metrics: dict[str, float]


def _read_checkpoint(path: Path) -> _Checkpoint:
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path))
    except Exception as error:  # a damaged checkpoint is one user-facing condition
        reason = without_server_paths(fit_for_users(str(error)))
        raise JobError(f"cannot read checkpoint {path.name}: {reason}") from error
    epoch = int(ckpt.get("epoch", -1))
    args = ckpt.get("train_args") or {}
    return _Checkpoint(
        completed=epoch + 1,
        total=int(args.get("epochs") or 0),
        resumable=epoch >= 0 and ckpt.get("optimizer") is not None,
        metrics=from_ultralytics(ckpt.get("train_metrics") or {}),
    )


def _losses(trainer: Any) -> dict[str, float]:
    tloss = trainer.tloss or {}
    return {str(name): float(value) for name, value in tloss.items()}


def _json_numbers(values: dict[str, float]) -> dict[str, float | None]:
    """NaN and infinity (a diverging loss) are not JSON: null instead."""
    return {name: value if math.isfinite(value) else None for name, value in values.items()}


def _format(values: dict[str, float] | dict[str, float | None]) -> str:
    return " ".join(f"{name}={'nan' if value is None else f'{value:.3f}'}" for name, value in values.items())


def _classes_from_yaml(path: Path) -> list[str]:
    try:
        names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    if isinstance(names, dict):
        try:
            return [str(names[key]) for key in sorted(names, key=int)]
        except (TypeError, ValueError):
            return []
    return [str(name) for name in names] if isinstance(names, list) else []


def _check_data_yaml(path: Path) -> None:
    """Refuse what would make Ultralytics reach out: a `download` entry runs a URL fetch, a shell command or
    Python code when the images are missing; a relative `path` resolves under Ultralytics' datasets dir."""
    if not path.is_file():
        raise JobError(f"data.yaml {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise JobError(f"data.yaml {path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise JobError(f"data.yaml {path} is not a mapping")
    if config.get("download"):
        raise JobError(f"data.yaml {path} has a `download` entry: datasets must be local")
    root = config.get("path")
    if root is not None and not Path(str(root)).is_absolute():
        raise JobError(f"data.yaml {path}: `path` must be absolute, got {root!r}")


class TrainingRun:
    def __init__(self, spec: JobSpec, job_dir: Path, log: JobLog, stop: StopFlag) -> None:
        self.spec = spec
        self.job_dir = job_dir
        self.run_dir = job_dir / RUN_NAME
        self.last = self.run_dir / "weights" / "last.pt"
        self.best = self.run_dir / "weights" / "best.pt"
        self.log = log
        self.stop = stop
        self.trainer: Any = None
        self.weights_source = ""
        self.completed = 0
        self.total = spec.epochs
        self.final_metrics: dict[str, float] | None = None
        self._loop_done = False

    # The whole job: returns the exit code; result.json is written whatever happens.
    def execute(self) -> int:
        spec = self.spec
        self.log(
            f"Training job {spec.job_id} started: model {spec.model}, dataset {spec.data_yaml}, epochs {spec.epochs}, "
            f"imgsz {spec.imgsz}, batch {'auto' if spec.batch == -1 else spec.batch}, device {spec.device}, "
            f"workers {spec.workers}, threads {spec.threads}, seed {spec.seed}" + (", resume" if spec.resume else "")
        )
        status, error = "completed", None
        try:
            self._train()
        except _StopRequested:
            status = "stopped"
        except Exception as exc:  # noqa: BLE001 - every failure becomes a failed result with its reason
            traceback.print_exc()  # the details for whoever reads the worker's stderr
            status, error = (
                "failed",
                fit_for_users(str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"),
            )
        result = self._result(status, error)
        error = result["error"]
        if status == "completed":
            self.log(
                f"Training completed: {self.completed} epoch(s); {_format(result['metrics'])}; best {result['best']}"
            )
        elif status == "stopped":
            self.log(
                f"Training stopped after {self.completed} completed epoch(s)"
                + (f"; {self.last} is resumable" if result["last"] else "; no checkpoint yet")
            )
        else:
            self.log(f"Training failed: {error}")
        atomic_write_text(self.job_dir / "result.json", json.dumps(result, indent=2))
        return EXIT_FAILED if status == "failed" else EXIT_OK

    def _train(self) -> None:
        spec = self.spec
        self._check_stop()
        _check_data_yaml(spec.data_yaml)
        self._prepare_ultralytics()
        self._check_stop()

        resume_from: Path | None = None
        if spec.resume:
            if not self.last.exists():
                self.log(f"No checkpoint to resume from ({self.last} missing): starting from epoch 1")
            else:
                checkpoint = _read_checkpoint(self.last)
                self.weights_source = self._saved_weights_source() or f"checkpoint:{self.last}"
                self.total = checkpoint.total or spec.epochs
                if not checkpoint.resumable or checkpoint.completed >= self.total:
                    # Killed after its last epoch (during the final validation): nothing left to train.
                    self.completed = checkpoint.completed if checkpoint.resumable else self.total
                    self._loop_done = True
                    self.final_metrics = _read_checkpoint(self.best).metrics if self.best.exists() else None
                    self.log(f"Training already finished ({self.completed} epochs): nothing to resume")
                    self._strip_finished_checkpoints()
                    return
                self.completed = checkpoint.completed
                if spec.epochs != self.total:
                    self.log(f"The checkpoint's run has {self.total} epochs (job asks {spec.epochs}): continuing to it")
                _trim_results_csv(self.run_dir / "results.csv", self.completed)
                self.log(
                    f"Resuming from epoch {self.completed + 1}/{self.total} "
                    f"({self.completed} completed) using {self.last}; weights {self.weights_source}"
                )
                resume_from = self.last

        if resume_from is None:
            weights = resolve_weights(spec, self.log)
            self.weights_source = weights.source
            atomic_write_text(self.job_dir / WEIGHTS_SOURCE_FILE, weights.source + "\n")
            self.log(f"Weights: {weights.source}")
            model_arg = weights.model
        else:
            model_arg = str(resume_from)
        self._check_stop()

        from ultralytics import YOLO

        model = YOLO(model_arg)
        for event, callback in self._callbacks().items():
            model.add_callback(event, callback)
        arguments: dict[str, Any] = {
            "data": str(spec.data_yaml),
            "epochs": spec.epochs,
            "imgsz": spec.imgsz,
            "batch": spec.batch,
            "device": spec.device,
            "workers": spec.workers,
            "seed": spec.seed,
            "project": str(self.job_dir),
            "name": RUN_NAME,
            "exist_ok": True,
            "plots": False,  # plots need fonts and take time; the service draws its own charts from results.csv
        }
        if resume_from is not None:
            # save_dir: the job directory may have moved since the checkpoint recorded it
            arguments |= {"resume": str(resume_from), "save_dir": str(self.run_dir)}
        model.train(trainer=_atomic_save_trainer(), **arguments)

    def _prepare_ultralytics(self) -> None:
        import logging

        import torch
        from ultralytics.utils import patches, torch_utils

        # Ultralytics answers the first image PIL cannot identify by installing pi-heif (check_requirements, pip).
        # HEIF is no dataset format here: such an image is simply corrupt, and is skipped as one.
        patches._pil_plugins_registered = True
        # select_device() resets torch's thread count to Ultralytics' NUM_THREADS (cores - 1) on every trainer
        # and validator set-up; the job's share of the machine is `threads`.
        torch_utils.NUM_THREADS = self.spec.threads
        torch.set_num_threads(self.spec.threads)
        logging.getLogger("ultralytics").addHandler(_log_handler(self.log))

    def _saved_weights_source(self) -> str:
        try:
            return (self.job_dir / WEIGHTS_SOURCE_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def _strip_finished_checkpoints(self) -> None:
        from ultralytics.utils.torch_utils import strip_optimizer

        for path in (self.last, self.best):
            if path.exists() and _read_checkpoint(path).resumable:
                strip_optimizer(path)

    def _check_stop(self) -> None:
        if self.stop.requested:
            self.log("Stop requested: stopping" + (f" after epoch {self.completed}" if self.completed else ""))
            raise _StopRequested

    # -- callbacks -----------------------------------------------------------------------------------------

    def _callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {
            "on_pretrain_routine_start": self._on_pretrain_routine_start,
            "on_pretrain_routine_end": self._on_pretrain_routine_end,
            "on_train_start": self._on_train_start,
            "on_train_epoch_start": self._on_train_epoch_start,
            "on_val_start": self._on_val_start,
            "on_model_save": self._on_model_save,
            "on_fit_epoch_end": self._on_fit_epoch_end,
        }

    def _on_pretrain_routine_start(self, trainer: Any) -> None:
        self.trainer = trainer
        self.total = trainer.epochs
        self._check_stop()

    def _on_pretrain_routine_end(self, trainer: Any) -> None:
        self._check_stop()

    def _on_train_start(self, trainer: Any) -> None:
        import torch

        self.log(
            f"Training on {len(trainer.train_loader.dataset)} train / {len(trainer.test_loader.dataset)} val images, "
            f"{len(trainer.data['names'])} classes, batch {trainer.batch_size}, imgsz {trainer.args.imgsz}, "
            f"device {trainer.device}, threads {torch.get_num_threads()}; run directory {self.run_dir}"
        )
        self._check_stop()

    def _on_train_epoch_start(self, trainer: Any) -> None:
        self._check_stop()  # the previous epoch is saved and this one has not started: nothing to finish

    def _on_val_start(self, validator: Any) -> None:
        if self._loop_done:
            self.log(f"Final validation of {self.best.name}")
        elif self.trainer is not None:
            self.log(f"Validating epoch {self.trainer.epoch + 1}/{self.total}")

    def _on_model_save(self, trainer: Any) -> None:
        best = " and best.pt (best so far)" if trainer.best_fitness == trainer.fitness else ""
        self.log(f"Saved last.pt{best} after epoch {trainer.epoch + 1}")

    def _on_fit_epoch_end(self, trainer: Any) -> None:
        if self._loop_done:  # Ultralytics' final_eval: the best checkpoint's validation
            self.final_metrics = from_ultralytics(trainer.metrics or {})
            self.log(f"Final validation: {_format(self.final_metrics)}")
            return
        self.completed = trainer.epoch + 1
        losses, metrics = _losses(trainer), from_ultralytics(trainer.metrics or {})
        seconds = f" ({trainer.epoch_time:.1f}s)" if trainer.epoch_time else ""
        self.log(f"Epoch {self.completed}/{trainer.epochs} {_format({**losses, **metrics})}{seconds}")
        progress = {"epoch": self.completed, "epochs": trainer.epochs, "metrics": _json_numbers({**losses, **metrics})}
        atomic_write_text(self.job_dir / "progress.json", json.dumps(progress, indent=2))
        if trainer.stop:
            # The loop ends after this epoch (last epoch, or early stopping); a stop request now changes nothing.
            self._loop_done = True
            if self.completed < trainer.epochs:
                self.log(f"Early stopping: no improvement in the last {trainer.args.patience} epochs")
            return
        self._check_stop()

    # -- result --------------------------------------------------------------------------------------------

    def _result(self, status: str, error: str | None) -> dict[str, Any]:
        """result.json; every part is best effort, so a failure anywhere still leaves a result."""
        trainer = self.trainer
        metrics = self.final_metrics if status == "completed" else None
        if metrics is None and self.best.exists():
            try:  # the best epoch's validation, recorded in best.pt
                metrics = _read_checkpoint(self.best).metrics
            except JobError:
                metrics = None
        if metrics is None:
            metrics = from_ultralytics(getattr(trainer, "metrics", None) or {})
        names = (getattr(trainer, "data", None) or {}).get("names")
        if isinstance(names, dict):
            classes = [str(name) for _, name in sorted(names.items())]
        else:
            classes = _classes_from_yaml(self.spec.data_yaml)
        imgsz = getattr(getattr(trainer, "args", None), "imgsz", None) or self.spec.imgsz
        results_csv = self.run_dir / "results.csv"
        if status == "completed" and not self.best.exists():  # the service registers best.pt: say why it is absent
            status, error = "failed", "training finished without writing best.pt"
        return {
            "status": status,
            "error": error,
            "epochs_completed": self.completed,
            "best": str(self.best) if self.best.exists() else None,
            "last": str(self.last) if self.last.exists() else None,
            "results_csv": str(results_csv) if results_csv.exists() else None,
            "metrics": _json_numbers(metrics),
            "classes": classes,
            "weights_source": self.weights_source,
            "imgsz": int(imgsz if isinstance(imgsz, int) else max(imgsz)),
        }


def _trim_results_csv(path: Path, completed: int) -> None:
    """Drop rows of epochs after the checkpoint: a worker killed between writing an epoch's row and its
    checkpoint would otherwise leave that epoch twice in results.csv once it is trained again."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and _epoch_of(row) <= completed]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(",".join(row) + "\n" for row in kept))


def _epoch_of(row: list[str]) -> float:
    try:
        return float(row[0])
    except ValueError:
        return math.inf


# -- entry point -------------------------------------------------------------------------------------------


def run_job(job_dir: Path) -> int:
    """Run the job in `job_dir`; the worker process exits with the returned code (0 completed or stopped,
    1 failed)."""
    stop = StopFlag()
    stop.install()  # first: a stop during the slow imports must be seen
    job_dir = job_dir.resolve()
    (job_dir / "result.json").unlink(missing_ok=True)  # a stale result would describe an earlier run
    try:
        spec = load_spec(job_dir)
        log = JobLog(spec.log_file)
    except (JobError, OSError) as error:
        # No log file to write to: the reason goes to result.json and stderr.
        print(f"training worker: {error}", file=sys.stderr)
        atomic_write_text(job_dir / "result.json", json.dumps(_bare_failure(str(error)), indent=2))
        return EXIT_FAILED
    try:
        _prepare_environment(job_dir, spec)
        return TrainingRun(spec, job_dir, log, stop).execute()
    except Exception as error:  # noqa: BLE001 - last resort: the service must get a result, never a silence
        traceback.print_exc()
        log(f"Training failed: {type(error).__name__}: {error}")
        atomic_write_text(job_dir / "result.json", json.dumps(_bare_failure(f"{type(error).__name__}: {error}")))
        return EXIT_FAILED
    finally:
        log.close()


def _prepare_environment(job_dir: Path, spec: JobSpec) -> None:
    """Environment for torch and Ultralytics, set before either is imported."""
    # Offline, with the fonts in place, even if the caller forgot the environment: without the fonts Ultralytics'
    # dataset check asks github.com for Arial.ttf, YOLO_OFFLINE or not. Idempotent; must precede its import.
    config_root = Path(os.environ.get("YOLO_CONFIG_DIR") or job_dir / "ultralytics-config")
    os.environ.update(ultralytics_environment(config_root))
    # Torch reads OMP_NUM_THREADS at import; Ultralytics would set it to 1 when it is unset.
    os.environ["OMP_NUM_THREADS"] = str(spec.threads)
    # A worker never installs packages (Ultralytics' check_requirements would run pip) nor reports to the
    # Ultralytics Platform, whatever the service's environment says.
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.pop("ULTRALYTICS_API_KEY", None)


def _bare_failure(error: str) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": error,
        "epochs_completed": 0,
        "best": None,
        "last": None,
        "results_csv": None,
        "metrics": {},
        "classes": [],
        "weights_source": "",
        "imgsz": 0,
    }
