"""services.dataset.domain.labels: YOLO label validation and YOLO <-> pixel conversion."""

from __future__ import annotations

import pytest

from services.dataset.domain.labels import (
    LineRejection,
    ParsedLabels,
    PixelBox,
    YoloBox,
    check_pixel_box,
    format_label_text,
    parse_label_text,
    pixels_to_yolo,
    yolo_to_pixels,
)


def test_valid_lines_become_boxes() -> None:
    text = "0 0.5 0.5 0.2 0.4\n1 0.1 0.9 0.05 0.1\r\n  2\t0.3 0.3 1 1  \n"
    parsed = parse_label_text(text, num_classes=3)
    assert parsed.invalid == [] and parsed.duplicates == []
    assert parsed.boxes == [
        YoloBox(0, 0.5, 0.5, 0.2, 0.4),
        YoloBox(1, 0.1, 0.9, 0.05, 0.1),
        YoloBox(2, 0.3, 0.3, 1.0, 1.0),
    ]


def test_blank_lines_are_skipped_but_count_for_line_numbers() -> None:
    text = "\n   \n0 0.5 0.5 0.2 0.2\n\nbad\n"
    parsed = parse_label_text(text, None)
    assert len(parsed.boxes) == 1
    assert [r.line for r in parsed.invalid] == [5]


def test_empty_text_is_a_background_image() -> None:
    assert parse_label_text("", 2) == ParsedLabels([], [], [])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0 0.5 0.5 0.2", "expected 5 values"),
        ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 values"),  # a segmentation/keypoint line
        ("-1 0.5 0.5 0.2 0.2", "is not a non-negative integer"),
        ("1.0 0.5 0.5 0.2 0.2", "is not a non-negative integer"),
        ("cat 0.5 0.5 0.2 0.2", "is not a non-negative integer"),
        ("2 0.5 0.5 0.2 0.2", "class id 2 is out of range (dataset has 2 classes)"),
        ("0 0.5 x 0.2 0.2", "are not numbers"),
        ("0 1.5 0.5 0.2 0.2", "not normalised to 0..1"),
        ("0 0.5 -0.1 0.2 0.2", "not normalised to 0..1"),
        ("0 nan 0.5 0.2 0.2", "not normalised to 0..1"),
        ("0 0.5 0.5 inf 0.2", "not normalised to 0..1"),
        ("0 120 80 40 30", "not normalised to 0..1"),  # pixel coordinates, not YOLO
        ("0 0.5 0.5 0 0.2", "width and height must be greater than 0"),
        ("0 0.5 0.5 0.2 -0.0000001", "width and height must be greater than 0"),
    ],
)
def test_invalid_lines_are_rejected_with_a_reason(line: str, reason: str) -> None:
    parsed = parse_label_text(f"0 0.5 0.5 0.1 0.1\n{line}\n", num_classes=2)
    assert parsed.boxes == [YoloBox(0, 0.5, 0.5, 0.1, 0.1)]
    assert len(parsed.invalid) == 1 and parsed.duplicates == []
    assert parsed.invalid[0].line == 2
    assert reason in parsed.invalid[0].reason
    assert parsed.rejected == parsed.invalid


def test_class_ids_are_unchecked_when_the_class_count_is_unknown() -> None:
    parsed = parse_label_text("57 0.5 0.5 0.1 0.1\n", None)
    assert parsed.invalid == [] and parsed.boxes[0].class_id == 57


def test_float_noise_is_clamped_but_real_overflow_is_refused() -> None:
    parsed = parse_label_text("0 1.0000001 -0.0000005 0.5 1.000000999\n0 0.5 0.5 0.5 1.00001\n", 1)
    assert parsed.boxes == [YoloBox(0, 1.0, 0.0, 0.5, 1.0)]
    assert [r.line for r in parsed.invalid] == [2]


