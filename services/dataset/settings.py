"""Dataset service settings (VM_DATASET_* variables; shared VM_* ones come from CommonSettings)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.archives import ZipLimits
from services.common.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VM_DATASET_", extra="ignore", frozen=True)

    grpc_port: int = 50051
    # Largest dataset ZIP accepted by POST /datasets/upload (bytes).
    max_upload_bytes: int = 10 * 1024**3
    # Limits applied to the ZIP's contents (zip-bomb and abuse protection).
    max_zip_entries: int = 200_000
    max_zip_total_bytes: int = 20 * 1024**3
    max_zip_entry_bytes: int = 1024**3
    max_zip_ratio: float = 200.0
    # Largest image accepted, in pixels (decompression-bomb protection); 0 = no limit.
    max_image_pixels: int = 64_000_000
    # Threads that decode and validate images during prepare.
    prepare_workers: int = 4

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(
            max_entries=self.max_zip_entries,
            max_total_bytes=self.max_zip_total_bytes,
            max_entry_bytes=self.max_zip_entry_bytes,
            max_ratio=self.max_zip_ratio,
        )
