"""Triton settings (VM_TRITON_* variables), read by the launcher (which starts the server), by the services that
write models into its repository (training, segmentation) and by the inference service (its client)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings


class TritonSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="VM_TRITON_", extra="ignore", frozen=True, populate_by_name=True)

    # Where clients reach Triton's gRPC endpoint. The ports avoid Triton's own defaults (8000-8002), which
    # the platform's REST ports use.
    host: str = "127.0.0.1"
    grpc_port: int = 8201
    # Prometheus metrics (Triton's /metrics); 0 turns them off.
    metrics_port: int = 8202
    # Start a tritonserver with the platform (`./mesh up`); off when Triton runs elsewhere (NGC container).
    managed: bool = True
    # The tritonserver binary; empty = the one bundled in the nvidia-pytriton wheel.
    server_binary: Path | None = None
    # Model repository; empty = <data root>/triton/repository.
    model_repository: Path | None = None
    # How ONNX models are written into the repository:
    #   python           - a Python-backend model that runs the .onnx file with ONNX Runtime (the only backend
    #                      of the pip-installed tritonserver; what `./mesh up` uses),
    #   onnxruntime_onnx - Triton's native ONNX Runtime backend (the NGC container, GPU deployments).
    model_format: Literal["python", "onnxruntime_onnx"] = "python"
    # Model instances per model and ONNX Runtime threads per instance. On a 2-core CPU two single-threaded
    # instances beat one two-threaded instance (runtime-facts.md).
    instance_count: int = 2
    threads_per_instance: int = 1
    # Largest batch the dynamic batcher forms, and how long a request may wait for others to join it. On a
    # CPU a batch costs its size in time and buys nothing, while big batches leave an instance idle: batches
    # of at most 4, formed only from requests already waiting when an instance frees up, served 16.7 images/s
    # at 16 clients against 14.1 with 8 and a 2 ms wait (bench/inference_bench.py). On a GPU, raise both.
    max_batch_size: int = 4
    max_queue_delay_microseconds: int = 0
    # Seconds an inference call to Triton may take before it fails with 503.
    request_timeout_seconds: float = 60.0

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def repository(self) -> Path:
        return self.model_repository or self.data_root / "triton" / "repository"

    @property
    def work_dir(self) -> Path:
        """Triton's backend directory and other files the launcher prepares for it."""
        return self.data_root / "triton"
