"""YOLO detection around a model executed elsewhere (the model server): image decoding, letterboxing into
the model input, and decoding the model output into boxes on the original image.

The model is an Ultralytics YOLOv8/11 detector exported to ONNX: input `images` float32 [batch, 3, S, S]
(RGB, 0..1, letterboxed with pad value 114), output `output0` float32 [batch, 4 + classes, anchors] whose
rows are cx, cy, w, h in input pixels, then one score per class (no objectness). Geometry, thresholds and
NMS follow Ultralytics' own predictor: results equal `YOLO(model.onnx).predict(image, rect=False)` (by
default Ultralytics letterboxes a dynamic-shape model to the smallest rectangle, not to the square the model
server takes). Numpy and OpenCV only: this runs per image (and per video frame) next to the model on a
small CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.errors import InvalidArgument

_PAD_VALUE = 114
# Ultralytics' NMS settings: boxes of class c are shifted by c * _CLASS_OFFSET so that one NMS pass never
# compares boxes of different classes, and at most _MAX_NMS_CANDIDATES (the most confident) enter NMS.
_CLASS_OFFSET = np.float32(7680)
_MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: str
    confidence: float
    # Original-image pixels.
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Letterbox:
    """How an original image was mapped into the model input: resized by `scale` (each side rounded to whole
    pixels), then placed at (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original image size
    height: int

    @property
    def resized_width(self) -> int:
        return _resized_side(self.width, self.scale)

    @property
    def resized_height(self) -> int:
        return _resized_side(self.height, self.scale)


def _resized_side(length: int, scale: float) -> int:
    return max(round(length * scale), 1)  # thin images keep at least one pixel


def letterbox(image: np.ndarray, size: int, stride: int = 0) -> tuple[np.ndarray, Letterbox]:
    """The model input for a BGR uint8 image: float32 (3, H, W) RGB in 0..1, contiguous. Geometry and pixels as
    Ultralytics' LetterBox(center=True): aspect kept, centred, padded with 114. stride 0 gives the square
    size x size (auto=False); a stride gives the smallest rectangle whose sides are multiples of it, the longer
    side `size` (auto=True, what Ultralytics' predict does): fewer pixels for the model to compute."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    resized_width, resized_height = _resized_side(width, scale), _resized_side(height, scale)
    input_width, input_height = size, size
    if stride:
        input_width = resized_width + (size - resized_width) % stride
        input_height = resized_height + (size - resized_height) % stride
    half_pad_x, half_pad_y = (input_width - resized_width) / 2, (input_height - resized_height) / 2
    # Ultralytics' rounding: an odd padding puts the extra pixel at the bottom/right.
    top, bottom = round(half_pad_y - 0.1), round(half_pad_y + 0.1)
    left, right = round(half_pad_x - 0.1), round(half_pad_x + 0.1)
    if (width, height) != (resized_width, resized_height):
        # Resized as uint8, like Ultralytics: OpenCV's fixed-point uint8 resize differs from a float one.
        image = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(_PAD_VALUE,) * 3)
    tensor = np.empty((3, input_height, input_width), np.float32)
    # Plane by plane (B, G, R reversed into R, G, B): faster than a strided HWC->CHW copy.
    for channel, plane in enumerate(reversed(cv2.split(padded))):
        np.divide(plane, 255, out=tensor[channel], dtype=np.float32)
    return tensor, Letterbox(scale, float(left), float(top), width, height)


def postprocess(
    output: np.ndarray,
    box: Letterbox,
    classes: Sequence[str],
    conf: float,
    iou: float,
    *,
    max_detections: int = 300,
) -> list[Detection]:
    """Detections from one image's model output (4 + classes, anchors), most confident first: the best class
    per anchor, kept above `conf`, class-aware NMS at `iou`, at most `max_detections`, in original pixels."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 2 or output.shape[0] < 5:
        raise ValueError(f"expected one image's model output (4 + classes, anchors), got shape {output.shape}")
    scores = output[4:]
    best_scores = scores.max(axis=0)
    candidates = np.flatnonzero(best_scores > conf)
    if candidates.size > _MAX_NMS_CANDIDATES:
        candidates = candidates[np.argsort(-best_scores[candidates], kind="stable")[:_MAX_NMS_CANDIDATES]]
    confidences = best_scores[candidates]
    class_ids = scores[:, candidates].argmax(axis=0)
    centres = output[:2, candidates].T
    half_sizes = output[2:4, candidates].T / 2
    corners = np.concatenate((centres - half_sizes, centres + half_sizes), axis=1)  # x1, y1, x2, y2

    offsets = class_ids.astype(np.float32)[:, np.newaxis] * _CLASS_OFFSET  # float32 throughout, as Ultralytics
    kept = _nms(corners + offsets, confidences, iou, max_detections)
    corners, confidences, class_ids = corners[kept], confidences[kept], class_ids[kept]

    # Back to the original image, with Ultralytics' per-axis gains (each resized side was rounded).
    corners -= np.array([box.pad_x, box.pad_y, box.pad_x, box.pad_y], np.float32)
    corners /= np.array([box.resized_width / box.width, box.resized_height / box.height] * 2, np.float32)
    np.clip(corners[:, 0::2], 0, box.width, out=corners[:, 0::2])
    np.clip(corners[:, 1::2], 0, box.height, out=corners[:, 1::2])
    return [
        Detection(
            class_id=class_id,
            class_name=classes[class_id] if class_id < len(classes) else str(class_id),
            confidence=confidence,
            x1=x1,
            y1=y1,
            x2=x2,
            y2=y2,
        )
        for class_id, confidence, (x1, y1, x2, y2) in zip(
            class_ids.tolist(), confidences.tolist(), corners.tolist(), strict=True
        )
    ]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, by descending score, at most `limit` (later ones would be cut
    anyway). torchvision.ops.nms semantics, which Ultralytics uses: stable descending order, a box is dropped
    when its IoU with a kept one is above the threshold."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T
    areas = (x2 - x1) * (y2 - y1)
    remaining = np.arange(order.size)
    kept: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: 0/0 is NaN, not "above"
        while remaining.size and len(kept) < limit:
            current, rest = remaining[0], remaining[1:]
            kept.append(current)
            widths = np.minimum(x2[current], x2[rest]) - np.maximum(x1[current], x1[rest])
            heights = np.minimum(y2[current], y2[rest]) - np.maximum(y1[current], y1[rest])
            intersections = np.maximum(widths, 0) * np.maximum(heights, 0)
            ious = intersections / (areas[current] + areas[rest] - intersections)
            remaining = rest[~(ious > iou_threshold)]
    return order[np.array(kept, dtype=np.intp)]


# Ultralytics' palette (BGR), so annotated images look like the ones users know from `yolo predict`.
_PALETTE_RGB = bytes.fromhex(
    "042AFF 0BDBEB F3F3F3 00DFB7 111F68 FF6FDD FF444F CCED00 00F344 BD00FF "
    "00B4FF DD00BA 00FFFF 26C000 01FFB3 7D24FF 7B0068 FF1B6C FC6D2F A2FF0B"
)
_PALETTE = tuple((_PALETTE_RGB[i + 2], _PALETTE_RGB[i + 1], _PALETTE_RGB[i]) for i in range(0, len(_PALETTE_RGB), 3))
_DARK_TEXT, _LIGHT_TEXT = (40, 40, 40), (255, 255, 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    blue, green, red = background
    return _DARK_TEXT if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else _LIGHT_TEXT


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """A copy of the BGR image with each detection's box and a "name 0.87" label, one colour per class."""
    canvas = image.copy()
    height, width = canvas.shape[:2]
    line_width = max(round((height + width) / 2 * 0.003), 2)  # Ultralytics' default
    font_scale, font_thickness = line_width / 3, max(line_width - 1, 1)
    for detection in detections:
        colour = _PALETTE[detection.class_id % len(_PALETTE)]
        x1, y1 = int(detection.x1), int(detection.y1)
        cv2.rectangle(canvas, (x1, y1), (int(detection.x2), int(detection.y2)), colour, line_width, cv2.LINE_AA)
        label = f"{detection.class_name} {detection.confidence:.2f}"
        (text_width, text_height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        text_height += 3
        # Above the box when there is room, else inside it; shifted left rather than cut at the right edge.
        left = max(min(x1, width - text_width), 0)
        top = y1 - text_height if y1 >= text_height else min(y1, max(height - text_height, 0))
        cv2.rectangle(canvas, (left, top), (left + text_width, top + text_height), colour, -1, cv2.LINE_AA)
        cv2.putText(
            canvas,
            label,
            (left, top + text_height - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _text_colour(colour),
            font_thickness,
            cv2.LINE_AA,
        )
    return canvas


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as JPEG")
    return encoded.tobytes()


def check_thresholds(conf: float, iou: float) -> None:
    if not 0 <= conf <= 1:
        raise InvalidArgument(f"conf must be between 0 and 1, got {conf}")
    if not 0 < iou <= 1:
        raise InvalidArgument(f"iou must be greater than 0 and at most 1, got {iou}")
