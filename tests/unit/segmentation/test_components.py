"""services.segmentation.domain.components: component pictures, region filtering, OCR merging, background colour."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.geometry import Box
from services.segmentation.domain.components import (
    background_color,
    cut_component,
    filter_regions,
    inside,
    merge_text_regions,
)
from services.segmentation.domain.regions import Region

BACKGROUND = (240, 240, 240)
BLUE = (30, 100, 220)
RED = (220, 40, 40)


def page() -> np.ndarray:
    """A 120x80 page: a blue button at (20..60, 10..30) and a red disc centred at (90, 50), radius 15."""
    image = np.full((80, 120, 3), BACKGROUND, np.uint8)
    image[10:30, 20:60] = BLUE
    ys, xs = np.mgrid[0:80, 0:120]
    image[(xs - 90) ** 2 + (ys - 50) ** 2 <= 15**2] = RED
    return image


def disc_region() -> Region:
    box = Box(75, 35, 106, 66)
    ys, xs = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    return Region(box=box, mask=(xs - 90) ** 2 + (ys - 50) ** 2 <= 15**2, score=0.9, source="sam")


def decoded(png_base64: str) -> Image.Image:
    data = base64.b64decode(png_base64, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data))


def test_box_cut_is_the_rgb_crop() -> None:
    image = page()
    cut = cut_component(image, Region(box=Box(20, 10, 60, 30)), outline=False)
    picture = decoded(cut.png_base64)
    assert picture.mode == "RGB" and picture.size == (40, 20)
    assert np.array_equal(np.asarray(picture), image[10:30, 20:60])
    assert cut.box == Box(20, 10, 60, 30)
    assert cut.rgb_mean == BLUE


def test_outline_cut_is_transparent_outside_the_mask() -> None:
    image = page()
    region = disc_region()
    cut = cut_component(image, region, outline=True)
    picture = decoded(cut.png_base64)
    assert picture.mode == "RGBA" and picture.size == (31, 31)
    pixels = np.asarray(picture)
    assert region.mask is not None
    assert np.array_equal(pixels[..., 3] == 255, region.mask)
    assert np.all(pixels[..., 3][~region.mask] == 0)
    assert np.array_equal(pixels[..., :3], image[35:66, 75:106])
    assert cut.rgb_mean == RED  # only the disc's pixels, not the background corners of its box


def test_box_cut_of_a_masked_region_averages_the_mask_only() -> None:
    cut = cut_component(page(), disc_region(), outline=False)
    assert decoded(cut.png_base64).mode == "RGB"
    assert cut.rgb_mean == RED


def test_outline_cut_without_a_mask_is_opaque_and_averages_the_box() -> None:
    image = page()
    cut = cut_component(image, Region(box=Box(10, 5, 70, 35)), outline=True)
    alpha = np.asarray(decoded(cut.png_base64))[..., 3]
    assert alpha.shape == (30, 60) and np.all(alpha == 255)
    expected = np.rint(image[5:35, 10:70].reshape(-1, 3).mean(axis=0)).astype(int)
    assert cut.rgb_mean == tuple(expected)


def test_cut_clips_box_and_mask_to_the_image() -> None:
    image = page()
    mask = np.zeros((20, 20), bool)
    mask[5:, 5:] = True  # the part of the box inside the image...
    mask[5, 5] = False  # ...but its top-left pixel
    cut = cut_component(image, Region(box=Box(-5, -5, 15, 15), mask=mask), outline=True)
    assert cut.box == Box(0, 0, 15, 15)
    alpha = np.asarray(decoded(cut.png_base64))[..., 3]
    assert alpha.shape == (15, 15) and alpha[0, 0] == 0 and np.count_nonzero(alpha == 255) == 15 * 15 - 1
    with pytest.raises(InvalidArgument):
        cut_component(image, Region(box=Box(200, 0, 220, 10)), outline=False)


def test_filter_drops_slivers_specks_page_and_duplicates() -> None:
    width, height = 200, 100
    button = Region(Box(20, 10, 60, 30), score=0.9)
    near_copy = Region(Box(21, 10, 60, 30), score=0.8)  # IoU 0.975 with the button, lower score
    card = Region(Box(100, 40, 180, 90), score=0.7)
    same_score_smaller = Region(Box(101, 41, 180, 90), score=0.7)
    dropped = [
        Region(Box(0, 50, 200, 54)),  # sliver: 4 px high
        Region(Box(0, 60, 160, 63)),  # sliver by side and aspect ratio
        Region(Box(10, 70, 18, 78)),  # 8x8 = 64 px < min_area
        Region(Box(0, 0, 200, 95)),  # 95 % of the page
    ]
    kept = filter_regions([card, near_copy, *dropped, same_score_smaller, button], width, height)
    assert kept == [button, card]


def test_filter_orders_top_to_bottom_then_left_to_right() -> None:
    regions = [Region(Box(x, y, x + 20, y + 20)) for x, y in [(60, 50), (10, 50), (60, 0), (10, 0)]]
    kept = filter_regions(regions, 200, 200)
    assert [(region.box.x0, region.box.y0) for region in kept] == [(10, 0), (60, 0), (10, 50), (60, 50)]


def test_filter_rejects_long_thin_boxes_by_aspect_ratio() -> None:
    assert filter_regions([Region(Box(0, 0, 410, 10))], 1000, 1000) == []
    assert len(filter_regions([Region(Box(0, 0, 400, 10))], 1000, 1000)) == 1


def test_merge_adds_only_uncovered_text() -> None:
    button = Region(Box(20, 10, 80, 40), score=0.9, source="sam")
    card = Region(Box(100, 0, 300, 200), score=0.8, source="sam")
    label_in_button = Box(30, 15, 70, 35)  # 40x20 inside a 60x30 button: the button is the component
    same_as_button = Box(19, 9, 81, 41)  # IoU >= 0.5 with the button
    line_in_card = Box(110, 20, 290, 40)  # 9 % of the card: its own component
    loose_text = Box(10, 100, 60, 120)
    merged = merge_text_regions([card, button], [label_in_button, same_as_button, line_in_card, loose_text])
    assert [(region.box, region.source) for region in merged] == [
        (card.box, "sam"),
        (button.box, "sam"),
        (line_in_card, "ocr"),
        (loose_text, "ocr"),
    ]
    assert all(region.mask is None for region in merged if region.source == "ocr")


def test_background_of_a_two_colour_box_is_the_majority_colour() -> None:
    image = np.full((40, 100, 3), (250, 250, 250), np.uint8)
    image[:, :30] = (12, 34, 56)  # 30 % of the box
    rng = np.random.default_rng(0)
    image[:, 30:] = image[:, 30:] - rng.integers(0, 4, size=(40, 70, 3)).astype(np.uint8)  # slight noise
    assert background_color(image, Box(0, 0, 100, 40)) == tuple(
        np.rint(image[:, 30:].reshape(-1, 3).mean(axis=0)).astype(int)
    )
    assert background_color(image, Box(0, 0, 20, 40)) == (12, 34, 56)
    with pytest.raises(InvalidArgument):
        background_color(image, Box(100, 0, 120, 40))


def test_background_ignores_text_drawn_on_it() -> None:
    image = page()
    assert background_color(image, Box(0, 0, 120, 80)) == BACKGROUND
    assert background_color(image, Box(18, 8, 62, 32)) == BLUE


def test_inside_keeps_regions_within_the_box() -> None:
    outer = Box(10, 10, 100, 100)
    regions = [Region(Box(20, 20, 40, 40)), Region(Box(90, 90, 110, 110)), Region(outer), Region(Box(0, 0, 5, 5))]
    assert inside(regions, outer) == [regions[0], regions[2]]
