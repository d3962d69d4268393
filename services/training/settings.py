"""Training service settings (VM_TRAINING_* variables; shared VM_* ones come from CommonSettings)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VM_TRAINING_", extra="ignore", frozen=True)

    grpc_port: int = 50052
    # Jobs that train at the same time (one worker process each); the rest wait as `queued`.
    max_concurrent_jobs: int = 1
    # Where pretrained weights (yolov8n.pt, yolo11n.pt, ...) are looked up; empty = <data root>/weights.
    # Names not found there are trained from scratch (the same architecture), never downloaded.
    weights_dir: Path | None = None
    # Torch threads per worker process; 0 = cores / max_concurrent_jobs - 1 (at least 1).
    worker_threads_per_job: int = 0
    # Seconds a stopping worker may take to finish its epoch before it is killed (last.pt stays resumable).
    stop_grace_seconds: float = 60.0
    # Limits on job parameters.
    max_epochs: int = 10_000
    max_imgsz: int = 4096
    max_batch: int = 1024
    # Largest model ZIP POST /models/upload accepts (bytes).
    max_model_upload_bytes: int = 2 * 1024**3

    @property
    def pretrained_weights_dir(self) -> Path:
        return self.weights_dir or self.data_root / "weights"
