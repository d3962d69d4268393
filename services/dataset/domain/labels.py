"""YOLO label files: validation line by line, and conversion between YOLO and pixel boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Float noise such as 1.0000001 from other tools is accepted and clamped; anything further out is refused.
_TOLERANCE = 1e-6
# Most classes a dataset may have. Also bounds class ids read from labels when no class names are known,
# so one line such as "1000000 0.5 0.5 0.1 0.1" cannot make the platform invent a million class names.
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class YoloBox:
    class_id: int
    x_center: float
    y_center: float
    width: float
    height: float

    def to_line(self) -> str:
        return f"{self.class_id} {self.x_center:.6f} {self.y_center:.6f} {self.width:.6f} {self.height:.6f}"


@dataclass(frozen=True)
class PixelBox:
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class LineRejection:
    line: int
    reason: str


def _parse_line(text: str, num_classes: int | None) -> YoloBox:
    values = text.split()
    if len(values) != 5:
        raise ValueError(f"expected 5 values (class x_center y_center width height), got {len(values)}")
    if not values[0].isdigit():
        raise ValueError(f"class id {values[0]!r} is not a non-negative integer")
    class_id = int(values[0])
    if num_classes is not None and class_id >= num_classes:
        raise ValueError(f"class id {class_id} is out of range (dataset has {num_classes} classes)")
    if class_id >= MAX_CLASSES:
        raise ValueError(f"class id {class_id} is out of range (at most {MAX_CLASSES} classes are supported)")
    try:
        coords = [float(v) for v in values[1:]]
    except ValueError:
        raise ValueError(f"coordinates {' '.join(values[1:])!r} are not numbers") from None
    if not all(math.isfinite(c) and -_TOLERANCE <= c <= 1 + _TOLERANCE for c in coords):
        raise ValueError(f"coordinates {' '.join(values[1:])} are not normalised to 0..1")
    x, y, w, h = (min(max(c, 0.0), 1.0) for c in coords)
    if w <= 0 or h <= 0:
        raise ValueError("box width and height must be greater than 0")
    return YoloBox(class_id, x, y, w, h)


@dataclass(frozen=True)
class ParsedLabels:
    boxes: list[YoloBox]
    # Lines that are not a valid box: the file cannot be trusted to hold the image's boxes (prepare leaves
    # the image out).
    invalid: list[LineRejection]
    # Repeats of an earlier box, dropped: nothing is lost (Ultralytics drops them too, with a warning).
    duplicates: list[LineRejection]

    @property
    def rejected(self) -> list[LineRejection]:
        return sorted(self.invalid + self.duplicates, key=lambda rejection: rejection.line)


def parse_label_text(text: str, num_classes: int | None) -> ParsedLabels:
    """Valid boxes and the rejected lines (1-based) with reasons. Blank lines are skipped silently."""
    parsed = ParsedLabels([], [], [])
    seen: dict[YoloBox, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            box = _parse_line(line, num_classes)
        except ValueError as error:
            parsed.invalid.append(LineRejection(number, str(error)))
            continue
        if box in seen:
            parsed.duplicates.append(LineRejection(number, f"duplicate of line {seen[box]}"))
            continue
        seen[box] = number
        parsed.boxes.append(box)
    return parsed


def format_label_text(boxes: list[YoloBox]) -> str:
    return "".join(f"{box.to_line()}\n" for box in boxes)


def yolo_to_pixels(box: YoloBox, width: int, height: int) -> PixelBox:
    return PixelBox(
        box.class_id,
        round(max(box.x_center - box.width / 2, 0.0) * width, 2),
        round(max(box.y_center - box.height / 2, 0.0) * height, 2),
        round(min(box.x_center + box.width / 2, 1.0) * width, 2),
        round(min(box.y_center + box.height / 2, 1.0) * height, 2),
    )


def pixels_to_yolo(box: PixelBox, width: int, height: int) -> YoloBox:
    return YoloBox(
        box.class_id,
        (box.x1 + box.x2) / 2 / width,
        (box.y1 + box.y2) / 2 / height,
        (box.x2 - box.x1) / width,
        (box.y2 - box.y1) / height,
    )


def check_pixel_box(box: PixelBox, width: int, height: int, num_classes: int) -> str | None:
    """Why a box drawn on a width x height image is invalid, or None when it is fine."""
    coords = (box.x1, box.y1, box.x2, box.y2)
    if not all(math.isfinite(c) for c in coords):
        return "coordinates must be finite numbers"
    if not 0 <= box.class_id < num_classes:
        return f"class_id {box.class_id} is out of range (task has {num_classes} classes: 0..{num_classes - 1})"
    if box.x1 >= box.x2 or box.y1 >= box.y2:
        return "x1 must be less than x2 and y1 less than y2"
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        return f"box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) lies outside the {width}x{height} image"
    return None