def test_duplicate_boxes_are_dropped_pointing_at_the_first_not_counted_as_invalid() -> None:
    text = "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n0 0.50 0.5 0.200 0.2\n0 1.0000001 0.5 0.2 0.2\n0 1 0.5 0.2 0.2\n"
    parsed = parse_label_text(text, 2)
    assert len(parsed.boxes) == 3
    assert parsed.invalid == []
    assert parsed.duplicates == [LineRejection(3, "duplicate of line 1"), LineRejection(5, "duplicate of line 4")]


def test_rejected_lists_invalid_and_duplicate_lines_in_line_order() -> None:
    parsed = parse_label_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n0 2 0.5 0.2 0.2\n9 0.5 0.5 0.1 0.1\n", 2)
    assert [r.line for r in parsed.invalid] == [3, 4] and [r.line for r in parsed.duplicates] == [2]
    assert [r.line for r in parsed.rejected] == [2, 3, 4]


def test_format_label_text_round_trips() -> None:
    boxes = [YoloBox(0, 0.5, 0.25, 0.125, 1.0), YoloBox(3, 1 / 3, 2 / 3, 0.1, 0.2)]
    text = format_label_text(boxes)
    assert text == "0 0.500000 0.250000 0.125000 1.000000\n3 0.333333 0.666667 0.100000 0.200000\n"
    parsed = parse_label_text(text, 4)
    assert parsed.invalid == []
    assert parsed.boxes[0] == boxes[0]
    assert parsed.boxes[1].x_center == pytest.approx(1 / 3, abs=1e-6)
    assert format_label_text([]) == ""


def test_yolo_to_pixels() -> None:
    assert yolo_to_pixels(YoloBox(2, 0.5, 0.5, 0.5, 0.25), 640, 480) == PixelBox(2, 160.0, 180.0, 480.0, 300.0)


def test_yolo_to_pixels_clamps_boxes_spilling_over_the_edge() -> None:
    assert yolo_to_pixels(YoloBox(0, 0.95, 0.05, 0.2, 0.2), 100, 200) == PixelBox(0, 85.0, 0.0, 100.0, 30.0)


def test_pixels_to_yolo() -> None:
    box = pixels_to_yolo(PixelBox(1, 160, 180, 480, 300), 640, 480)
    assert box == YoloBox(1, 0.5, 0.5, 0.5, 0.25)


@pytest.mark.parametrize(
    "box",
    [PixelBox(0, 0, 0, 640, 480), PixelBox(3, 10.5, 20.25, 11, 21), PixelBox(1, 123.45, 67.89, 400.01, 333.33)],
)
def test_pixel_yolo_round_trip(box: PixelBox) -> None:
    back = yolo_to_pixels(pixels_to_yolo(box, 640, 480), 640, 480)
    assert back.class_id == box.class_id
    assert (back.x1, back.y1, back.x2, back.y2) == pytest.approx((box.x1, box.y1, box.x2, box.y2), abs=0.01)


def test_check_pixel_box_accepts_a_box_touching_the_edges() -> None:
    assert check_pixel_box(PixelBox(1, 0, 0, 640, 480), 640, 480, num_classes=2) is None


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        (PixelBox(0, float("nan"), 0, 10, 10), "finite"),
        (PixelBox(0, 0, 0, float("inf"), 10), "finite"),
        (PixelBox(2, 0, 0, 10, 10), "class_id 2 is out of range (task has 2 classes: 0..1)"),
        (PixelBox(-1, 0, 0, 10, 10), "out of range"),
        (PixelBox(0, 10, 0, 10, 10), "x1 must be less than x2"),
        (PixelBox(0, 0, 20, 10, 10), "y1 less than y2"),
        (PixelBox(0, -1, 0, 10, 10), "lies outside the 640x480 image"),
        (PixelBox(0, 0, 0, 641, 10), "lies outside"),
        (PixelBox(0, 0, 0, 10, 480.5), "lies outside"),
    ],
)
def test_check_pixel_box_rejects(box: PixelBox, reason: str) -> None:
    message = check_pixel_box(box, 640, 480, num_classes=2)
    assert message is not None and reason in message
