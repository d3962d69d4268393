"""Prepare: turn an uploaded dataset ZIP into a YOLO dataset version directory.

The version is built in a staging directory that the caller publishes with one rename; see
DatasetManager.prepare. Images that do not decode are left out and listed in the report, and so are images
whose label file cannot be read or has a line that does not validate (as Ultralytics leaves out an image
with a corrupt label): keeping the other lines would teach that a box that was there is background. The
version is refused only when fewer than two usable images remain.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from services.common.archives import ArchiveEntry, ZipLimits, open_zip, read_entry, safe_entries
from services.common.errors import InvalidArgument
from services.common.images import ImageHeader, verify_image
from services.common.storage.files import atomic_write_text
from services.dataset.domain.data_yaml import names_from_lines, names_from_yaml, render_data_yaml
from services.dataset.domain.labels import YoloBox, format_label_text, parse_label_text
from services.dataset.domain.layout import ImageSource, ZipLayout, read_layout
from services.dataset.domain.splitting import DEFAULT_SPLIT, SplitRatio, split_keys

SPLITS = ("train", "val", "test")
_MAX_TEXT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Rejection:
    file: str
    line: int  # 0 = the whole file
    reason: str


@dataclass
class PrepareReport:
    layout: str = ""
    images_found: int = 0
    images_accepted: int = 0
    label_files_found: int = 0
    label_lines_accepted: int = 0
    ignored_files: int = 0
    rejected_images: list[Rejection] = field(default_factory=list)
    rejected_labels: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PreparedImage:
    image_id: str
    split: str
    relpath: str  # relative to the version directory, e.g. images/train/img001.jpg
    width: int
    height: int


@dataclass
class PreparedContent:
    classes: list[str]
    images: list[PreparedImage]
    report: PrepareReport
    split_ratio: SplitRatio | None  # None when the ZIP's own split was kept

    def count(self, split: str) -> int:
        return sum(1 for image in self.images if image.split == split)


@dataclass(frozen=True)
class PrepareOptions:
    split_ratio: SplitRatio | None
    classes: list[str]
    seed: str
    zip_limits: ZipLimits
    max_image_pixels: int
    workers: int


@dataclass(frozen=True)
class _AcceptedImage:
    source: ImageSource
    header: ImageHeader
    pooled: Path


def prepare_version(zip_path: Path, staging: Path, final_dir: Path, options: PrepareOptions) -> PreparedContent:
    """Fill `staging` with images/, labels/ and data.yaml (whose `path` is `final_dir`)."""
    with open_zip(zip_path) as archive:
        layout = read_layout(safe_entries(archive, options.zip_limits))
        report = PrepareReport(
            layout=layout.describe(),
            images_found=len(layout.images),
            label_files_found=sum(1 for image in layout.images if image.label) + len(layout.orphan_labels),
            ignored_files=layout.ignored,
            rejected_labels=[Rejection(e.name, 0, "no image with the same name") for e in layout.orphan_labels],
        )
        if not layout.images:
            raise InvalidArgument("The ZIP contains no images (jpg, jpeg, png, bmp or webp)")
        classes = options.classes or _classes_from_archive(archive, layout, report)
        decoded = _validate_images(archive, layout, staging / "pool", options, report)
        accepted, labels = _read_labels(archive, decoded, len(classes) if classes else None, report)
    if not classes:
        classes = _classes_from_labels(labels, report)
    if len(accepted) < 2:
        raise InvalidArgument(
            f"Only {len(accepted)} of {len(layout.images)} image(s) are usable; a dataset needs at least 2 "
            "(one for train, one for val). " + "; ".join(f"{r.file}: {r.reason}" for r in report.rejected_images[:5])
        )
    splits, ratio = _assign_splits(accepted, layout, options, report)
    images = _publish_files(accepted, labels, splits, staging)
    (staging / "pool").rmdir()
    used_splits = sorted({image.split for image in images}, key=SPLITS.index)
    atomic_write_text(staging / "data.yaml", render_data_yaml(classes, used_splits, str(final_dir)))
    report.images_accepted = len(images)
    report.label_lines_accepted = sum(len(boxes) for boxes in labels.values())
    return PreparedContent(classes, images, report, ratio)


def _read_text(archive: zipfile.ZipFile, entry: ArchiveEntry) -> str:
    if entry.size > _MAX_TEXT_BYTES:
        raise ValueError(f"larger than {_MAX_TEXT_BYTES} bytes")
    try:
        return read_entry(archive, entry).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except InvalidArgument as error:
        raise ValueError(error.detail) from None


def _classes_from_archive(archive: zipfile.ZipFile, layout: ZipLayout, report: PrepareReport) -> list[str]:
    for entry, parse in ((layout.data_yaml, names_from_yaml), (layout.classes_txt, names_from_lines)):
        if entry is None:
            continue
        try:
            return parse(_read_text(archive, entry))
        except Exception as error:  # noqa: BLE001 - any unreadable config is reported, not fatal
            report.warnings.append(f"{entry.name}: class names not usable ({error})")
    return []


def _classes_from_labels(labels: dict[str, list[YoloBox]], report: PrepareReport) -> list[str]:
    ids = [box.class_id for boxes in labels.values() for box in boxes]
    if not ids:
        report.warnings.append("No class names and no labels: pass `classes` when creating an annotation task")
        return []
    report.warnings.append("No class names in the request, data.yaml or classes.txt: named the classes class0..classN")
    return [f"class{index}" for index in range(max(ids) + 1)]


def _validate_images(
    archive: zipfile.ZipFile, layout: ZipLayout, pool: Path, options: PrepareOptions, report: PrepareReport
) -> list[_AcceptedImage]:
    pool.mkdir()

    def check(index: int, source: ImageSource) -> _AcceptedImage | Rejection:
        try:
            data = read_entry(archive, source.entry)
            header = verify_image(data, options.max_image_pixels)
        except InvalidArgument as error:
            return Rejection(source.entry.name, 0, error.detail)
        pooled = pool / f"{index}{PurePosixPath(source.entry.name).suffix.lower()}"
        pooled.write_bytes(data)
        return _AcceptedImage(source, header, pooled)

    with ThreadPoolExecutor(max_workers=max(options.workers, 1)) as executor:
        outcomes = list(executor.map(check, range(len(layout.images)), layout.images))
    report.rejected_images.extend(o for o in outcomes if isinstance(o, Rejection))
    return [o for o in outcomes if isinstance(o, _AcceptedImage)]


def _read_labels(
    archive: zipfile.ZipFile, decoded: list[_AcceptedImage], num_classes: int | None, report: PrepareReport
) -> tuple[list[_AcceptedImage], dict[str, list[YoloBox]]]:
    """The images whose labels can be trusted, and their boxes per image entry name (only images that came
    with a label file have a key). An image whose label file is unreadable or has an invalid line is
    rejected whole; the lines themselves are listed in rejected_labels."""
    accepted: list[_AcceptedImage] = []
    labels: dict[str, list[YoloBox]] = {}
    for image in decoded:
        entry = image.source.label
        if entry is None:
            accepted.append(image)
            continue
        try:
            text = _read_text(archive, entry)
        except ValueError as error:
            report.rejected_labels.append(Rejection(entry.name, 0, str(error)))
            _reject(image, f"unreadable label file {entry.name}: {error}", report)
            continue
        parsed = parse_label_text(text, num_classes)
        report.rejected_labels.extend(Rejection(entry.name, r.line, r.reason) for r in parsed.rejected)
        if parsed.invalid:
            first, more = parsed.invalid[0], len(parsed.invalid) - 1
            reason = f"invalid label in {entry.name} line {first.line}: {first.reason}"
            _reject(image, reason + (f", and {more} more invalid line{'s' * (more > 1)}" if more else ""), report)
            continue
        accepted.append(image)
        labels[image.source.entry.name] = parsed.boxes
    return accepted, labels


def _reject(image: _AcceptedImage, reason: str, report: PrepareReport) -> None:
    image.pooled.unlink()
    report.rejected_images.append(Rejection(image.source.entry.name, 0, reason))


def _assign_splits(
    accepted: list[_AcceptedImage], layout: ZipLayout, options: PrepareOptions, report: PrepareReport
) -> tuple[dict[str, str], SplitRatio | None]:
    if options.split_ratio is None and layout.pre_split:
        kept = {image.source.entry.name: image.source.split or "train" for image in accepted}
        counts = Counter(kept.values())
        if counts["train"] and counts["val"]:
            return kept, None
        report.warnings.append("The ZIP's own split lost all its train or val images; split by ratio instead")
    ratio = options.split_ratio or DEFAULT_SPLIT
    return split_keys([image.source.entry.name for image in accepted], ratio, options.seed), ratio


def _image_id(stem: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "image"
    candidate, number = base, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{base}_{number}"
    taken.add(candidate.lower())
    return candidate


def _publish_files(
    accepted: list[_AcceptedImage], labels: dict[str, list[YoloBox]], splits: dict[str, str], staging: Path
) -> list[PreparedImage]:
    for split in set(splits.values()):
        (staging / "images" / split).mkdir(parents=True, exist_ok=True)
        (staging / "labels" / split).mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    images = []
    for image in sorted(accepted, key=lambda item: item.source.entry.name):
        name = image.source.entry.name
        split = splits[name]
        path = PurePosixPath(name)
        image_id = _image_id(path.stem, taken)
        relpath = f"images/{split}/{image_id}{path.suffix.lower()}"
        os.rename(image.pooled, staging / relpath)
        if name in labels:
            (staging / "labels" / split / f"{image_id}.txt").write_text(format_label_text(labels[name]))
        images.append(PreparedImage(image_id, split, relpath, *image.header.size))
    return images
