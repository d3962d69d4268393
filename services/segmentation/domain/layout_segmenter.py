"""The default UI segmenter: finds components in a screenshot without a learned model.

UI screenshots are mostly flat colours, so a component is a connected set of pixels that differ from the
background it sits on. The search is recursive:

1. The page colour is the commonest colour of the image's outer frame. Pixels differing from it by more
   than a small threshold are foreground; each 8-connected foreground component is an object (a bar, a
   card, a button, a picture, one glyph of text ...).
2. A large object is looked into. If its thick parts fall apart once thin lines are removed (a coloured
   header joined to a sidebar's outline), they are searched separately; if it fills little of its box and
   has several main colours (a header above a sidebar of another colour), each colour's large parts are
   searched separately. A *panel* (card, sidebar, header, big button) shows one colour all along the
   inside of its outline: what differs from that colour inside it is searched again, and areas of that
   colour cut apart by dividers become objects. A picture or an outline (a bordered card, an input) is
   not searched again: what it encloses was found at the outer level; only its large enclosed areas of
   the outer colour become objects (white cards that are holes in a grey page taken for foreground).
3. OCR lines (given by the caller) absorb the glyph objects inside them; a line's tight box is the union of
   its glyphs, cut where a gap is wider than a word space (OCR reads an icon or checkbox next to a label
   as part of the line).
4. Objects are related by box containment. A *container* is a large, not too elongated, largely flat
   object holding other objects or text; every other object is a *control*, and whatever lies inside a
   control (its label, check mark, knob, the shapes of a picture) belongs to it and is not reported.
5. Free text (on the page or in a container) is grouped: pieces side by side with a word-sized gap form a
   row, and left-aligned rows of one font size stacked closer than the line spacing form a paragraph.
6. Small fragments that together stay icon-sized (the three strokes of a menu glyph) are merged; hairline
   separators, specks and the page itself are dropped, and near-duplicates removed.

The colour threshold is 5 levels for lossless screenshots and 20 for lossy ones, told apart by JPEG's
ringing beside sharp edges. Everything is connected-component passes (OpenCV)
plus small per-object work: about 0.1 s for a 1280x800 PNG page, up to about 1 s for a JPEG one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from services.common.errors import InvalidArgument
from services.common.geometry import Box, TextLine
from services.common.images import require_rgb_image
from services.segmentation.domain.regions import Region

Colour = tuple[int, int, int]

_SOURCE = "layout"
_PANEL_SIDE = 40  # objects at least this big on both sides may hold others (and are searched again)
_CONTAINER_SIDE = 56  # ... and at least this big to count as containers rather than controls
_BAR_ASPECT = 12  # ... and less elongated than this; longer ones are bars
_CONTAINER_FILL = 0.3  # a container is largely one flat colour (a picture rarely is)
_MAX_DEPTH = 4
_PAGE_FRACTION = 0.9  # regions covering more of the image than this are the page itself
_SPECK = 4  # objects whose longer side is shorter than this are noise (dots, anti-aliasing)
_ICON_SIDE = 40  # fragments merge only while their union stays this small
_SOLID = 0.8  # an object covering this much of its box is a filled shape, not glyphs made of strokes
_THICK = 16  # a part this thick on both sides is a shape of its own, not an outline
_SOLIDITY = 0.6  # an object filling less of its box than this may be several touching shapes
_RIM_SHARE = 0.6  # a panel's commonest colour covers at least this much of the band inside its outline
_LOSSLESS_THRESHOLD = 5  # colour steps of flat UI colours are larger than this
_LOSSY_THRESHOLD = 20  # ... and JPEG noise stays below this
_RINGING_SHARE = 0.1  # near edges, lossless screenshots have 0-3 % of small steps, JPEGs 25-60 %
_PARAGRAPH_GAP = 0.45  # stacked lines closer than this many OCR line heights are one paragraph


@dataclass
class _Object:
    """A connected foreground component (or a large area enclosed by one)."""

    box: Box
    labels: np.ndarray = field(repr=False)  # the labelling it came from, cropped to the object's box
    label: int
    size: int  # its pixels
    filled: np.ndarray | None = field(default=None, repr=False)
    flatness: float | None = None

    def mask(self) -> np.ndarray:
        """The object's pixels with their holes filled (a button's mask includes its label)."""
        if self.filled is None:
            self.filled = _fill_holes(self.labels == self.label)
        return self.filled

    def flat_share(self, pixels: np.ndarray) -> float:
        """The share of the object's area taken by its commonest colour: high for panels, low for pictures.
        Every other pixel of every other row is enough to tell."""
        if self.flatness is None:
            box = self.box
            self.flatness = _dominant(pixels[box.y0 : box.y1 : 2, box.x0 : box.x1 : 2][self.mask()[::2, ::2]])[1]
        return self.flatness


@dataclass(frozen=True)
class _TextPiece:
    """Tight box of (part of) an OCR line. `line_height` (the OCR box's height) and `glyph_height` (its
    tallest glyph: a CJK character, a Latin ascender or descender) both follow the font size, each with
    its own noise."""

    box: Box
    line_height: int
    glyph_height: float


class LayoutSegmenter:
    """Non-learned segmenter for UI screenshots (see the module docstring). `threshold` is the colour
    difference (0-255, largest over the channels) that separates foreground from background; None picks
    one per image, low for lossless screenshots and higher for lossy (JPEG) ones."""

    name = "layout"

    def __init__(self, *, threshold: int | None = None) -> None:
        if threshold is not None and not 1 <= threshold <= 128:
            raise InvalidArgument(f"threshold must be in 1..128, got {threshold}")
        self.threshold = threshold

    def regions(self, image: np.ndarray, lines: Sequence[TextLine]) -> list[Region]:
        """Every component of the screenshot: controls, pictures, bars, containers and text blocks."""
        scan = self._scan(image)
        height, width = scan.pixels.shape[:2]
        objects = scan.objects()
        texts, glyphs = scan.text_pieces(objects, lines)
        kept = [obj for i, obj in enumerate(objects) if i not in glyphs and _substantial(obj.box)]
        text_boxes = [text.box for text in texts]
        is_container = [_is_container(obj, scan.pixels, kept, text_boxes) for obj in kept]
        controls = [obj.box for obj, container in zip(kept, is_container, strict=True) if not container]
        visible = [obj for obj, hidden in zip(kept, _inside_any([o.box for o in kept], controls), strict=True)
                   if not hidden]  # fmt: skip
        free_texts = [text for text, hidden in zip(texts, _inside_any(text_boxes, controls), strict=True) if not hidden]
        found = [*_merge_fragments(visible), *(Region(box, None, 1.0, _SOURCE) for box in _text_blocks(free_texts))]
        return _deduplicated([region for region in found if region.box.area < _PAGE_FRACTION * width * height])

    def at_points(
        self,
        image: np.ndarray,
        lines: Sequence[TextLine],
        points: Sequence[tuple[float, float]],
        labels: Sequence[int],
    ) -> Region | None:
        """The smallest region holding every positive point (label 1) and no negative one (label 0)."""
        if len(points) != len(labels):
            raise InvalidArgument(f"{len(points)} points but {len(labels)} labels")
        if any(label not in (0, 1) for label in labels):
            raise InvalidArgument("point labels must be 0 (background) or 1 (foreground)")
        positives = [point for point, label in zip(points, labels, strict=True) if label == 1]
        negatives = [point for point, label in zip(points, labels, strict=True) if label == 0]
        if not positives:
            raise InvalidArgument("at least one foreground point (label 1) is needed")
        candidates = [
            region for region in self.regions(image, lines)
            if all(_covers(region, point) for point in positives) and not any(_covers(region, p) for p in negatives)
        ]  # fmt: skip
        return min(candidates, key=lambda region: region.box.area, default=None)

    def in_boxes(self, image: np.ndarray, boxes: Sequence[Box]) -> list[Region]:
        """For each box, the tight foreground inside it: pixels that differ from the dominant colour of the
        box's outline. A box with nothing in it comes back as it is."""
        scan = self._scan(image)
        height, width = scan.pixels.shape[:2]
        found = []
        for box in boxes:
            clipped = box.clipped(width, height)
            if clipped.area == 0:
                raise InvalidArgument(f"box {box} lies outside the {width}x{height} image")
            found.append(scan.tightened(clipped))
        return found

    def _scan(self, image: np.ndarray) -> _Scan:
        pixels = _checked(image)
        if self.threshold is not None:
            return _Scan(pixels, self.threshold)
        return _Scan(pixels, _LOSSY_THRESHOLD if _is_lossy(pixels) else _LOSSLESS_THRESHOLD)


