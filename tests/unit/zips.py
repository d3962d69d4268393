"""Builders for the unit tests: real JPEG/PNG bytes (Pillow) and real ZIP archives (zipfile)."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

Member = tuple[str | zipfile.ZipInfo, bytes]


def jpeg_bytes(
    width: int = 32,
    height: int = 24,
    *,
    color: tuple[int, int, int] = (200, 40, 40),
    noise_seed: int | None = None,
    orientation: int | None = None,
) -> bytes:
    """A real JPEG. `noise_seed` fills it with random pixels (large entropy-coded data, so a cut shows);
    `orientation` adds an EXIF Orientation tag."""
    if noise_seed is None:
        image = Image.new("RGB", (width, height), color)
    else:
        image = Image.frombytes("RGB", (width, height), random.Random(noise_seed).randbytes(width * height * 3))
    buffer = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def png_bytes(width: int = 16, height: int = 16, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def image_bytes(fmt: str, width: int = 16, height: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width x height but whose data is a few bytes: decoding
    it would allocate width*height*3 bytes (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def zip_bytes(members: Mapping[str, bytes] | Iterable[Member], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP of (name or ZipInfo, data) members, names stored exactly as given (no sanitising)."""
    items = members.items() if isinstance(members, Mapping) else members
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in items:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            if not isinstance(name, zipfile.ZipInfo):
                info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def write_zip(
    path: Path, members: Mapping[str, bytes] | Iterable[Member], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    path.write_bytes(zip_bytes(members, compression))
    return path


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
    info.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx, as Info-ZIP stores symlinks
    return info


def mark_encrypted(data: bytes) -> bytes:
    """Set the 'encrypted' general-purpose flag on every local and central directory header."""
    patched = bytearray(data)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (at := patched.find(signature, start)) != -1:
            patched[at + flag_offset] |= 0x01
            start = at + 4
    return bytes(patched)


def corrupt_stored_member(data: bytes, member: str) -> bytes:
    """Flip one byte inside a STORED member's data, so its CRC no longer matches."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
        assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 0
    local = data[info.header_offset : info.header_offset + 30]
    assert local[:4] == b"PK\x03\x04"
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_length + extra_length
    patched = bytearray(data)
    patched[offset + info.file_size // 2] ^= 0xFF
    return bytes(patched)


def label_line(class_id: int, x: float = 0.5, y: float = 0.5, w: float = 0.2, h: float = 0.2) -> str:
    return f"{class_id} {x} {y} {w} {h}"
