"""The non-learned UI segmenter on rendered pages with known layouts, with text lines from real OCR
(rapidocr, read once per page and kept for the module), plus the box-matching measures it is judged by."""

from __future__ import annotations

import random
import statistics
import time
from functools import cache

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.geometry import Box, TextLine
from services.segmentation.domain.layout_segmenter import LayoutSegmenter
from services.segmentation.domain.rendering import CONTAINER_TYPE
from synthetic.evaluation import match_boxes, recall, text_recall
from synthetic.pages import PageComponent, RenderedPage, render_page

PAGE_SEEDS = (101, 202, 303, 404)


@cache
def _ocr_engine():  # the engine loads its models on first use
    from rapidocr import RapidOCR

    return RapidOCR(params={"Global.log_level": "warning", "Det.limit_type": "max", "Det.limit_side_len": 960})


@cache
def _page(seed: int) -> tuple[RenderedPage, tuple[TextLine, ...]]:
    page = render_page(random.Random(seed))
    bgr = np.ascontiguousarray(np.asarray(page.image)[:, :, ::-1])
    result = _ocr_engine()(bgr, use_det=True, use_cls=False, use_rec=True)
    if result.boxes is None:
        return page, ()
    lines = []
    for quad, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
        xs, ys = quad[:, 0], quad[:, 1]
        box = Box(int(np.floor(xs.min())), int(np.floor(ys.min())), int(np.ceil(xs.max())), int(np.ceil(ys.max())))
        lines.append(TextLine(box, text, float(score)))
    return page, tuple(lines)


@pytest.fixture(scope="module")
def segmenter() -> LayoutSegmenter:
    return LayoutSegmenter()


def _pixels(page: RenderedPage) -> np.ndarray:
    return np.asarray(page.image)


@pytest.mark.parametrize("seed", PAGE_SEEDS)
def test_finds_at_least_four_fifths_of_the_components_of_a_page(segmenter: LayoutSegmenter, seed: int) -> None:
    page, lines = _page(seed)
    regions = segmenter.regions(_pixels(page), lines)
    found = [region.box for region in regions]
    leaves = [c.box for c in page.components if c.kind != CONTAINER_TYPE]
    assert recall(leaves, found) >= 0.8
    containers = [c.box for c in page.components if c.kind == CONTAINER_TYPE]
    assert recall(containers, found) >= 0.5
    assert len(regions) <= 2 * len(page.components), "not flooded with fragments"
    height, width = _pixels(page).shape[:2]
    for region in regions:
        assert region.source == "layout"
        assert region.box.area < 0.9 * width * height
        if region.mask is not None:
            assert region.mask.dtype == bool and region.mask.shape == (region.box.height, region.box.width)


def test_regions_take_well_under_a_second_per_page(segmenter: LayoutSegmenter) -> None:
    timings = []
    for seed in PAGE_SEEDS:
        page, lines = _page(seed)
        started = time.perf_counter()
        segmenter.regions(_pixels(page), lines)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 1.0, timings


def test_text_inside_a_control_is_not_a_region_of_its_own(segmenter: LayoutSegmenter) -> None:
    page, lines = _page(PAGE_SEEDS[0])
    found = [region.box for region in segmenter.regions(_pixels(page), lines)]
    for component in page.components:
        if component.kind in ("Button", "Input", "Select"):
            inner = [box for box in found if component.box.contains(box) and box != component.box]
            assert all(box.iou(component.box) >= 0.5 for box in inner), (component, inner)


def _component(page: RenderedPage, kind: str) -> PageComponent:
    return next(c for c in page.components if c.kind == kind)