class _Scan:
    """One image being segmented, with the colour threshold chosen for it."""

    def __init__(self, pixels: np.ndarray, threshold: int) -> None:
        self.pixels = pixels
        self.threshold = threshold

    def foreground(self, pixels: np.ndarray, colour: Colour) -> np.ndarray:
        """Pixels whose largest channel difference from `colour` exceeds the threshold."""
        difference = cv2.absdiff(pixels, (float(colour[0]), float(colour[1]), float(colour[2]), 0.0))
        return np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2]) > self.threshold

    # Objects

    def objects(self) -> list[_Object]:
        """Every object of the image, outer ones before what lies inside them."""
        pixels = self.pixels
        # The page colour is the commonest colour of the image's outer frame: headers and sidebars touch
        # only some of its sides, while cards can cover more of the page than its background does.
        background, _ = _dominant(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]))
        height, width = pixels.shape[:2]
        objects: list[_Object] = []
        self._search(Box(0, 0, width, height), self.foreground(pixels, background), background, objects, 0)
        return objects

    def _search(
        self, area: Box, foreground: np.ndarray, background: Colour, objects: list[_Object], depth: int
    ) -> None:
        """Adds the connected components of `foreground` (a mask over `area` of what differs from
        `background`) and what lies inside them."""
        count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.view(np.uint8), connectivity=8)
        for label in range(1, count):
            x, y, w, h, size = (int(value) for value in stats[label])
            box = Box(area.x0 + x, area.y0 + y, area.x0 + x + w, area.y0 + y + h)
            obj = _Object(box, labels[y : y + h, x : x + w], label, size)
            objects.append(obj)
            if min(w, h) >= _PANEL_SIDE and depth < _MAX_DEPTH:
                self._look_inside(obj, background, objects, depth + 1)

    def _look_inside(self, obj: _Object, background: Colour, objects: list[_Object], depth: int) -> None:
        box = obj.box
        colours = self.pixels[box.y0 : box.y1, box.x0 : box.x1]
        own = obj.labels == obj.label
        filled = obj.mask()
        # Thin parts (outlines, separators) can join things that are really apart, like a coloured header
        # and the outline of the sidebar below it: if the thick parts fall apart, search them and the
        # remaining thin parts separately.
        thick = cv2.morphologyEx(own.view(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)).view(bool)
        pieces, _, stats, _ = cv2.connectedComponentsWithStats(thick.view(np.uint8), connectivity=8)
        whole = pieces == 2 and stats[1, 2] >= box.width - 4 and stats[1, 3] >= box.height - 4
        solid = pieces > 1 and stats[1:, 2:4].min(axis=1).max() >= _THICK  # more than rounded corners
        if solid and not whole:
            self._search(box, thick, background, objects, depth)
            self._search(box, own & ~_fill_holes(thick), background, objects, depth)
            return
        if filled.sum() < _SOLIDITY * box.area:
            # Not one shape but several of different colours touching, like a coloured header above a white
            # sidebar: each main colour's large parts are searched on their own.
            layers = [colour for colour, share in _palette(colours[own], 3) if share >= 0.2]
            if len(layers) > 1:
                for colour in layers:
                    self._search(box, _large_parts(own & ~self.foreground(colours, colour)), background, objects,
                                 depth)  # fmt: skip
                return
        # A panel (card, bar, button) shows one colour all along the inside of its outline; a picture does not,
        # and an outline (a bordered card, an input) shows the outer background there. The band looked at
        # starts 2 px inside, past anti-aliasing, a border and a drop shadow.
        rim = _eroded(filled, 5) & ~_eroded(filled, 15)
        body, share = _dominant(colours[rim]) if rim.any() else (background, 0.0)
        if share < _RIM_SHARE or _distance(body, background) <= self.threshold:
            # What it encloses was searched with it, except the large enclosed areas of the outer colour
            # themselves: a white header and white cards are holes in a grey page taken for foreground.
            _add_areas(filled & ~own, box, objects)
            return
        # What stands out from the panel's colour lies inside it, past its edge (border and shadow).
        foreground = self.foreground(colours, body)
        self._search(box, foreground & _eroded(filled, 9), body, objects, depth)
        # Dividers split a panel into parts of its colour (a header above a sidebar): each part is an area.
        _add_areas(~foreground & filled, box, objects)

    # Text

    def text_pieces(self, objects: list[_Object], lines: Sequence[TextLine]) -> tuple[list[_TextPiece], set[int]]:
        """Tight text pieces of the OCR lines, and the indices of the objects that are their glyphs.

        A glyph is an object mostly inside the line's box and no taller. A solid, wide shape at least half
        as tall as the line is a control (a filled button, whose label shows as holes), and so is an
        outline much taller than the line's other glyphs that holds some of them (an outlined button)."""
        height, width = self.pixels.shape[:2]
        corners = np.array([(o.box.x0, o.box.y0, o.box.x1, o.box.y1) for o in objects]).reshape(-1, 4)
        widths, heights = corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]
        areas = widths * heights
        solid_bars = (np.array([obj.size for obj in objects]) >= _SOLID * areas) & (widths >= 1.5 * heights)
        glyphs: set[int] = set()
        pieces: list[_TextPiece] = []
        for line in lines:
            box = line.box.clipped(width, height)
            if box.area == 0:
                continue
            overlap_w = np.minimum(corners[:, 2], box.x1) - np.maximum(corners[:, 0], box.x0)
            overlap_h = np.minimum(corners[:, 3], box.y1) - np.maximum(corners[:, 1], box.y0)
            inside = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None) >= 0.6 * areas
            control = solid_bars & (heights >= 0.5 * box.height)
            members = np.flatnonzero(inside & ~control & (heights <= box.height))
            members = _without_holders(corners, members, 0.75 * box.height)
            if len(members) == 0:
                tightened = self.tightened(box).box
                if tightened.area:
                    pieces.append(_TextPiece(tightened, box.height, tightened.height))
                continue
            glyphs.update(members.tolist())
            pieces.extend(_TextPiece(run, box.height, glyph) for run, glyph in _runs(corners[members]))
        return pieces, glyphs

    def tightened(self, box: Box) -> Region:
        """The foreground in `box`: what differs from the commonest colour of its outline."""
        crop = self.pixels[box.y0 : box.y1, box.x0 : box.x1]
        colour, _ = _dominant(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]))
        foreground = self.foreground(crop, colour)
        ys, xs = np.nonzero(foreground)
        if len(ys) == 0:
            return Region(box, None, 1.0, _SOURCE)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        mask = _fill_holes(foreground[y0:y1, x0:x1])
        return Region(Box(box.x0 + x0, box.y0 + y0, box.x0 + x1, box.y0 + y1), None if mask.all() else mask, 1.0,
                      _SOURCE)  # fmt: skip


