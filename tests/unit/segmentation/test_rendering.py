"""Synthetic components and pages: every kind renders at sane sizes, deterministically, and pages keep their
layout promises (inside the image, children inside their container, no overlaps, tight boxes)."""

from __future__ import annotations

import random
import time
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.segmentation.domain.rendering import COMPONENT_TYPES, CONTAINER_TYPE, render_component
from synthetic.pages import RenderedPage, render_page

PAGE_SEEDS = range(8)


@pytest.fixture(scope="module")
def pages() -> list[RenderedPage]:
    return [render_page(random.Random(seed)) for seed in PAGE_SEEDS]


def test_component_types_are_the_ten_classes_in_order() -> None:
    assert COMPONENT_TYPES == ("Button", "Input", "Text", "Image", "Bar", "Checkbox", "Radio", "Switch", "Select",
                               "Icon")  # fmt: skip


@pytest.mark.parametrize("kind", COMPONENT_TYPES)
def test_every_kind_renders_rgb_crops_of_sane_size_with_something_drawn(kind: str) -> None:
    rng = random.Random(7)
    for _ in range(30):
        crop = render_component(kind, rng)
        assert crop.mode == "RGB"
        assert 8 <= crop.width <= 1400 and 8 <= crop.height <= 500, crop.size
        pixels = np.asarray(crop).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 1, "a crop must show more than its background"


def test_crops_honour_the_requested_size_plus_a_small_margin() -> None:
    rng = random.Random(3)
    for kind in COMPONENT_TYPES:
        crop = render_component(kind, rng, size=(120, 40), text="OK 确定")
        assert 120 <= crop.width <= 128 and 40 <= crop.height <= 48, (kind, crop.size)


def test_rendering_is_deterministic_for_a_given_rng_state() -> None:
    for kind in COMPONENT_TYPES:
        first = render_component(kind, random.Random(11))
        second = render_component(kind, random.Random(11))
        assert np.array_equal(np.asarray(first), np.asarray(second)), kind
    page_a, page_b = render_page(random.Random(5)), render_page(random.Random(5))
    assert page_a.components == page_b.components
    assert np.array_equal(np.asarray(page_a.image), np.asarray(page_b.image))


def test_styles_vary_between_draws() -> None:
    rng = random.Random(1)
    crops = [np.asarray(render_component("Button", rng)) for _ in range(10)]
    mean_colours = {tuple(crop.reshape(-1, 3).mean(0).round()) for crop in crops}
    assert len(mean_colours) >= 8


def test_unknown_kind_and_bad_size_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        render_component("Carousel", random.Random(0))
    with pytest.raises(InvalidArgument):
        render_component("Button", random.Random(0), size=(0, 10))


def test_a_thousand_crops_take_a_few_seconds() -> None:
    rng = random.Random(0)
    started = time.perf_counter()
    for i in range(1000):
        render_component(COMPONENT_TYPES[i % len(COMPONENT_TYPES)], rng)
    assert time.perf_counter() - started < 10


def test_pages_have_a_realistic_number_of_components_all_inside_the_image(pages: list[RenderedPage]) -> None:
    for page in pages:
        assert page.image.size == (1280, 800) and page.image.mode == "RGB"
        assert 15 <= len(page.components) <= 40
        kinds = {component.kind for component in page.components}
        assert {"Bar", "Text", CONTAINER_TYPE} <= kinds
        for component in page.components:
            box = component.box
            assert 0 <= box.x0 < box.x1 <= 1280 and 0 <= box.y0 < box.y1 <= 800, component
            assert component.kind in (*COMPONENT_TYPES, CONTAINER_TYPE)


def test_children_lie_inside_their_container(pages: list[RenderedPage]) -> None:
    for page in pages:
        for component in page.components:
            if component.parent is None:
                continue
            container = page.components[component.parent]
            assert container.kind == CONTAINER_TYPE
            assert container.box.contains(component.box), (component, container)


def test_components_other_than_containers_do_not_overlap(pages: list[RenderedPage]) -> None:
    for page in pages:
        leaves = [component for component in page.components if component.kind != CONTAINER_TYPE]
        for first, second in combinations(leaves, 2):
            assert first.box.intersection(second.box) == 0, (first, second)


def test_text_of_controls_belongs_to_them_and_pages_mix_languages(pages: list[RenderedPage]) -> None:
    texts = [component.text for page in pages for component in page.components]
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in texts)
    assert any(text.isascii() and any(ch.isalpha() for ch in text) for text in texts)
    for page in pages:
        for component in page.components:
            if component.kind in ("Button", "Text"):
                assert component.text.strip(), component


def _ink_box(image: Image.Image, box_with_margin: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Bounds of the pixels that differ from the dominant colour of the region's outer ring."""
    x0, y0, x1, y1 = box_with_margin
    crop = np.asarray(image)[y0:y1, x0:x1].astype(int)
    ring = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    colours, counts = np.unique(ring, axis=0, return_counts=True)
    ink = np.abs(crop - colours[counts.argmax()]).max(-1) > 20
    ys, xs = np.nonzero(ink)
    return x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1


def test_boxes_are_tight_around_what_is_drawn(pages: list[RenderedPage]) -> None:
    for page in pages:
        for component in page.components:
            box = component.box
            if component.kind not in ("Button", "Text", "Checkbox", "Radio", "Switch", "Image", "Icon") or box.y0 < 5:
                continue
            margin = 4
            ink = _ink_box(page.image, (box.x0 - margin, box.y0 - margin, box.x1 + margin, box.y1 + margin))
            slack = 7 if component.kind == "Text" else 3  # a line's advance can exceed its last glyph's ink
            assert all(abs(a - b) <= slack for a, b in zip(ink, (box.x0, box.y0, box.x1, box.y1), strict=True)), (
                component, ink,
            )  # fmt: skip
