"""Data made on the spot for tests and benchmarks: images with known objects, YOLO labels, dataset ZIPs in the layouts
people actually upload, and deliberately broken inputs."""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass

from PIL import Image, ImageDraw

CLASSES = ("square", "circle")
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}


@dataclass(frozen=True)
class Shape:
    class_id: int
    x1: int
    y1: int
    x2: int
    y2: int

    def yolo_line(self, width: int, height: int) -> str:
        xc, yc = (self.x1 + self.x2) / 2 / width, (self.y1 + self.y2) / 2 / height
        w, h = (self.x2 - self.x1) / width, (self.y2 - self.y1) / height
        return f"{self.class_id} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}"


def draw_image(width: int, height: int, shapes: list[Shape], ext: str = "jpg", seed: int = 0) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randint(180, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        colour = (200, 30, 30) if shape.class_id == 0 else (30, 30, 200)
        box = [shape.x1, shape.y1, shape.x2 - 1, shape.y2 - 1]
        draw.rectangle(box, fill=colour) if shape.class_id == 0 else draw.ellipse(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[ext])
    return buffer.getvalue()


def random_shapes(width: int, height: int, rng: random.Random, count: int = 2) -> list[Shape]:
    shapes = []
    for _ in range(count):
        size = rng.randint(min(width, height) // 5, min(width, height) // 2)
        x, y = rng.randint(0, width - size), rng.randint(0, height - size)
        shapes.append(Shape(rng.randint(0, 1), x, y, x + size, y + size))
    return shapes


def dataset_members(
    *,
    count: int = 10,
    layout: str = "flat",
    ext: str = "jpg",
    size: tuple[int, int] = (96, 64),
    root: str = "",
    names_file: str = "classes.txt",
    labels: bool = True,
    seed: int = 0,
) -> dict[str, bytes]:
    """Members of a dataset ZIP.

    layout: flat (images/ + labels/), presplit (images/{train,val}/ + labels/{train,val}/),
    roboflow ({train,valid}/{images,labels}/), side_by_side (x.jpg next to x.txt).
    names_file: classes.txt, data.yaml or "" (no class names).
    """
    rng = random.Random(seed)
    width, height = size
    members: dict[str, bytes] = {}
    for index in range(count):
        stem = f"img{index:03d}"
        split = "val" if index % 5 == 4 else "train"
        image_dir, label_dir = {
            "flat": ("images", "labels"),
            "presplit": (f"images/{split}", f"labels/{split}"),
            "roboflow": (
                f"{'valid' if split == 'val' else 'train'}/images",
                f"{'valid' if split == 'val' else 'train'}/labels",
            ),
            "side_by_side": ("", ""),
        }[layout]
        shapes = random_shapes(width, height, rng)
        members[_join(root, image_dir, f"{stem}.{ext}")] = draw_image(width, height, shapes, ext, seed=index)
        if labels:
            text = "\n".join(shape.yolo_line(width, height) for shape in shapes) + "\n"
            members[_join(root, label_dir, f"{stem}.txt")] = text.encode()
    if names_file == "classes.txt":
        members[_join(root, "", "classes.txt")] = "\n".join(CLASSES).encode()
    elif names_file == "data.yaml":
        members[_join(root, "", "data.yaml")] = (
            b"train: images/train\nval: images/val\nnc: 2\nnames: ['square', 'circle']\n"
        )
    return members


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dataset_zip(**kwargs: object) -> bytes:
    return zip_bytes(dataset_members(**kwargs))  # type: ignore[arg-type]


def zip_with_unsafe_entry(name: str) -> bytes:
    """A dataset ZIP with one entry stored under `name` as is (e.g. "../../evil.txt", "/tmp/evil.txt")."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/ok.jpg", draw_image(32, 32, []))
        archive.writestr(zipfile.ZipInfo(name), b"owned")
    return buffer.getvalue()


def zip_bomb(expanded_mb: int = 300) -> bytes:
    """A small ZIP whose one entry expands ~1000x."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images/ok.jpg", draw_image(32, 32, []))
        with archive.open("images/bomb.bmp", "w", force_zip64=True) as entry:
            block = b"\0" * (1024 * 1024)
            for _ in range(expanded_mb):
                entry.write(block)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = draw_image(256, 256, [Shape(0, 10, 10, 200, 200)], seed=3)
    return data[: len(data) // 2]


def decompression_bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (10 gigapixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
