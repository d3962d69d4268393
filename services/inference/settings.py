"""Inference service settings (VM_INFERENCE_* variables; Triton's own are VM_TRITON_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VM_INFERENCE_", extra="ignore", frozen=True)

    grpc_port: int = 50053
    # Largest image upload of /infer, /infer/batch/run and /infer/{model_id}/export (bytes, whole request).
    max_image_upload_bytes: int = 256 * 1024**2
    # Largest video upload of /infer/video/** (bytes).
    max_video_upload_bytes: int = 2 * 1024**3
    # Largest image accepted, in pixels (decompression-bomb protection).
    max_image_pixels: int = 64_000_000
    # Images per request of /infer/batch/run and /infer/{model_id}/export.
    max_batch_images: int = 256
    # Videos: largest frame (pixels) and most frames processed; longer videos are refused with 400.
    max_video_pixels: int = 3840 * 2160
    max_video_frames: int = 108_000
    # Largest annotated video POST /infer/video/{model_id} returns inline as base64 (bytes); longer videos
    # should use the /stream variant. Must stay under the gateway's response body limit.
    max_inline_video_bytes: int = 40 * 1024**2
    # Frames in flight to Triton while a video is processed (keeps both model instances busy).
    video_pipeline_depth: int = 4
    # Seconds a serving route waits for a model whose ONNX export is still pending (e.g. re-queued after a
    # restart of the training service) before it answers 409; 0 = answer at once.
    export_wait_seconds: float = 60.0
    # Default thresholds when a request gives none.
    default_conf: float = 0.25
    default_iou: float = 0.45
    # Uploaded images (the documented image_path) are kept this many hours; 0 = forever.
    upload_retention_hours: float = 24.0
    # ... and take this many bytes at most: past it the oldest go at once (the upload just kept stays, so the
    # image_path of the answer works); 0 = no cap.
    upload_max_total_bytes: int = 1024**3
    # The 002 task API: the sample set `index` picks from (sorted entries: an image, a video, or a folder of
    # them; empty = <data root>/samples), the model it runs (empty = the newest model ready for serving), how
    # many tasks may wait before POST /api/inference answers 503, and how many run at once.
    samples_dir: Path | None = None
    task_model_id: str = ""
    task_queue_capacity: int = 100
    task_workers: int = 1
    # Attempts of a task interrupted by a crash before it is marked failed (guards against a task that
    # crashes the service every time).
    task_max_attempts: int = 2

    @property
    def sample_root(self) -> Path:
        return self.samples_dir or self.data_root / "samples"
