"""Reading a dataset ZIP's layout: which entries are images, which label goes with which image, what
split each image is already in, and where class names come from.

Accepted layouts (optionally wrapped in one or more top-level folders):
  images/*.jpg + labels/*.txt                          flat
  images/{train,val[,test]}/* + labels/{train,val}/*    pre-split (Ultralytics)
  {train,valid[,test]}/{images,labels}/*               pre-split (Roboflow export)
  *.jpg + *.txt side by side, or images only           unlabelled or darknet-style
plus data.yaml (names) or classes.txt (one name per line) anywhere near the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from services.common.archives import ArchiveEntry

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
DATA_YAML_NAMES = frozenset({"data.yaml", "data.yml", "dataset.yaml", "dataset.yml"})
CLASSES_TXT_NAMES = frozenset({"classes.txt", "obj.names"})
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})


@dataclass
class ImageSource:
    entry: ArchiveEntry
    split: str | None  # split named by the image's folders, if any
    label: ArchiveEntry | None


@dataclass
class ZipLayout:
    images: list[ImageSource] = field(default_factory=list)
    orphan_labels: list[ArchiveEntry] = field(default_factory=list)
    data_yaml: ArchiveEntry | None = None
    classes_txt: ArchiveEntry | None = None
    ignored: int = 0

    @property
    def pre_split(self) -> bool:
        """Every image sits in a split folder and there is at least a train and a val split."""
        splits = {image.split for image in self.images}
        return None not in splits and {"train", "val"} <= splits

    def describe(self) -> str:
        has_labels = any(image.label for image in self.images)
        folders = "images/ + labels/" if has_labels else "images only"
        return f"{folders} (pre-split)" if self.pre_split else folders


def _is_junk(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts) or path.name.lower() in _JUNK_NAMES


def _split_of(path: PurePosixPath) -> str | None:
    for part in reversed(path.parts[:-1]):
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return None


def _label_candidates(path: PurePosixPath) -> list[str]:
    """Ultralytics' rule first (last /images/ -> /labels/, suffix .txt), then a .txt beside the image."""
    parts = list(path.with_suffix(".txt").parts)
    candidates = []
    for index in range(len(parts) - 2, -1, -1):
        if parts[index].lower() == "images":
            candidates.append("/".join([*parts[:index], "labels", *parts[index + 1 :]]))
            break
    candidates.append("/".join(parts))
    return candidates


def _shallowest(entries: list[ArchiveEntry]) -> ArchiveEntry | None:
    return min(entries, key=lambda e: (e.name.count("/"), e.name), default=None)


def _classify(entries: list[ArchiveEntry], layout: ZipLayout) -> dict[str, list[ArchiveEntry]]:
    kinds: dict[str, list[ArchiveEntry]] = {"image": [], "yaml": [], "classes": [], "text": []}
    for entry in entries:
        path = PurePosixPath(entry.name)
        name, suffix = path.name.lower(), path.suffix.lower()
        if _is_junk(path):
            kind = None
        elif suffix in IMAGE_SUFFIXES:
            kind = "image"
        elif name in DATA_YAML_NAMES:
            kind = "yaml"
        elif name in CLASSES_TXT_NAMES:
            kind = "classes"
        elif suffix == ".txt":
            kind = "text"
        else:
            kind = None
        if kind is None:
            layout.ignored += 1
        else:
            kinds[kind].append(entry)
    return kinds


class _LabelIndex:
    """Label files by name: an exact match wins; a match ignoring case counts only when it is unique, so
    labels/A.txt and labels/a.txt each stay with their own image."""

    def __init__(self, entries: list[ArchiveEntry]) -> None:
        self.exact = {entry.name: entry for entry in entries}
        self._folded: dict[str, list[ArchiveEntry]] = {}
        for entry in entries:
            self._folded.setdefault(entry.name.lower(), []).append(entry)
        self.used: set[str] = set()

    def find(self, candidate: str) -> ArchiveEntry | None:
        entry = self.exact.get(candidate)
        if entry is None:
            folded = self._folded.get(candidate.lower(), [])
            entry = folded[0] if len(folded) == 1 else None
        if entry is not None:
            self.used.add(entry.name)
        return entry


def read_layout(entries: list[ArchiveEntry]) -> ZipLayout:
    layout = ZipLayout()
    kinds = _classify(entries, layout)
    labels = _LabelIndex(kinds["text"])
    for entry in sorted(kinds["image"], key=lambda e: e.name):
        path = PurePosixPath(entry.name)
        label = next(filter(None, map(labels.find, _label_candidates(path))), None)
        layout.images.append(ImageSource(entry, _split_of(path), label))
    for name, entry in sorted(labels.exact.items()):
        if name in labels.used:
            continue
        if "labels" in (part.lower() for part in PurePosixPath(name).parts[:-1]):
            layout.orphan_labels.append(entry)
        else:
            layout.ignored += 1  # README.txt, train.txt image lists, ...
    layout.data_yaml = _shallowest(kinds["yaml"])
    layout.classes_txt = _shallowest(kinds["classes"])
    return layout
