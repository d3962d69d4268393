"""The sample set the 002 task API picks from by `index`: a directory whose entries, in natural name order,
are the samples 1, 2, 3, ...

An entry is one image, one video, or a folder of them. A folder's own files make up its sample; its
subfolders are ignored (not searched), so a sample is exactly what one look into the folder shows. Hidden
entries (names starting with "."), files of other kinds and folders without an image or a video are not
samples. The directory is read again on every call: samples added or removed count at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.common.errors import InvalidArgument, NotFound

log = structlog.get_logger("inference.samples")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key putting "2.jpg" before "10.jpg", ignoring case; the name itself breaks ties ("01" vs "1")."""
    # re.split with a group alternates text and digits, so equal positions always hold the same type.
    parts = _DIGITS.split(name.casefold())
    return tuple(int(part) if position % 2 else part for position, part in enumerate(parts)), name


@dataclass(frozen=True)
class Sample:
    index: int  # 1-based
    name: str  # the entry's name in the sample directory
    images: tuple[Path, ...]  # in natural order
    videos: tuple[Path, ...]


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda e: natural_key(e.name))


class SampleSet:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _samples(self) -> list[Sample]:
        if not self._root.is_dir():
            return []
        samples: list[Sample] = []
        for entry in _visible(self._root.iterdir()):
            files = _visible(entry.iterdir()) if entry.is_dir() else [entry]
            images = tuple(path for path in files if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
            videos = tuple(path for path in files if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())
            if images or videos:
                samples.append(Sample(len(samples) + 1, entry.name, images, videos))
        return samples

    def count(self) -> int:
        return len(self._samples())

    def get(self, index: int) -> Sample:
        """The sample at `index`. The answers say which indexes exist, not where the set lives on the server."""
        if index < 1:
            raise InvalidArgument("index must be an integer >= 1")
        samples = self._samples()
        if not samples:
            log.warning("the sample set is empty", directory=str(self._root), exists=self._root.is_dir())
            raise NotFound(
                f"No sample {index}: the sample set is empty; the operator puts images, videos or folders of them "
                "into the directory VM_INFERENCE_SAMPLES_DIR names"
            )
        if index > len(samples):
            count = len(samples)
            raise NotFound(
                f"No sample {index}: the sample set has {count} sample{'s' * (count > 1)}; "
                f"use an index from 1 to {count}"
            )
        return samples[index - 1]
