"""The OCR service's use cases: predictText over image URLs, and reading the lines of one encoded image."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.envelope import EnvelopeError, Err
from services.common.fetch import FetchPolicy
from services.common.geometry import TextLine
from services.common.image_urls import load_image, load_image_url
from services.ocr.domain.engine import OcrEngine
from services.ocr.domain.text_info import TextLayout, describe_text


@dataclass(frozen=True)
class ReadImage:
    width: int
    height: int
    lines: list[TextLine]


class OcrService:
    def __init__(self, engine: OcrEngine, policy: FetchPolicy, *, max_images: int, max_image_pixels: int) -> None:
        self._engine = engine
        self._policy = policy
        self._max_images = max_images
        self._max_pixels = max_image_pixels

    async def predict_text(self, urls: Sequence[str]) -> dict[str, TextLayout]:
        """Each URL's text layout. Every image is fetched and checked before any is read, so a bad URL fails
        the request quickly; the same URL twice is read once."""
        if not urls:
            raise EnvelopeError(Err.DATA_FORMAT_ERROR, "image_url_list is empty")
        if len(urls) > self._max_images:
            raise EnvelopeError(
                Err.INVALID_PARAMETER, f"image_url_list has {len(urls)} URLs; at most {self._max_images}"
            )
        unique = list(dict.fromkeys(urls))
        images = await asyncio.gather(*(load_image_url(url, self._policy, self._max_pixels) for url in unique))
        layouts = {}
        for url, image in zip(unique, images, strict=True):
            layouts[url] = await asyncio.to_thread(self._layout, image.rgb)
        return layouts

    def _layout(self, rgb: np.ndarray) -> TextLayout:
        return describe_text(rgb, self._engine.read(rgb))

    async def read_text(self, data: bytes) -> ReadImage:
        image = await load_image(data, self._max_pixels)
        lines = await asyncio.to_thread(self._engine.read, image.rgb)
        height, width = image.rgb.shape[:2]
        return ReadImage(width, height, lines)
