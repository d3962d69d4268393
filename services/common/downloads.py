"""A file to send to a client, produced by domain code and streamed by the gRPC layer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    chunks: Iterator[bytes]
    inline: bool = False  # shown by browsers (images) rather than saved (ZIPs)


def file_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks; the file is opened now, so a missing file fails before streaming."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the generator

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return chunks()
