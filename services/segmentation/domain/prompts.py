"""Prompts of the predictSam routes, checked before any work: malformed -> err 806 (data format error), well
formed but outside the image -> err 807 (invalid parameter). Inputs are the decoded JSON values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.envelope import EnvelopeError, Err
from services.common.geometry import Box

Point = tuple[float, float]
_MAX_POINTS = 256
_MAX_BOXES = 64


@dataclass(frozen=True)
class Prompt:
    points: list[Point]
    labels: list[int]
    boxes: list[Box]

    @property
    def empty(self) -> bool:
        return not self.points and not self.boxes


def _malformed(detail: str) -> EnvelopeError:
    return EnvelopeError(Err.DATA_FORMAT_ERROR, detail)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed(f"{where} must be a number, got {value!r}")
    return float(value)


def parse_points(raw: Sequence[Any], where: str) -> list[Point]:
    if len(raw) > _MAX_POINTS:
        raise _malformed(f"{where} has {len(raw)} points; at most {_MAX_POINTS}")
    points = []
    for index, point in enumerate(raw):
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise _malformed(f"{where}[{index}] must be [x, y], got {point!r}")
        points.append((_number(point[0], f"{where}[{index}][0]"), _number(point[1], f"{where}[{index}][1]")))
    return points


def parse_box(raw: Sequence[Any], where: str) -> Box:
    if len(raw) != 4:
        raise _malformed(f"{where} must be [x0, y0, x1, y1], got {list(raw)!r}")
    x0, y0, x1, y1 = (_number(value, f"{where}[{index}]") for index, value in enumerate(raw))
    if x1 <= x0 or y1 <= y0:
        raise _malformed(f"{where} must have x0 < x1 and y0 < y1, got {list(raw)!r}")
    return Box(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))


def parse_boxes(raw: Sequence[Any], where: str) -> list[Box]:
    """[] (none), one box [x0, y0, x1, y1], or several [[x0, y0, x1, y1], ...]."""
    if not raw:
        return []
    if all(isinstance(value, list | tuple) for value in raw):
        if len(raw) > _MAX_BOXES:
            raise _malformed(f"{where} has {len(raw)} boxes; at most {_MAX_BOXES}")
        return [parse_box(box, f"{where}[{index}]") for index, box in enumerate(raw)]
    return [parse_box(raw, where)]


def parse_prompt(input_point: Sequence[Any], input_label: Sequence[int], input_box: Sequence[Any]) -> Prompt:
    points = parse_points(input_point, "prompt.input_point")
    labels = list(input_label)
    if len(labels) != len(points):
        raise _malformed(f"prompt.input_label has {len(labels)} labels for {len(points)} points")
    if any(label not in (0, 1) for label in labels):
        raise _malformed("prompt.input_label values must be 1 (include) or 0 (exclude)")
    if points and not any(labels):
        raise _malformed("prompt.input_label needs at least one 1 (a point on the component)")
    return Prompt(points, labels, parse_boxes(input_box, "prompt.input_box"))


def check_inside(prompt: Prompt, width: int, height: int) -> None:
    """Points must lie on the image and boxes must overlap it (err 807 otherwise)."""
    for x, y in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise EnvelopeError(Err.INVALID_PARAMETER, f"point [{x:g}, {y:g}] is outside the {width}x{height} image")
    for box in prompt.boxes:
        check_box_inside(box, width, height)


def check_box_inside(box: Box, width: int, height: int) -> Box:
    clipped = box.clipped(width, height)
    if clipped.area == 0:
        detail = f"box [{box.x0}, {box.y0}, {box.x1}, {box.y1}] is outside the {width}x{height} image"
        raise EnvelopeError(Err.INVALID_PARAMETER, detail)
    return clipped


def lasso_box(points: Sequence[Point]) -> Box:
    """predictSam3's points2Box: the smallest box around the lasso."""
    if len(points) < 2:
        raise _malformed(f"points must hold at least 2 points of the lasso, got {len(points)}")
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    if max(xs) - min(xs) < 1 or max(ys) - min(ys) < 1:
        raise _malformed("the lasso's points enclose no area")
    return Box(math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))
