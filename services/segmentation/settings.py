"""Segmentation service settings (VM_SEGMENTATION_* variables; image URL fetching is the mesh-wide VM_FETCH_*,
Triton's are VM_TRITON_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, UrlFetchSettings


class SegmentationSettings(ServiceSettings, UrlFetchSettings):
    model_config = SettingsConfigDict(env_prefix="VM_SEGMENTATION_", extra="ignore", frozen=True)

    grpc_port: int = 50054
    # Largest /ingest upload (bytes, whole request) and largest image accepted (pixels).
    max_upload_bytes: int = 32 * 1024**2
    max_image_pixels: int = 40_000_000
    # How long POST /ingest waits for its task before answering task_status 300 (poll /ingest/status then).
    ingest_wait_seconds: float = 10.0
    # Ingest tasks processed at once, and attempts of a task interrupted by a crash before it is marked failed.
    ingest_workers: int = 1
    ingest_max_attempts: int = 2
    # Which segmenter /ingest uses: "layout" (built-in, non-learned, for UI screenshots), "sam" (needs
    # sam_checkpoint) or "auto" (sam when a checkpoint is configured, else layout).
    ingest_segmenter: Literal["auto", "layout", "sam"] = "auto"
    # SAM checkpoint (a state dict file) and its model type: vit_t (MobileSAM), vit_b, vit_l or vit_h. Without
    # a checkpoint the predictSam routes use the layout segmenter too.
    sam_checkpoint: Path | None = None
    sam_model_type: Literal["vit_t", "vit_b", "vit_l", "vit_h"] = "vit_t"
    # Automatic masks: the point grid (per side) and SAM's quality thresholds.
    sam_points_per_side: int = 16
    sam_pred_iou_thresh: float = 0.86
    sam_stability_score_thresh: float = 0.92
    # Torch threads of SAM, and the time a segmentation may take before it fails with err 802.
    sam_threads: int = 2
    segmentation_timeout_seconds: float = 300.0
    # Component images per predictResnet request, and component crops classified per Triton request.
    max_resnet_images: int = 256
    classify_batch_size: int = 32
    # The classifier used when a request names none: empty = the built-in one the service trains at its first
    # start on components it renders itself (task id Train-imgSeg-default).
    default_model_id: str = ""
    # The built-in classifier's training: epochs, rendered images per component type (training and held-out).
    builtin_epochs: int = 6
    builtin_per_class: int = 200
    builtin_heldout_per_class: int = 40
    # Rendered images per type added to every user training, next to the added training resources.
    training_rendered_per_class: int = 60
    # Torch threads of a training, and the largest training resource image (bytes come from VM_FETCH_*).
    training_threads: int = 2
    # Attempts of a training interrupted by a crash (it resumes from its last epoch) before it is marked failed.
    training_max_attempts: int = 3
