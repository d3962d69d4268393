"""Turning segmented regions of a UI screenshot into components: which regions to keep, where OCR found text
that no region covers, what each component looks like as an image, and the background colour of a parent.

Everything here works on boxes, masks and pixels (numpy + Pillow) and knows nothing about the segmenter that
produced the regions, so it serves SAM's automatic masks, prompt masks and OCR boxes alike.

- `filter_regions` is what predictSam2 keeps from automatic masks: SAM proposes slivers, specks, the whole page
  and near-identical copies of one mask; components are none of those.
- `merge_text_regions` adds text lines as components of their own unless a region already is that text (a
  region as big as the text box, or one hardly larger that contains it, such as a button around its label).
- `cut_component` gives the component's picture as base64 PNG: the box crop, or (outline=True) the box with the
  pixels outside the mask made transparent.
- `background_color` is the most common colour of a box, robust to the text and icons drawn on it.

Lists of components are returned in reading order: top to bottom, then left to right.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.geometry import Box
from services.segmentation.domain.regions import Region

_MAX_ASPECT_RATIO = 40  # longer side / shorter side beyond which a box is a line, not a component
_CONTAINMENT_SLACK = 2  # pixels an OCR box may stick out of the region that holds it
_COLOUR_LEVELS_SHIFT = 4  # background colour bins: 256 >> 4 = 16 levels per channel


@dataclass(frozen=True)
class ComponentCut:
    box: Box
    rgb_mean: tuple[int, int, int]
    png_base64: str  # standard base64 of the PNG bytes, no "data:" prefix


def _reading_order(region: Region) -> tuple[int, int, int, int]:
    box = region.box
    return box.y0, box.x0, box.y1, box.x1


def _pixels_in_image(image: np.ndarray, box: Box) -> tuple[Box, np.ndarray]:
    """The part of `box` inside the image, and those pixels."""
    clipped = box.clipped(image.shape[1], image.shape[0])
    if clipped.area == 0:
        raise InvalidArgument(f"box {box} has no area inside the {image.shape[1]}x{image.shape[0]} image")
    return clipped, image[clipped.y0 : clipped.y1, clipped.x0 : clipped.x1]


def cut_component(image: np.ndarray, region: Region, *, outline: bool) -> ComponentCut:
    """The region's picture (RGB image in, PNG out). outline=False: the bounding-box crop, RGB.
    outline=True: the same crop as RGBA, transparent outside the mask (opaque everywhere without a mask).
    rgb_mean is the mean colour of the pixels inside the mask, or of the whole box without one."""
    box, crop = _pixels_in_image(image, region.box)
    mask = None
    if region.mask is not None:
        if region.mask.shape != (region.box.height, region.box.width):
            raise ValueError(f"mask of shape {region.mask.shape} does not match box {region.box}")
        top, left = box.y0 - region.box.y0, box.x0 - region.box.x0
        mask = region.mask[top : top + box.height, left : left + box.width].astype(bool)
    covered = crop[mask] if mask is not None and mask.any() else crop.reshape(-1, 3)
    red, green, blue = (int(channel) for channel in np.rint(covered.mean(axis=0)))
    if outline:
        alpha = np.full(crop.shape[:2], 255, np.uint8) if mask is None else mask.astype(np.uint8) * 255
        picture = Image.fromarray(np.dstack([crop, alpha]))
    else:
        picture = Image.fromarray(np.ascontiguousarray(crop))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    return ComponentCut(box=box, rgb_mean=(red, green, blue), png_base64=base64.b64encode(png.getvalue()).decode())


def filter_regions(
    regions: Sequence[Region],
    width: int,
    height: int,
    *,
    min_side: int = 8,
    min_area: int = 100,
    max_page_fraction: float = 0.85,
    duplicate_iou: float = 0.85,
) -> list[Region]:
    """The regions that can be components of a width x height page, in reading order. Dropped: slivers (a
    side under min_side or an aspect ratio over 40), boxes under min_area pixels, boxes covering more than
    max_page_fraction of the page, and duplicates (box IoU >= duplicate_iou; the higher score, then the larger
    box, stays)."""
    page_limit = max_page_fraction * width * height

    def plausible(box: Box) -> bool:
        short_side, long_side = sorted((box.width, box.height))
        return (
            short_side >= min_side
            and long_side <= _MAX_ASPECT_RATIO * short_side
            and min_area <= box.area <= page_limit
        )

    candidates = sorted(
        (region for region in regions if plausible(region.box)),
        key=lambda region: (-region.score, -region.box.area),
    )
    kept: list[Region] = []
    for region in candidates:
        if all(region.box.iou(other.box) < duplicate_iou for other in kept):
            kept.append(region)
    return sorted(kept, key=_reading_order)


def merge_text_regions(
    regions: Sequence[Region],
    text_boxes: Sequence[Box],
    *,
    covered_iou: float = 0.5,
    contained_fraction: float = 0.2,
) -> list[Region]:
    """The regions plus a Region(source="ocr") for every text box no region already covers, in reading order.
    A region covers a text box if their IoU is at least covered_iou, or if it contains the box and the text
    fills at least contained_fraction of it (a button around its label; a card holding a line of text does
    not cover that line)."""

    def covers(region: Box, text: Box) -> bool:
        if region.iou(text) >= covered_iou:
            return True
        return region.contains(text, slack=_CONTAINMENT_SLACK) and text.area >= contained_fraction * region.area

    uncovered = [
        Region(box=text, mask=None, score=1.0, source="ocr")
        for text in text_boxes
        if not any(covers(region.box, text) for region in regions)
    ]
    return sorted([*regions, *uncovered], key=_reading_order)


def background_color(image: np.ndarray, box: Box) -> tuple[int, int, int]:
    """The dominant colour of the box: colours are binned to 16 levels per channel, and the answer is the mean
    of the pixels in the fullest bin (so anti-aliased text and small icons do not shift it)."""
    _, crop = _pixels_in_image(image, box)
    pixels = crop.reshape(-1, 3)
    levels = (pixels >> _COLOUR_LEVELS_SHIFT).astype(np.int64)
    levels_per_channel = 256 >> _COLOUR_LEVELS_SHIFT
    bins = (levels[:, 0] * levels_per_channel + levels[:, 1]) * levels_per_channel + levels[:, 2]
    fullest = int(np.argmax(np.bincount(bins, minlength=levels_per_channel**3)))
    red, green, blue = (int(channel) for channel in np.rint(pixels[bins == fullest].mean(axis=0)))
    return red, green, blue


def inside(regions: Sequence[Region], box: Box) -> list[Region]:
    """The regions whose box lies within `box` (a box equal to it included), in their given order."""
    return [region for region in regions if box.contains(region.box)]
