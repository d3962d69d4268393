"""The one image decoder of the mesh. Every route that takes an image goes through it (dataset prepare, the
/infer uploads and DetectStream frames, document 002's samples, document 004's uploads and image URLs, OCR), so
they all accept the same formats, refuse the same broken files in the same words and see the same pixels:

- formats: JPEG (and MPO, a camera's multi-picture JPEG: its first picture), PNG, BMP and WebP, the ones the
  documents name and every browser shows (the routes serve images back);
- a pixel limit checked from the header, before any pixel is decoded (decompression bombs);
- every byte decoded, so that truncated and corrupt files are refused rather than half grey;
- EXIF orientation applied: sizes and pixels are the image as displayed.

Pillow decodes: unlike OpenCV, it refuses a JPEG whose entropy-coded data is damaged instead of decoding the
garbage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgument

# Pillow's names for the accepted formats.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP"})
_ACCEPTED_NAMES = "JPEG, PNG, BMP or WebP"
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the operation that shows the image upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS = frozenset({5, 6, 7, 8})
# What Pillow raises for data it cannot parse or that ends early.
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)

# Our own pixel limit is checked from the header before decoding; Pillow's global guard would only
# duplicate it (and refuse above its own fixed limit).
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageHeader:
    format: str  # Pillow's name, one of ACCEPTED_FORMATS
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int  # EXIF orientation, 1 (upright) to 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, after EXIF orientation: what pixel boxes and YOLO labels refer to."""
        return (self.height, self.width) if self.orientation in _SIDEWAYS else (self.width, self.height)


def read_header(data: bytes) -> ImageHeader:
    """The header only (no pixel is decoded); InvalidArgument unless it is an image of an accepted format."""
    if not data:
        raise InvalidArgument("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            header = ImageHeader(image.format or "", image.width, image.height, _orientation(image))
    except UnidentifiedImageError as error:
        raise InvalidArgument(f"not a readable image: not an image in {_ACCEPTED_NAMES} format") from error
    except _UNREADABLE as error:
        raise InvalidArgument(f"not a readable image: corrupt or truncated ({error})") from error
    if header.format not in ACCEPTED_FORMATS:
        raise InvalidArgument(f"unsupported image format {header.format}: send {_ACCEPTED_NAMES}")
    if header.width < 1 or header.height < 1:
        raise InvalidArgument("image has no pixels")
    return header


def _orientation(image: Image.Image) -> int:
    # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after the image data; the PNG
    # specification puts eXIf before it, where Image.open has already read it.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    return orientation if orientation in _UPRIGHT else 1


def check_pixels(header: ImageHeader, max_pixels: int) -> None:
    """InvalidArgument when the image has more than `max_pixels` pixels (0 = no limit)."""
    pixels = header.width * header.height
    if max_pixels and pixels > max_pixels:
        raise InvalidArgument(
            f"image is {header.width}x{header.height} ({pixels} pixels), more than the {max_pixels} pixel limit"
        )


def verify_image(data: bytes, max_pixels: int) -> ImageHeader:
    """What decode_image checks, without keeping the pixels: for a caller that stores the file as it came.
    A JPEG is decoded at 1/8 scale, which still reads every byte of its compressed data (truncation and
    corruption show up) at a fraction of the cost."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    with Image.open(io.BytesIO(data)) as image:
        if header.format in ("JPEG", "MPO"):
            image.draft("RGB", (max(header.width // 8, 1), max(header.height // 8, 1)))
        _load(image)
    return header


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """BGR uint8 HxWx3 (OpenCV's layout), upright; otherwise as decode_image_rgb."""
    return cv2.cvtColor(_upright_rgb(data, max_pixels), cv2.COLOR_RGB2BGR)


def decode_image_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 HxWx3, upright per EXIF orientation. Grayscale, alpha (dropped), palette and 16-bit images
    become 8-bit RGB. Raises InvalidArgument for anything that is not a complete image of an accepted format
    or that has more than `max_pixels` pixels (checked from the header, before any pixel is decoded)."""
    return _upright_rgb(data, max_pixels).copy()


def _upright_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """The pixels as a read-only view of Pillow's buffer (the callers copy them once, as they need)."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    with Image.open(io.BytesIO(data)) as stored:
        _load(stored)
        rgb = _as_rgb(stored)
        upright = _UPRIGHT.get(header.orientation)
        return np.asarray(rgb if upright is None else rgb.transpose(upright))


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit grayscale PNG: its top 8 bits, as Pillow reads 16-bit colour
        return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except _UNREADABLE as error:
        raise InvalidArgument(f"not a readable image: corrupt or truncated ({error})") from error


def require_rgb_image(image: np.ndarray) -> None:
    """Raises InvalidArgument unless `image` is an RGB uint8 array of shape (height, width, 3)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InvalidArgument(f"expected an RGB uint8 image of shape (height, width, 3), got {dtype} {shape}")
