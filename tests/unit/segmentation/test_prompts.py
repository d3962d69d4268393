"""predictSam prompts are checked before any work, with the document's error codes."""

from __future__ import annotations

import pytest

from services.common.envelope import EnvelopeError, Err
from services.common.geometry import Box
from services.segmentation.domain.prompts import check_inside, lasso_box, parse_boxes, parse_prompt


def _err(call, *args) -> Err:
    with pytest.raises(EnvelopeError) as raised:
        call(*args)
    return raised.value.err


def test_well_formed_prompts() -> None:
    prompt = parse_prompt([[800, 750], [10.5, 3]], [1, 0], [])
    assert prompt.points == [(800.0, 750.0), (10.5, 3.0)] and prompt.labels == [1, 0] and not prompt.empty
    assert parse_boxes([1, 2, 30.2, 40], "b") == [Box(1, 2, 31, 40)]
    assert parse_boxes([[0, 0, 5, 5], [5, 5, 9, 9]], "b") == [Box(0, 0, 5, 5), Box(5, 5, 9, 9)]
    assert parse_prompt([], [], []).empty
    assert lasso_box([(100, 100), (200, 150), (180, 300)]) == Box(100, 100, 200, 300)


@pytest.mark.parametrize(
    ("points", "labels", "boxes"),
    [
        ([[1]], [1], []),
        ([[1, 2, 3]], [1], []),
        ([["a", 2]], [1], []),
        ([[True, 2]], [1], []),
        ([[float("nan"), 2]], [1], []),
        ([[1, 2]], [], []),
        ([[1, 2]], [2], []),
        ([[1, 2]], [0], []),
        ([], [], [1, 2, 3]),
        ([], [], [5, 5, 1, 1]),
        ([], [], [[0, 0, 1, 1], "x"]),
    ],
)
def test_malformed_prompts_are_806(points, labels, boxes) -> None:
    assert _err(parse_prompt, points, labels, boxes) == Err.DATA_FORMAT_ERROR


def test_prompts_outside_the_image_are_807() -> None:
    assert _err(check_inside, parse_prompt([[640, 10]], [1], []), 640, 480) == Err.INVALID_PARAMETER
    assert _err(check_inside, parse_prompt([], [], [700, 0, 800, 10]), 640, 480) == Err.INVALID_PARAMETER
    check_inside(parse_prompt([[639, 479]], [1], [600, 400, 900, 900]), 640, 480)


def test_a_lasso_needs_an_area() -> None:
    assert _err(lasso_box, [(1, 1)]) == Err.DATA_FORMAT_ERROR
    assert _err(lasso_box, [(1, 1), (1, 50)]) == Err.DATA_FORMAT_ERROR