def _centre(box: Box) -> tuple[float, float]:
    return (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2


def test_at_points_picks_the_button_under_the_point(segmenter: LayoutSegmenter) -> None:
    page, lines = next(_page(seed) for seed in PAGE_SEEDS if any(c.kind == "Button" for c in _page(seed)[0].components))
    button = _component(page, "Button")
    region = segmenter.at_points(_pixels(page), lines, [_centre(button.box)], [1])
    assert region is not None and region.box.iou(button.box) >= 0.8


def test_at_points_respects_negative_points(segmenter: LayoutSegmenter) -> None:
    page, lines = _page(PAGE_SEEDS[0])
    child = next(c for c in page.components if c.parent is not None)
    container = page.components[child.parent]
    inside_container = (container.box.x0 + 4, (container.box.y0 + container.box.y1) / 2)  # left of every child
    region = segmenter.at_points(_pixels(page), lines, [inside_container], [1])
    assert region is not None and region.box.iou(container.box) >= 0.8
    # Excluding a child's centre leaves no region: the container holds it, and nothing else holds the point.
    assert segmenter.at_points(_pixels(page), lines, [inside_container, _centre(child.box)], [1, 0]) is None


def test_at_points_refuses_bad_prompts(segmenter: LayoutSegmenter) -> None:
    page, lines = _page(PAGE_SEEDS[0])
    with pytest.raises(InvalidArgument):
        segmenter.at_points(_pixels(page), lines, [(10, 10)], [1, 0])
    with pytest.raises(InvalidArgument):
        segmenter.at_points(_pixels(page), lines, [(10, 10)], [0])
    with pytest.raises(InvalidArgument):
        segmenter.at_points(_pixels(page), lines, [(10, 10)], [2])


def test_in_boxes_tightens_a_loose_box_around_a_button(segmenter: LayoutSegmenter) -> None:
    for seed in PAGE_SEEDS:
        page = render_page(random.Random(seed))
        pixels = _pixels(page)
        for button in (c for c in page.components if c.kind == "Button"):
            box = button.box
            loose = Box(box.x0 - 6, box.y0 - 6, box.x1 + 6, box.y1 + 6)
            if any(other.box.intersection(loose) for other in page.components
                   if other is not button and other.kind != CONTAINER_TYPE):  # fmt: skip
                continue  # neighbours too close for a loose box
            (region,) = segmenter.in_boxes(pixels, [loose])
            assert region.box.iou(box) >= 0.9, (region.box, box)
            if region.mask is not None:
                assert region.mask.shape == (region.box.height, region.box.width)
                assert region.mask[region.box.height // 2, region.box.width // 2], "the label is inside the mask"


def test_in_boxes_returns_an_empty_box_as_it_is(segmenter: LayoutSegmenter) -> None:
    blank = np.full((100, 200, 3), 240, np.uint8)
    box = Box(10, 10, 60, 40)
    (region,) = segmenter.in_boxes(blank, [box])
    assert region.box == box and region.mask is None
    with pytest.raises(InvalidArgument):
        segmenter.in_boxes(blank, [Box(300, 300, 400, 400)])


def test_a_blank_image_has_no_regions(segmenter: LayoutSegmenter) -> None:
    assert segmenter.regions(np.full((800, 1280, 3), 255, np.uint8), []) == []
    assert segmenter.at_points(np.full((50, 50, 3), 30, np.uint8), [], [(5, 5)], [1]) is None


def test_tiny_images_work(segmenter: LayoutSegmenter) -> None:
    dot = np.zeros((1, 1, 3), np.uint8)
    assert segmenter.regions(dot, []) == []
    assert segmenter.in_boxes(dot, [Box(0, 0, 1, 1)])[0].box == Box(0, 0, 1, 1)
    small = np.full((8, 8, 3), 255, np.uint8)
    small[2:6, 2:6] = 0
    (region,) = segmenter.regions(small, [])
    assert region.box == Box(2, 2, 6, 6)


def test_a_bad_image_is_refused(segmenter: LayoutSegmenter) -> None:
    with pytest.raises(InvalidArgument):
        segmenter.regions(np.zeros((10, 10), np.uint8), [])
    with pytest.raises(InvalidArgument):
        segmenter.regions(np.zeros((10, 10, 3), np.float32), [])
    with pytest.raises(InvalidArgument):
        segmenter.regions(np.zeros((0, 10, 3), np.uint8), [])


def test_ocr_reads_the_rendered_text() -> None:
    page, lines = _page(PAGE_SEEDS[0])
    expected = [line for c in page.components for line in c.text.split("\n") if line.strip()]
    assert text_recall(expected, [line.text for line in lines]) >= 0.8


def test_match_boxes_is_one_to_one_by_best_overlap() -> None:
    truth = [Box(0, 0, 10, 10), Box(20, 0, 30, 10)]
    found = [Box(1, 0, 11, 10), Box(0, 0, 10, 10), Box(50, 50, 60, 60)]
    assert match_boxes(truth, found) == [(0, 1)]
    assert sorted(match_boxes(truth, [*found, Box(20, 1, 30, 11)])) == [(0, 1), (1, 3)]
    assert recall(truth, found) == 0.5
    assert recall([], found) == 1.0
    assert match_boxes(truth, [Box(0, 0, 20, 10)], iou=0.5) == [(0, 0)]
    assert match_boxes(truth, [Box(0, 0, 30, 10)], iou=0.5) == []


def test_text_recall_ignores_case_and_whitespace() -> None:
    assert text_recall(["Submit 提交", "Sign in"], ["submit提交", "SIGN", "IN"]) == 1.0
    assert text_recall(["Cancel", "Save"], ["Cancel"]) == 0.5
    assert text_recall([], ["anything"]) == 1.0
