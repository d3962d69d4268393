"""Uploaded images kept for the documented `image_path` ("uploads/infer_20240115_123456_....jpg"), served back
by GET /static/uploads/{filename}, removed after a retention period and, oldest first, whenever they add up to
more than a byte cap."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import structlog

from services.common.downloads import Download, file_chunks
from services.common.errors import NotFound
from services.common.storage.files import fsync_dir

log = structlog.get_logger("inference.uploads")

# Magic numbers of the formats the service decodes -> (suffix, content type).
_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, ".jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, ".png", "image/png"),
    (b"BM", 0, ".bmp", "image/bmp"),
    (b"WEBP", 8, ".webp", "image/webp"),
)
_CONTENT_TYPES = {suffix: content_type for _, _, suffix, content_type in _SIGNATURES}
_UPLOAD_NAME = re.compile(r"^infer_\d{8}_\d{6}_[0-9a-f]{6}(_\d+)?\.(jpg|png|bmp|webp|img)$")


def image_suffix(head: bytes) -> str:
    for magic, offset, suffix, _ in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return suffix
    return ".img"


class UploadStore:
    """The kept uploads under two limits: their age (sweep, run periodically) and their total size (checked at
    every keep). The store counts the bytes it holds in memory, oldest file first: the directory is read when
    the store is made and again by each sweep, never per upload."""

    def __init__(self, root: Path, max_total_bytes: int) -> None:
        self._root = root
        self._max_total_bytes = max_total_bytes  # 0 = no cap
        self._lock = threading.Lock()  # keep() runs in worker threads, several at once
        self._kept, self._total = _indexed(self._scan())  # file name -> size, oldest first; their sum

    @property
    def total_bytes(self) -> int:
        return self._total

    def batch_prefix(self, moment: datetime) -> str:
        """A name stem shared by the images of one request (`_1`, `_2`, ... are appended for a batch)."""
        return f"infer_{moment:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"

    def keep(self, staged: Path, stem: str) -> str:
        """Move a received (already decoded, so known-good) upload into the store; returns its image_path."""
        with open(staged, "rb") as handle:
            suffix = image_suffix(handle.read(16))
            size = os.fstat(handle.fileno()).st_size
        self._root.mkdir(parents=True, exist_ok=True)
        name = f"{stem}{suffix}"
        os.replace(staged, self._root / name)
        fsync_dir(self._root)
        with self._lock:
            self._total += size - self._kept.pop(name, 0)  # a sweep may have counted it already
            self._kept[name] = size
            removed = self._enforce_cap(protect=name)
        if removed:
            log.debug("uploads removed over the byte cap", count=removed, total_bytes=self._total)
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
        """Remove uploads older than the retention period (0 = none is too old), then the oldest ones while
        the rest add up to more than the cap; returns how many went. Reads the directory again, so files the
        store did not keep (or that went behind its back) are counted from now on."""
        cutoff = time.time() - max_age_hours * 3600 if max_age_hours > 0 else 0.0
        with self._lock:
            files = self._scan()
            current = [(mtime, name, size) for mtime, name, size in files if mtime >= cutoff]
            removed = sum(self._unlink(name) for mtime, name, _ in files if mtime < cutoff)
            self._kept, self._total = _indexed(current)
            return removed + self._enforce_cap(protect="")

    def _scan(self) -> list[tuple[float, str, int]]:
        """(modification time, name, size) of every file in the store, oldest first."""
        files = []
        if self._root.is_dir():
            for entry in os.scandir(self._root):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, entry.name, stat.st_size))
        return sorted(files)

    def _enforce_cap(self, protect: str) -> int:
        """Remove the oldest uploads while they add up to more than the cap, never `protect` (the upload just
        kept: its image_path is in the answer being sent). Called with the lock held."""
        removed = 0
        while self._max_total_bytes and self._total > self._max_total_bytes and len(self._kept) > 1:
            name, size = self._kept.popitem(last=False)
            if name == protect:  # kept after a newer one (concurrent keeps): it counts as the newest
                self._kept[name] = size
                continue
            self._total -= size
            removed += self._unlink(name)
        return removed

    def _unlink(self, name: str) -> int:
        try:
            (self._root / name).unlink()
        except FileNotFoundError:
            return 0
        return 1


def _indexed(files: list[tuple[float, str, int]]) -> tuple[OrderedDict[str, int], int]:
    kept = OrderedDict((name, size) for _, name, size in files)
    return kept, sum(kept.values())
