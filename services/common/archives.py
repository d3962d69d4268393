"""ZIP archives from untrusted users, and ZIP archives we stream to them.

Reading: every entry is checked before anything is extracted: no absolute or `..` paths (zip-slip), no
symlinks, no encryption, a cap on entry count and total expanded size, and a cap on the expansion ratio
(zip bombs). Reads never return more than an entry's declared size (zipfile enforces it), so the checked
header sizes bound the real output.

Writing: `stream_zip` produces a ZIP as a sequence of chunks with bounded memory, for download RPCs.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.common.errors import InvalidArgument

_COPY_CHUNK = 1024 * 1024
# Already-compressed formats gain nothing from deflate.
_STORED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".zip", ".pt", ".onnx", ".mp4", ".gz"}


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 200_000
    max_total_bytes: int = 20 * 1024**3
    max_entry_bytes: int = 1024**3
    # Entries above ratio_min_bytes may expand at most max_ratio times their compressed size.
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class ArchiveEntry:
    name: str  # normalised POSIX path inside the archive
    info: zipfile.ZipInfo

    @property
    def size(self) -> int:
        return self.info.file_size


def open_zip(path: Path) -> zipfile.ZipFile:
    if path.stat().st_size == 0:
        raise InvalidArgument("The uploaded file is empty")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise InvalidArgument(f"The uploaded file is not a valid ZIP archive ({error})") from error


def _normalised_name(raw: str) -> str:
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise InvalidArgument(f"Unsafe path in ZIP archive: {raw!r} (absolute paths and '..' are refused)")
    return "/".join(part for part in parts if part not in (".", ""))


def safe_entries(archive: zipfile.ZipFile, limits: ZipLimits) -> list[ArchiveEntry]:
    """The archive's file entries, or InvalidArgument if any entry is unsafe or the whole is too big."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise InvalidArgument(f"ZIP archive has {len(infos)} entries; the limit is {limits.max_entries}")
    entries: list[ArchiveEntry] = []
    total = 0
    for info in infos:
        name = _normalised_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidArgument(f"ZIP archive contains a symbolic link: {info.filename!r}")
        if info.flag_bits & 0x1:
            raise InvalidArgument(f"ZIP entry is encrypted: {info.filename!r}")
        if info.is_dir() or not name:
            continue
        if info.file_size > limits.max_entry_bytes:
            raise InvalidArgument(
                f"ZIP entry {info.filename!r} expands to {info.file_size} bytes; the limit is {limits.max_entry_bytes}"
            )
        if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise InvalidArgument(
                f"ZIP entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x; "
                f"refusing a likely zip bomb (limit {limits.max_ratio:g}x)"
            )
        total += info.file_size
        entries.append(ArchiveEntry(name, info))
    if total > limits.max_total_bytes:
        raise InvalidArgument(f"ZIP archive expands to {total} bytes; the limit is {limits.max_total_bytes}")
    return entries


def read_entry(archive: zipfile.ZipFile, entry: ArchiveEntry) -> bytes:
    """The entry's bytes; InvalidArgument if its data is corrupt (bad CRC, truncated stream)."""
    try:
        with archive.open(entry.info) as handle:
            return handle.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
        raise InvalidArgument(f"ZIP entry {entry.name!r} is corrupt: {error}") from error


def copy_entry(archive: zipfile.ZipFile, entry: ArchiveEntry, destination: Path) -> None:
    try:
        with archive.open(entry.info) as source, open(destination, "wb") as target:
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise InvalidArgument(f"ZIP entry {entry.name!r} is corrupt: {error}") from error


class _ChunkSink(io.RawIOBase):
    """A write-only, unseekable stream: zipfile then writes data descriptors instead of seeking back."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer += data
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def pending(self) -> int:
        return len(self._buffer)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


ZipMember = tuple[str, Path | bytes]


def stream_zip(members: Iterable[ZipMember], chunk_bytes: int = _COPY_CHUNK) -> Iterator[bytes]:
    """Yield a ZIP archive of (name in archive, file path or bytes) members, chunk by chunk."""
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        for name, source in members:
            compression = (
                zipfile.ZIP_STORED if PurePosixPath(name).suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            )
            if isinstance(source, bytes):
                archive.writestr(
                    zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), source, compress_type=compression
                )
            else:
                info = zipfile.ZipInfo.from_file(source, name, strict_timestamps=False)
                info.compress_type = compression
                size = source.stat().st_size
                with open(source, "rb") as src, archive.open(info, "w", force_zip64=size > 2**31) as dst:
                    while chunk := src.read(_COPY_CHUNK):
                        dst.write(chunk)
                        if sink.pending() >= chunk_bytes:
                            yield sink.drain()
            if sink.pending() >= chunk_bytes:
                yield sink.drain()
    if sink.pending():
        yield sink.drain()