# ---------------------------------------------------------------------------------------------- helpers


def _checked(image: np.ndarray) -> np.ndarray:
    require_rgb_image(image)
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidArgument("the image is empty")
    return image


def _is_lossy(pixels: np.ndarray) -> bool:
    """Whether the image went through lossy compression. Beside a sharp edge, a lossless screenshot is flat
    (anti-aliasing takes a pixel or so); JPEG rings there, so neighbours differ by a few levels."""
    if pixels.shape[1] < 8:
        return False
    steps = np.zeros(pixels.shape[:2], np.uint8)
    steps[:, 1:] = cv2.absdiff(pixels[:, 1:], pixels[:, :-1]).max(axis=-1)
    edges = (steps >= 40).view(np.uint8)
    beside = cv2.dilate(edges, np.ones((1, 7), np.uint8)).view(bool) & ~cv2.dilate(
        edges, np.ones((1, 3), np.uint8)
    ).view(bool)
    ringing = np.count_nonzero(beside & (steps >= 1) & (steps <= 4))
    return ringing > _RINGING_SHARE * max(1, np.count_nonzero(beside))


def _distance(first: Colour, second: Colour) -> int:
    return max(abs(int(a) - int(b)) for a, b in zip(first, second, strict=True))


def _palette(colours: np.ndarray, count: int) -> list[tuple[Colour, float]]:
    """The `count` commonest colours among N x 3 pixels (sampled when there are many), with their shares."""
    if len(colours) > 40_000:
        colours = colours[:: len(colours) // 40_000]
    packed = (colours[:, 0].astype(np.int32) << 16) | (colours[:, 1].astype(np.int32) << 8) | colours[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    top = np.argsort(counts)[::-1][:count]
    return [
        (((int(values[i]) >> 16) & 255, (int(values[i]) >> 8) & 255, int(values[i]) & 255), counts[i] / len(packed))
        for i in top
    ]


def _dominant(colours: np.ndarray) -> tuple[Colour, float]:
    """The commonest colour among N x 3 pixels and its share."""
    return _palette(colours, 1)[0]


def _eroded(mask: np.ndarray, size: int) -> np.ndarray:
    """`mask` shrunk by size // 2 pixels, also from the edges of the array."""
    kernel = np.ones((size, size), np.uint8)
    return cv2.erode(mask.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.view(bool) | mask


def _large_parts(mask: np.ndarray) -> np.ndarray:
    """The connected parts of `mask` at least _PANEL_SIDE pixels on both sides."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    large = stats[:, 2:4].min(axis=1) >= _PANEL_SIDE
    large[0] = False  # the background
    return large[labels]


def _add_areas(mask: np.ndarray, box: Box, objects: list[_Object]) -> None:
    """Adds the large 4-connected parts of `mask` (over `box`) that are not the whole box as objects."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4)
    for label in range(1, count):
        x, y, w, h, size = (int(value) for value in stats[label])
        if min(w, h) >= _PANEL_SIDE and (w < box.width - 4 or h < box.height - 4):
            area = Box(box.x0 + x, box.y0 + y, box.x0 + x + w, box.y0 + y + h)
            objects.append(_Object(area, labels[y : y + h, x : x + w], label, size))


def _is_container(obj: _Object, pixels: np.ndarray, objects: list[_Object], texts: list[Box]) -> bool:
    """A large, largely flat object holding other objects or text."""
    box = obj.box
    if min(box.width, box.height) < _CONTAINER_SIDE or max(box.width, box.height) > _BAR_ASPECT * min(
        box.width, box.height
    ):
        return False  # too small, or a bar (whose items belong to it)
    holds = any(other is not obj and box.contains(other.box) for other in objects) or any(
        box.contains(text) for text in texts
    )
    return holds and obj.flat_share(pixels) >= _CONTAINER_FILL


def _substantial(box: Box) -> bool:
    """Not a speck and not a hairline separator (shorter lines may be strokes of an icon)."""
    longer, shorter = max(box.width, box.height), min(box.width, box.height)
    return longer >= _SPECK and not (shorter <= 2 and longer > _ICON_SIDE)


def _inside_any(boxes: Sequence[Box], holders: Sequence[Box]) -> list[bool]:
    """For each box, whether some holder (other than an identical box) contains it."""
    if not boxes or not holders:
        return [False] * len(boxes)
    inner = np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes])[:, None, :]
    outer = np.array([(b.x0, b.y0, b.x1, b.y1) for b in holders])[None, :, :]
    contained = (
        (outer[..., 0] <= inner[..., 0] + 1) & (outer[..., 1] <= inner[..., 1] + 1)
        & (inner[..., 2] <= outer[..., 2] + 1) & (inner[..., 3] <= outer[..., 3] + 1)
    )  # fmt: skip
    inner_area = (inner[..., 2] - inner[..., 0]) * (inner[..., 3] - inner[..., 1])
    outer_area = (outer[..., 2] - outer[..., 0]) * (outer[..., 3] - outer[..., 1])
    return (contained & (outer_area > inner_area)).any(axis=1).tolist()


def _union(first: Box, second: Box) -> Box:
    return Box(min(first.x0, second.x0), min(first.y0, second.y0), max(first.x1, second.x1), max(first.y1, second.y1))


def _gap(first: Box, second: Box) -> int:
    """Chebyshev distance between two boxes (0 when they touch or overlap)."""
    dx = max(first.x0 - second.x1, second.x0 - first.x1, 0)
    dy = max(first.y0 - second.y1, second.y0 - first.y1, 0)
    return max(dx, dy)


class _Groups:
    """Union-find over indices."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.root(j)] = self.root(i)

    def members(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.root(i), []).append(i)
        return list(groups.values())


def _merge_fragments(objects: list[_Object]) -> list[Region]:
    """Regions of the objects, after joining small pieces that together stay icon-sized: strokes of one
    glyph are close to each other and their union is hardly bigger than the biggest of them."""
    small = sorted((i for i, obj in enumerate(objects) if max(obj.box.width, obj.box.height) <= _ICON_SIDE),
                   key=lambda i: objects[i].box.x0)  # fmt: skip
    groups = _Groups(len(objects))
    for position, i in enumerate(small):
        a = objects[i].box
        for j in small[position + 1 :]:
            b = objects[j].box
            if b.x0 > a.x1 + _ICON_SIDE // 2:
                break
            longest = max(a.width, a.height, b.width, b.height)
            union = _union(a, b)
            if max(union.width, union.height) <= 1.25 * longest and _gap(a, b) <= longest / 2:
                groups.join(i, j)
    regions = []
    for members in groups.members():
        box = objects[members[0]].box
        for i in members[1:]:
            box = _union(box, objects[i].box)
        if max(box.width, box.height) <= _ICON_SIDE:
            regions.append(_region(box, [objects[i] for i in members]))
        else:  # a chain of pieces grew too big to be one glyph
            regions.extend(_region(objects[i].box, [objects[i]]) for i in members)
    return regions


def _region(box: Box, members: list[_Object]) -> Region:
    mask = np.zeros((box.height, box.width), bool)
    for obj in members:
        y, x = obj.box.y0 - box.y0, obj.box.x0 - box.x0
        mask[y : y + obj.box.height, x : x + obj.box.width] |= obj.mask()
    return Region(box, None if mask.all() else mask, 1.0, _SOURCE)


def _without_holders(corners: np.ndarray, members: np.ndarray, tall: float) -> np.ndarray:
    """`members` (indices into N x 4 corners) less those that hold another member and are taller than
    `tall` and much taller than the typical member."""
    if len(members) < 2:
        return members
    chosen = corners[members]
    heights = chosen[:, 3] - chosen[:, 1]
    holds = (
        (chosen[:, None, 0] <= chosen[None, :, 0]) & (chosen[:, None, 1] <= chosen[None, :, 1])
        & (chosen[:, None, 2] >= chosen[None, :, 2]) & (chosen[:, None, 3] >= chosen[None, :, 3])
    )  # fmt: skip
    np.fill_diagonal(holds, False)
    holder = holds.any(axis=1) & (heights > 1.3 * np.median(heights)) & (heights >= tall)
    return members[~holder]


def _runs(glyphs: np.ndarray) -> list[tuple[Box, float]]:
    """The runs of glyph boxes (N x 4 corners) along a line, cut at gaps wider than a word space, with the
    height of their tallest glyph. Gaps next to punctuation may be wider."""
    order = glyphs[np.argsort(glyphs[:, 0])]
    runs: list[list[int]] = []
    heights: list[list[int]] = []
    last_height = 0
    for x0, y0, x1, y1 in order.tolist():
        height = y1 - y0
        if runs:
            run = runs[-1]
            run_height = run[3] - run[1]
            # After a small glyph, or before one sitting low in the line: punctuation in its full-width cell.
            low = (y0 + y1) / 2 >= run[1] + 0.45 * run_height
            small = last_height <= 0.5 * run_height or (height <= 0.5 * run_height and low)
            limit = 0.8 * run_height if small else 0.4 * max(run_height, height)
            if x0 - run[2] <= limit:
                if x1 > run[2]:  # only the glyph ending the run decides the next gap (not a radio's dot)
                    last_height = height
                runs[-1] = [run[0], min(run[1], y0), max(run[2], x1), max(run[3], y1)]
                heights[-1].append(height)
                continue
        runs.append([x0, y0, x1, y1])
        heights.append([height])
        last_height = height
    return [(Box(*run), float(max(sizes))) for run, sizes in zip(runs, heights, strict=True)]


def _text_blocks(pieces: list[_TextPiece]) -> list[Box]:
    """Joins text pieces into blocks: first pieces side by side with a word-sized gap into rows (one label
    cut in two), then rows of one font size, left-aligned and stacked closer than the line spacing (a
    paragraph); a row must be word-shaped, so an icon read as a character stays apart."""
    rows = _Groups(len(pieces))
    for i, a in enumerate(pieces):
        for j in range(i + 1, len(pieces)):
            b = pieces[j]
            low = min(a.box.height, b.box.height)
            overlap = min(a.box.y1, b.box.y1) - max(a.box.y0, b.box.y0)
            gap = max(a.box.x0, b.box.x0) - min(a.box.x1, b.box.x1)
            if overlap >= 0.5 * low and gap <= 0.5 * low:
                rows.join(i, j)
    lines = []
    for members in rows.members():
        box = pieces[members[0]].box
        for i in members[1:]:
            box = _union(box, pieces[i].box)
        line_height = max(pieces[i].line_height for i in members)
        lines.append(_TextPiece(box, line_height, max(pieces[i].glyph_height for i in members)))
    lines.sort(key=lambda line: (line.box.y0, line.box.x0))
    blocks = _Groups(len(lines))
    for i, a in enumerate(lines):
        for j in range(i + 1, len(lines)):
            b = lines[j]
            small, large = sorted((a.line_height, b.line_height))
            if b.box.y0 > a.box.y1 + large:
                break
            stacked = (
                a.box.width >= 1.2 * a.box.height and b.box.width >= 1.2 * b.box.height
                and _same_font(a, b) and abs(a.box.x0 - b.box.x0) <= 0.5 * min(a.box.height, b.box.height)
                and 0 <= b.box.y0 - a.box.y1 <= _PARAGRAPH_GAP * small
            )  # fmt: skip
            if stacked:
                blocks.join(i, j)
    merged = []
    for members in blocks.members():
        box = lines[members[0]].box
        for i in members[1:]:
            box = _union(box, lines[i].box)
        merged.append(box)
    return merged


def _same_font(a: _TextPiece, b: _TextPiece) -> bool:
    """Every measure of font size varies with the letters (ascenders, descenders, CJK radicals drawn apart);
    one of them agreeing is enough."""
    ocr_low, ocr_high = sorted((a.line_height, b.line_height))
    glyph_low, glyph_high = sorted((a.glyph_height, b.glyph_height))
    ink_low, ink_high = sorted((a.box.height, b.box.height))
    return ocr_high <= 1.25 * ocr_low or glyph_high <= 1.2 * glyph_low or ink_high <= 1.2 * ink_low


def _covers(region: Region, point: tuple[float, float]) -> bool:
    x, y = point
    if not region.box.contains_point(x, y):
        return False
    if region.mask is None:
        return True
    return bool(region.mask[int(y) - region.box.y0, int(x) - region.box.x0])


def _deduplicated(regions: list[Region]) -> list[Region]:
    kept: list[Region] = []
    for region in sorted(regions, key=lambda r: r.box.area, reverse=True):
        if all(region.box.iou(other.box) < 0.9 for other in kept):
            kept.append(region)
    return kept
