"""What segmenters produce: regions, a box plus an optional mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.geometry import Box


@dataclass
class Region:
    """One segmented area of an image. `mask` is a boolean array of the box's size (rows = height) marking
    the pixels inside the outline; None means the whole box."""

    box: Box
    mask: np.ndarray | None = None
    score: float = 1.0
    source: str = "layout"  # which segmenter (or "ocr", "prompt") produced it
