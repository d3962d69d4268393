"""Generated inputs for the inference tests: images and videos of red squares (class 0) and blue circles
(class 1) drawn like the shapes model's training data, with the ground truth of every image / frame."""

from __future__ import annotations

import io
import random
from pathlib import Path

import cv2
import numpy as np

from synthetic import datagen

# RGB colours of datagen.draw_image; the shapes model was trained on exactly these.
_RGB = {0: (200, 30, 30), 1: (30, 30, 200)}


def non_overlapping_shapes(
    width: int, height: int, rng: random.Random, count: int = 2, attempts: int = 200
) -> list[datagen.Shape]:
    """Up to `count` shapes 1/5..1/2.5 of the shorter side, pairwise apart by a few pixels (so each is
    its own object for the detector). Both classes appear when count >= 2."""
    side = min(width, height)
    shapes: list[datagen.Shape] = []
    for _ in range(attempts):
        if len(shapes) == count:
            break
        size = rng.randint(side // 5, int(side / 2.5))
        x, y = rng.randint(0, width - size), rng.randint(0, height - size)
        candidate = datagen.Shape(len(shapes) % 2 if count >= 2 else rng.randint(0, 1), x, y, x + size, y + size)
        if all(_apart(candidate, other, gap=6) for other in shapes):
            shapes.append(candidate)
    return shapes


def _apart(a: datagen.Shape, b: datagen.Shape, gap: int) -> bool:
    return a.x2 + gap <= b.x1 or b.x2 + gap <= a.x1 or a.y2 + gap <= b.y1 or b.y2 + gap <= a.y1


def shapes_image(
    width: int, height: int, seed: int, ext: str = "jpg", count: int = 2
) -> tuple[bytes, list[datagen.Shape]]:
    """An encoded image (jpg/png/bmp/webp) of `count` non-overlapping shapes, and those shapes in pixels."""
    rng = random.Random(seed)
    shapes = non_overlapping_shapes(width, height, rng, count)
    return datagen.draw_image(width, height, shapes, ext, seed=seed), shapes


def draw_frame(width: int, height: int, shapes: list[datagen.Shape], background: tuple[int, int, int]) -> np.ndarray:
    """A BGR frame (as cv2 wants it) of the shapes on a plain background (RGB)."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = background[::-1]
    for shape in shapes:
        colour = _RGB[shape.class_id][::-1]
        if shape.class_id == 0:
            cv2.rectangle(frame, (shape.x1, shape.y1), (shape.x2 - 1, shape.y2 - 1), colour, thickness=-1)
        else:
            centre = ((shape.x1 + shape.x2 - 1) // 2, (shape.y1 + shape.y2 - 1) // 2)
            axes = ((shape.x2 - shape.x1) // 2, (shape.y2 - shape.y1) // 2)
            cv2.ellipse(frame, centre, axes, 0, 0, 360, colour, thickness=-1)
    return frame


def shapes_frames(frames: int, size: tuple[int, int]) -> list[list[datagen.Shape]]:
    """Ground truth of a moving-shapes clip: a red square sliding left to right along the top half and a
    blue circle sliding right to left along the bottom half, each 1/3 of the shorter side."""
    width, height = size
    side = min(width, height) // 3
    truth = []
    for index in range(frames):
        t = index / max(frames - 1, 1)
        sx = round(4 + t * (width - side - 8))
        cx = round(width - side - 4 - t * (width - side - 8))
        square = datagen.Shape(0, sx, height // 4 - side // 2, sx + side, height // 4 - side // 2 + side)
        cy = 3 * height // 4 - side // 2
        circle = datagen.Shape(1, cx, cy, cx + side, cy + side)
        truth.append([square, circle])
    return truth


def shapes_video(
    path: Path | str, frames: int, size: tuple[int, int], fps: float, fourcc: str = "mp4v"
) -> list[list[datagen.Shape]]:
    """Write a clip of `frames` frames of `size` (width, height) with cv2.VideoWriter and the given
    FOURCC (mp4v for .mp4, MJPG for .avi, ...); return the shapes drawn on each frame."""
    width, height = size
    truth = shapes_frames(frames, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with {fourcc}")
    try:
        for shapes in truth:
            writer.write(draw_frame(width, height, shapes, (235, 235, 220)))
    finally:
        writer.release()
    return truth


def video_bytes(path: Path, frames: int, size: tuple[int, int], *, fps: float = 15, fourcc: str = "mp4v") -> bytes:
    """Write the moving-shapes clip to `path` and return its bytes."""
    shapes_video(path, frames, size, fps, fourcc)
    return path.read_bytes()


def audio_only_m4a(seconds: float = 1.0) -> bytes:
    """An .m4a file (MP4 container) holding only an AAC audio track: no video stream."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"  # type: ignore[attr-defined]
        samples = int(44100 * seconds)
        tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / 44100) * 0.3).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def shape_box(shape: datagen.Shape) -> tuple[float, float, float, float]:
    return (float(shape.x1), float(shape.y1), float(shape.x2), float(shape.y2))
