"""OCR service settings (VM_OCR_* variables; image URL fetching is the mesh-wide VM_FETCH_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import GrpcServerSettings, UrlFetchSettings


class OcrSettings(GrpcServerSettings, UrlFetchSettings):
    model_config = SettingsConfigDict(env_prefix="VM_OCR_", extra="ignore", frozen=True)

    grpc_port: int = 50055
    # The text detector sees images scaled so that their longer side is at most this (pixels): larger reads
    # smaller text, slower.
    det_limit_side_len: int = 960
    # ONNX Runtime threads per read; reads run one at a time.
    threads: int = 2
    # Lines recognised with a lower confidence are dropped.
    min_score: float = 0.5
    # Turn upside-down text upright before reading it (an extra model per line).
    use_angle_cls: bool = False
    # Images per predictText request, and the largest image accepted (pixels).
    max_images: int = 32
    max_image_pixels: int = 40_000_000
