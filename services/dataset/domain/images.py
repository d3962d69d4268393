"""Image validation: a real decode (truncation and corruption show up), format and size limits."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP"})
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Our own pixel limit is checked before decoding; Pillow's global guard would only duplicate it.
Image.MAX_IMAGE_PIXELS = None


class InvalidImage(ValueError):
    pass


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int  # as displayed, i.e. after EXIF rotation (what YOLO labels and pixel boxes refer to)
    height: int


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Decode `data` fully enough to catch truncation; raise InvalidImage with a reason otherwise."""
    if not data:
        raise InvalidImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ALLOWED_FORMATS:
                    raise InvalidImage(f"unsupported image format {image.format}")
                width, height = image.size
                if width < 1 or height < 1:
                    raise InvalidImage("image has no pixels")
                if max_pixels and width * height > max_pixels:
                    raise InvalidImage(
                        f"{width}x{height} pixels exceeds the {max_pixels} pixel limit (decompression bomb?)"
                    )
                if image.format in ("JPEG", "MPO"):
                    # Decoding at 1/8 scale still reads every entropy-coded byte: truncation is caught at a
                    # fraction of the cost of a full decode.
                    image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
                image.load()
                orientation = image.getexif().get(_EXIF_ORIENTATION)
    except InvalidImage:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        EOFError,
    ) as error:
        raise InvalidImage(f"not a readable image ({error})") from error
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(image.format, width, height)
