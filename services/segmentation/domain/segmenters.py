"""One interface over the two segmenters: SAM (a configured checkpoint) and the built-in layout segmenter
(non-learned, for UI screenshots). The layout segmenter needs the page's OCR lines; SAM does not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common.geometry import Box, TextLine
from services.segmentation.domain.layout_segmenter import LayoutSegmenter
from services.segmentation.domain.regions import Region
from services.segmentation.domain.sam import SamSegmenter

Point = tuple[float, float]


class Segmenter(Protocol):
    name: str
    needs_text: bool

    def regions(self, image: np.ndarray, lines: Sequence[TextLine]) -> list[Region]: ...

    def at_points(
        self, image: np.ndarray, lines: Sequence[TextLine], points: Sequence[Point], labels: Sequence[int]
    ) -> Region | None: ...

    def in_boxes(
        self, image: np.ndarray, lines: Sequence[TextLine], boxes: Sequence[Box], points: Sequence[Point]
    ) -> list[Region]: ...


class LayoutAdapter:
    needs_text = True

    def __init__(self, segmenter: LayoutSegmenter) -> None:
        self._segmenter = segmenter
        self.name = segmenter.name

    def regions(self, image: np.ndarray, lines: Sequence[TextLine]) -> list[Region]:
        return self._segmenter.regions(image, lines)

    def at_points(
        self, image: np.ndarray, lines: Sequence[TextLine], points: Sequence[Point], labels: Sequence[int]
    ) -> Region | None:
        return self._segmenter.at_points(image, lines, points, labels)

    def in_boxes(
        self, image: np.ndarray, lines: Sequence[TextLine], boxes: Sequence[Box], points: Sequence[Point]
    ) -> list[Region]:
        return self._segmenter.in_boxes(image, boxes)


class SamAdapter:
    needs_text = False

    def __init__(self, segmenter: SamSegmenter, model_type: str) -> None:
        self._segmenter = segmenter
        self.name = f"sam:{model_type}"

    def regions(self, image: np.ndarray, lines: Sequence[TextLine]) -> list[Region]:
        return self._segmenter.regions(image)

    def at_points(
        self, image: np.ndarray, lines: Sequence[TextLine], points: Sequence[Point], labels: Sequence[int]
    ) -> Region | None:
        return self._segmenter.at_points(image, points, labels)

    def in_boxes(
        self, image: np.ndarray, lines: Sequence[TextLine], boxes: Sequence[Box], points: Sequence[Point]
    ) -> list[Region]:
        # Extra points refine a single box (SAM takes points and one box together).
        if points and len(boxes) == 1:
            return self._segmenter.in_boxes(image, boxes, points, [1] * len(points))
        return self._segmenter.in_boxes(image, boxes)


@dataclass(frozen=True)
class Segmenters:
    """What each route uses: `prompts` for predictSam*, `ingest` for /ingest (see the settings)."""

    prompts: Segmenter
    ingest: Segmenter
