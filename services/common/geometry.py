"""Pixel geometry shared by the services that find things in images: boxes, and text lines found by OCR."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """A pixel rectangle; x1 and y1 are exclusive, so width = x1 - x0."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def intersection(self, other: Box) -> int:
        width = min(self.x1, other.x1) - max(self.x0, other.x0)
        height = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(0, width) * max(0, height)

    def iou(self, other: Box) -> float:
        shared = self.intersection(other)
        union = self.area + other.area - shared
        return shared / union if union else 0.0

    def contains(self, other: Box, slack: int = 0) -> bool:
        return (
            self.x0 - slack <= other.x0
            and self.y0 - slack <= other.y0
            and other.x1 <= self.x1 + slack
            and other.y1 <= self.y1 + slack
        )

    def contains_point(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def clipped(self, width: int, height: int) -> Box:
        return Box(
            min(max(self.x0, 0), width), min(max(self.y0, 0), height),
            min(max(self.x1, 0), width), min(max(self.y1, 0), height),
        )  # fmt: skip


@dataclass(frozen=True)
class TextLine:
    """A line of text found by OCR, with its axis-aligned box in image pixels."""

    box: Box
    text: str
    score: float
