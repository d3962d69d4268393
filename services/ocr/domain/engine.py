"""Text reading for screenshots: RapidOCR (PP-OCR detection + recognition ONNX models, shipped inside the
rapidocr wheel, run on onnxruntime, fully offline) behind a small, thread-safe API that speaks RGB arrays and
`TextLine`s.

Design notes:
- Detection resizes the image so its LONGER side is at most `det_limit_side_len` ("max" limit type). The
  rapidocr default scales the shorter side UP to 736 px, which is slow on screenshots and merges words
  (the spaces between them get lost).
- `RapidOCR.__call__` remembers its use_det/use_cls/use_rec flags between calls, so every call passes all
  three. The engine is not re-entrant, so calls are serialised by one lock; run several `OcrEngine`s for
  parallelism.
- Models load lazily on the first call; `warm_up()` pays that cost up front.
- Boxes are the detector's quads made axis-aligned. They include the detector's padding around the ink
  (about a third of the text height on each side), which keeps descenders and accents inside.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from services.common.geometry import Box, TextLine
from services.common.images import require_rgb_image

# Below this many pixels on a side there is no legible text; rapidocr would upscale noise.
MIN_IMAGE_SIDE = 8


def _quad_to_box(quad: np.ndarray, width: int, height: int) -> Box:
    xs, ys = quad[:, 0], quad[:, 1]
    box = Box(math.floor(xs.min()), math.floor(ys.min()), math.ceil(xs.max()), math.ceil(ys.max()))
    return box.clipped(width, height)


def reading_order(lines: list[TextLine]) -> list[TextLine]:
    """Top-to-bottom rows, left-to-right within a row. A line joins the current row when its vertical centre
    falls inside the row's first line, so labels of different sizes on one row stay in left-to-right order."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda line: (line.box.y0 + line.box.y1) / 2):
        centre_y = (line.box.y0 + line.box.y1) / 2
        if rows and rows[-1][0].box.y0 <= centre_y < rows[-1][0].box.y1:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda line: line.box.x0)]


class OcrEngine:
    """Reads text lines from RGB images with RapidOCR's PP-OCR models (Chinese models, which also read
    English and digits)."""

    def __init__(
        self,
        *,
        det_limit_side_len: int = 960,
        threads: int = 2,
        min_score: float = 0.5,
        use_angle_cls: bool = False,
    ) -> None:
        if det_limit_side_len < 32:
            raise ValueError(f"det_limit_side_len must be at least 32, got {det_limit_side_len}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        from rapidocr import RapidOCR

        # rapidocr ignores thread counts above the CPU count (falling back to "all cores"), so cap instead.
        threads = min(threads, os.cpu_count() or 1)
        self._ocr = RapidOCR(
            params={
                "Det.limit_type": "max",
                "Det.limit_side_len": det_limit_side_len,
                "Global.text_score": min_score,
                # rapidocr logs every call at INFO and "no text found" at WARNING; neither is news to us.
                "Global.log_level": "error",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                # The models run their nodes sequentially, so one inter-op thread is all that is ever used.
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        self._use_angle_cls = use_angle_cls
        self._lock = threading.Lock()

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Text lines in `image` (RGB uint8, height x width x 3), in reading order, with stripped, non-empty
        text and axis-aligned boxes clipped to the image."""
        require_rgb_image(image)
        height, width = image.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            return []
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with self._lock:
            result = self._ocr(bgr, use_det=True, use_cls=self._use_angle_cls, use_rec=True)
        if result.boxes is None or result.txts is None or result.scores is None:
            return []
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
            box = _quad_to_box(np.asarray(quad, dtype=np.float64), width, height)
            if text.strip() and box.area > 0:
                lines.append(TextLine(box=box, text=text.strip(), score=float(score)))
        return reading_order(lines)

    def warm_up(self) -> None:
        """Loads the models (and the angle classifier when enabled) by reading one generated line of text."""
        import cv2

        image = np.full((48, 160, 3), 255, dtype=np.uint8)
        cv2.putText(image, "Warm up", (8, 32), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
        self.read(image)
