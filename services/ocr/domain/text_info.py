"""What predictText reports about each line of text the OCR engine read: where the text is, its colour, the
colour behind it, its line height, and one alignment for the whole image.

Per line, inside the OCR box (which the detector pads by roughly a third of the text height per side):
- background colour: the dominant colour of the box's pixels. Colours are quantised to 16 levels per
  channel, the most common bin wins, and the colour reported is the most common exact colour in that bin
  (exact on flat UI fills; the bin absorbs JPEG noise). On UI screenshots the fill behind the text (a
  button, a banner, the page) covers most of the box, anti-aliased glyph edges spread over many bins, so
  the fill wins.
- ink: the pixels farther than INK_DISTANCE (RGB Euclidean) from the background colour, minus the connected
  blobs that touch a side of the box lying inside the image. The detector's padding keeps glyphs off the box
  sides, so such blobs belong to neighbours: a button's border, a fill that ends inside the box, a clipped
  piece of the next line. When nothing else is left (a glyph touching the box), all far pixels count as ink.
- box: the bounding box of the ink, i.e. where the glyphs are; the OCR box when there is no ink.
- text colour: the dominant colour (same quantise-and-mode rule) of the ink's cores, the ink pixels at least
  CORE_INK_FRACTION x the CORE_PERCENTILE-th percentile of the ink's distances from the background:
  anti-aliased and chroma-subsampled stroke edges are blends of text and background and would otherwise
  win on small text. Black or white, whichever contrasts more with the background, when there is no ink.

Over all lines:
- paragraphs: lines stacked vertically (the next line starts at most PARAGRAPH_GAP x the taller line's
  height below the previous one, and at most a quarter of it above), overlapping horizontally, with
  heights within a factor of PARAGRAPH_HEIGHT_RATIO. Each line joins the nearest paragraph it continues.
- line height: in a paragraph of 2+ lines, the median distance between consecutive lines' tops. A line
  alone has no neighbour to measure against, so it gets round(1.2 x its ink height), the CSS "normal" line
  height for a font whose glyphs fill the em box (as CJK glyphs do).
- align: for each paragraph of 2+ lines, the spread (max - min) of its lines' left edges, centres and right
  edges, summed over paragraphs. The smallest sum wins. Sums within ALIGN_TIE_TOLERANCE x the median line
  height x the number of paragraphs of the smallest are ties (glyph side bearings move edges by a pixel
  or two), resolved left, then center, then right: a block of equally long lines is left-aligned as far as
  anyone can tell. With no multi-line paragraph: "left".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from services.common.errors import InvalidArgument
from services.common.geometry import Box, TextLine
from services.common.images import require_rgb_image

Color = tuple[int, int, int]

INK_DISTANCE = 64.0
CORE_INK_FRACTION = 0.95
CORE_PERCENTILE = 99
PARAGRAPH_GAP = 1.2
PARAGRAPH_HEIGHT_RATIO = 0.7
SINGLE_LINE_HEIGHT_FACTOR = 1.2
ALIGN_TIE_TOLERANCE = 0.25

_ALIGN_EDGES: dict[str, Callable[[Box], float]] = {
    "left": lambda box: box.x0,
    "center": lambda box: (box.x0 + box.x1) / 2,
    "right": lambda box: box.x1,
}


@dataclass(frozen=True)
class TextEntry:
    """One line as predictText reports it. `box` is the extent of the glyphs."""

    box: Box
    msg: str
    background_color: Color
    color: Color
    line_height: int

    def to_payload(self) -> dict[str, Any]:
        return {
            "left_top_coord": [self.box.x0, self.box.y0],
            "width": self.box.width,
            "height": self.box.height,
            "msg": self.msg,
            "backgroundColor": list(self.background_color),
            "color": list(self.color),
            "line_height": self.line_height,
        }


@dataclass(frozen=True)
class TextLayout:
    """All lines of one image; `align` is None when there is no text."""

    entries: list[TextEntry]
    align: str | None

    def to_payload(self) -> list[dict[str, Any]]:
        """The API's list for one image: one dict per line, then {"align": ...} unless there is no text."""
        payload = [entry.to_payload() for entry in self.entries]
        if self.align is not None:
            payload.append({"align": self.align})
        return payload


@dataclass(frozen=True)
class _Colors:
    box: Box
    background: Color
    text: Color


def describe_text(image: np.ndarray, lines: Sequence[TextLine]) -> TextLayout:
    """Colours, glyph boxes, line heights and alignment for `lines` read from `image` (RGB uint8 HxWx3).
    Entries keep the order of `lines`."""
    require_rgb_image(image)
    if not lines:
        return TextLayout(entries=[], align=None)
    colors = [_line_colors(image, line.box) for line in lines]
    boxes = [c.box for c in colors]
    paragraphs = _paragraphs(boxes)
    line_heights = _line_heights(boxes, paragraphs)
    entries = [
        TextEntry(box=c.box, msg=line.text, background_color=c.background, color=c.text, line_height=height)
        for line, c, height in zip(lines, colors, line_heights, strict=True)
    ]
    return TextLayout(entries=entries, align=_alignment(boxes, paragraphs))


