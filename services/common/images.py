"""Decoding images that callers send: accepted formats, a pixel limit checked before decoding (decompression
bombs), EXIF orientation, and a readable reason for anything that is not a complete image."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgument

# Pillow's names for the formats we accept (MPO: multi-picture JPEG from cameras; its first image is used).
_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})
_FORMAT_NAMES = "JPEG, PNG, BMP, WebP or TIFF"
# 8-bit Pillow modes that convert to RGB faithfully (32-bit integer or float samples have no agreed range).
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_EXIF_ORIENTATION = 0x0112

# Our own pixel limit is checked from the header before decoding; Pillow's global guard would only
# duplicate it (and refuse above its own fixed limit).
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int


def _rotate_transposed(image: np.ndarray) -> np.ndarray:
    return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)


# EXIF orientation -> the operation that shows the image upright (same as PIL.ImageOps.exif_transpose).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda image: cv2.flip(image, 1),
    3: lambda image: cv2.rotate(image, cv2.ROTATE_180),
    4: lambda image: cv2.flip(image, 0),
    5: cv2.transpose,
    6: lambda image: cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
    7: _rotate_transposed,
    8: lambda image: cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def read_header(data: bytes) -> ImageHeader:
    if not data:
        raise InvalidArgument("empty image: no bytes were sent")
    try:
        with Image.open(io.BytesIO(data)) as image:
            header = ImageHeader(image.format or "", image.width, image.height, _orientation(image))
    except UnidentifiedImageError as error:
        raise InvalidArgument(f"not an image: expected {_FORMAT_NAMES}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidArgument(f"corrupt or truncated image ({error})") from error
    if header.format not in _FORMATS:
        raise InvalidArgument(f"unsupported image format {header.format}: expected {_FORMAT_NAMES}")
    if header.width < 1 or header.height < 1:
        raise InvalidArgument("image has no pixels")
    return header


def _orientation(image: Image.Image) -> int:
    # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after the image data; the PNG
    # specification puts eXIf before it, where Image.open has already read it.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(_EXIF_ORIENTATION, 1)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as displayed (after EXIF orientation, like decode_image), read from the header only."""
    header = read_header(data)
    if header.orientation in (5, 6, 7, 8):
        return header.height, header.width
    return header.width, header.height


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """BGR uint8 HxWx3, upright per EXIF orientation. Grayscale, alpha (dropped), palette and 16-bit images
    become 8-bit BGR. Raises InvalidArgument for anything that is not a complete image of an accepted format
    or that has more than `max_pixels` pixels (checked from the header, before any pixel is decoded)."""
    header = read_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise InvalidArgument(
            f"image is {header.width}x{header.height} ({pixels} pixels), more than the {max_pixels} allowed"
        )
    # OpenCV decodes faster than Pillow and, unlike Pillow, scales 16-bit samples to 8 bits. Orientation is
    # applied below from Pillow's reading of EXIF, because OpenCV ignores it in WebP.
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        image = None
    if image is None:
        image = _decode_with_pillow(data)
    upright = _UPRIGHT.get(header.orientation)
    return upright(image) if upright else image


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """What OpenCV cannot decode: a readable reason when the file is truncated or corrupt, pixels for the
    rare 8-bit variants Pillow reads and OpenCV does not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in _EIGHT_BIT_MODES:
                raise InvalidArgument(f"unsupported pixel format {image.mode}: send 8- or 16-bit images")
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidArgument(f"corrupt or truncated image ({error})") from error
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def require_rgb_image(image: np.ndarray) -> None:
    """Raises InvalidArgument unless `image` is an RGB uint8 array of shape (height, width, 3)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InvalidArgument(f"expected an RGB uint8 image of shape (height, width, 3), got {dtype} {shape}")
