"""Uploaded images kept for the documented `image_path` ("uploads/infer_20240115_123456_....jpg"), served back
by GET /static/uploads/{filename} and removed after a retention period."""

from __future__ import annotations

import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

from services.common.downloads import Download, file_chunks
from services.common.errors import NotFound
from services.common.storage.files import fsync_dir

# Magic numbers of the formats the service decodes -> (suffix, content type).
_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, ".jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, ".png", "image/png"),
    (b"BM", 0, ".bmp", "image/bmp"),
    (b"WEBP", 8, ".webp", "image/webp"),
    (b"II*\x00", 0, ".tif", "image/tiff"),
    (b"MM\x00*", 0, ".tif", "image/tiff"),
)
_CONTENT_TYPES = {suffix: content_type for _, _, suffix, content_type in _SIGNATURES}
_UPLOAD_NAME = re.compile(r"^infer_\d{8}_\d{6}_[0-9a-f]{6}(_\d+)?\.(jpg|png|bmp|webp|tif|img)$")


def image_suffix(head: bytes) -> str:
    for magic, offset, suffix, _ in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return suffix
    return ".img"


class UploadStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def batch_prefix(self, moment: datetime) -> str:
        """A name stem shared by the images of one request (`_1`, `_2`, ... are appended for a batch)."""
        return f"infer_{moment:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"

    def keep(self, staged: Path, stem: str) -> str:
        """Move a received (already decoded, so known-good) upload into the store; returns its image_path."""
        with open(staged, "rb") as handle:
            suffix = image_suffix(handle.read(16))
        self._root.mkdir(parents=True, exist_ok=True)
        name = f"{stem}{suffix}"
        os.replace(staged, self._root / name)
        fsync_dir(self._root)
        return f"uploads/{name}"

    def open(self, filename: str) -> Download:
        if not _UPLOAD_NAME.match(filename):
            raise NotFound(f"Upload {filename} not found")
        path = self._root / filename
        try:
            chunks = file_chunks(path)
        except FileNotFoundError:
            raise NotFound(f"Upload {filename} not found") from None
        return Download(filename, _CONTENT_TYPES.get(path.suffix, "application/octet-stream"), chunks, inline=True)

    def sweep(self, max_age_hours: float) -> int:
        """Remove uploads older than the retention period; returns how many went."""
        if max_age_hours <= 0 or not self._root.is_dir():
            return 0
        cutoff = time.time() - max_age_hours * 3600
        removed = 0
        for entry in self._root.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