def _dominant_color(pixels: np.ndarray) -> Color:
    """The most common exact colour within the most common 16-levels-per-channel bin of `pixels` (N x 3)."""
    bins = (pixels >> 4).astype(np.int32)
    bin_codes = (bins[:, 0] << 8) | (bins[:, 1] << 4) | bins[:, 2]
    members = pixels[bin_codes == np.bincount(bin_codes).argmax()].astype(np.int32)
    colors, counts = np.unique((members[:, 0] << 16) | (members[:, 1] << 8) | members[:, 2], return_counts=True)
    code = int(colors[counts.argmax()])
    return code >> 16, (code >> 8) & 0xFF, code & 0xFF


def _contrasting(color: Color) -> Color:
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance >= 128 else (255, 255, 255)


def _line_colors(image: np.ndarray, ocr_box: Box) -> _Colors:
    height, width = image.shape[:2]
    box = ocr_box.clipped(width, height)
    if box.area == 0:
        raise InvalidArgument(f"text box {ocr_box} lies outside the {width}x{height} image")
    pixels = image[box.y0 : box.y1, box.x0 : box.x1]
    background = _dominant_color(pixels.reshape(-1, 3))
    distance = np.linalg.norm(pixels.astype(np.float32) - np.array(background, np.float32), axis=2)
    ink = _drop_blobs_on_inner_sides(distance > INK_DISTANCE, box, width, height)
    if not ink.any():
        return _Colors(box=box, background=background, text=_contrasting(background))
    rows, cols = np.nonzero(ink)
    left, top = box.x0 + int(cols.min()), box.y0 + int(rows.min())
    glyphs = Box(left, top, box.x0 + int(cols.max()) + 1, box.y0 + int(rows.max()) + 1)
    # The glyphs' cores: anti-aliasing and JPEG chroma subsampling blend thin strokes with the background.
    core = ink & (distance >= CORE_INK_FRACTION * np.percentile(distance[ink], CORE_PERCENTILE))
    return _Colors(box=glyphs, background=background, text=_dominant_color(pixels[core]))


def _drop_blobs_on_inner_sides(ink: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """`ink` without the 8-connected blobs touching a box side that is not the image border; all of `ink`
    if that would leave nothing."""
    count, labels = cv2.connectedComponents(ink.astype(np.uint8), connectivity=8)
    inner_sides = []
    if box.x0 > 0:
        inner_sides.append(labels[:, 0])
    if box.y0 > 0:
        inner_sides.append(labels[0, :])
    if box.x1 < width:
        inner_sides.append(labels[:, -1])
    if box.y1 < height:
        inner_sides.append(labels[-1, :])
    if count <= 1 or not inner_sides:
        return ink
    touching = np.unique(np.concatenate(inner_sides))
    glyphs = ink & ~np.isin(labels, touching[touching > 0])
    return glyphs if glyphs.any() else ink


def _continues(above: Box, below: Box) -> bool:
    """Whether `below` can be the next line of a paragraph whose last line is `above`."""
    taller = max(above.height, below.height)
    gap = below.y0 - above.y1
    overlap = min(above.x1, below.x1) - max(above.x0, below.x0)
    return (
        -0.25 * taller <= gap <= PARAGRAPH_GAP * taller
        and overlap > 0
        and min(above.height, below.height) >= PARAGRAPH_HEIGHT_RATIO * taller
    )


def _paragraphs(boxes: list[Box]) -> list[list[int]]:
    """Indices of `boxes` grouped into paragraphs, each top to bottom."""
    paragraphs: list[list[int]] = []
    for index in sorted(range(len(boxes)), key=lambda i: (boxes[i].y0, boxes[i].x0)):
        box = boxes[index]
        continued = [p for p in paragraphs if _continues(boxes[p[-1]], box)]
        if continued:
            min(continued, key=lambda p: box.y0 - boxes[p[-1]].y1).append(index)
        else:
            paragraphs.append([index])
    return paragraphs


def _line_heights(boxes: list[Box], paragraphs: list[list[int]]) -> list[int]:
    heights = [round(box.height * SINGLE_LINE_HEIGHT_FACTOR) for box in boxes]
    for paragraph in paragraphs:
        if len(paragraph) >= 2:
            pitch = round(float(np.median(np.diff([boxes[i].y0 for i in paragraph]))))
            for index in paragraph:
                heights[index] = pitch
    return heights


def _alignment(boxes: list[Box], paragraphs: list[list[int]]) -> str:
    blocks = [[boxes[i] for i in p] for p in paragraphs if len(p) >= 2]
    if not blocks:
        return "left"
    spreads = {
        name: sum(max(map(edge, block)) - min(map(edge, block)) for block in blocks)
        for name, edge in _ALIGN_EDGES.items()
    }
    median_height = statistics.median(box.height for block in blocks for box in block)
    tolerance = ALIGN_TIE_TOLERANCE * median_height * len(blocks)
    smallest = min(spreads.values())
    return next(name for name in _ALIGN_EDGES if spreads[name] <= smallest + tolerance)
