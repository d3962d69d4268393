"""describe_text on lines read by the real OCR engine from text rendered here (colours, glyph boxes, line
heights, alignment), plus the cases that need no OCR (no text, flat boxes, bad boxes, the API payload)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.geometry import Box, TextLine
from services.ocr.domain.engine import OcrEngine
from services.ocr.domain.text_info import TextEntry, TextLayout, describe_text
from tests.unit.ocr.test_engine import BLUE, INK, WHITE, Canvas

PAGE = (245, 246, 250)
RED = (220, 38, 38)
PARAGRAPH = ["The quick brown fox jumps", "over the lazy dog", "多行文字对齐测试"]


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    engine = OcrEngine(threads=2)
    engine.warm_up()
    return engine


def describe(engine: OcrEngine, pixels: np.ndarray) -> TextLayout:
    return describe_text(pixels, engine.read(pixels))


def entry_for(layout: TextLayout, msg: str) -> TextEntry:
    return next(entry for entry in layout.entries if entry.msg == msg)


def assert_color_near(actual: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int) -> None:
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance, (actual, expected)


def draw_paragraph(canvas: Canvas, align: str, *, top: int, pitch: int, size: int = 20) -> list[Box]:
    """PARAGRAPH's lines aligned within the band x = 100..500, `pitch` pixels apart."""
    drawn = []
    for index, text in enumerate(PARAGRAPH):
        width = canvas.text_width(text, size)
        x = {"left": 100, "center": 300 - width // 2, "right": 500 - width}[align]
        drawn.append(canvas.text(x, top + index * pitch, text, size, INK))
    return drawn


def test_button_and_page_text_colors_and_boxes(engine: OcrEngine) -> None:
    canvas = Canvas(420, 220)
    canvas.fill(Box(30, 30, 250, 90), BLUE)
    on_button = canvas.text(50, 45, "提交申请", 24, WHITE)
    on_page = canvas.text(30, 130, "Email address", 16, INK)

    layout = describe(engine, canvas.pixels)

    button, label = entry_for(layout, "提交申请"), entry_for(layout, "Email address")
    assert_color_near(button.background_color, BLUE, 3)
    assert_color_near(button.color, WHITE, 3)
    assert_color_near(label.background_color, WHITE, 3)
    assert_color_near(label.color, INK, 3)
    # Entry boxes are the glyphs' extent, tighter than the detector's padded boxes.
    assert button.box.iou(on_button) >= 0.8
    assert label.box.iou(on_page) >= 0.8


def test_tight_button_edges_do_not_count_as_text(engine: OcrEngine) -> None:
    # The detector's box pokes out of this snug button, so the page colour (far from blue, like the white
    # text) shows at the box sides; it must not enlarge the box or colour the text.
    canvas = Canvas(400, 200, background=PAGE)
    canvas.fill(Box(40, 40, 170, 72), BLUE, radius=4)
    drawn = canvas.text(50, 44, "Submit order", 18, WHITE)
    canvas.text(30, 130, "用户名", 14, RED)

    layout = describe(engine, canvas.pixels)

    button = entry_for(layout, "Submit order")
    assert_color_near(button.background_color, BLUE, 3)
    assert_color_near(button.color, WHITE, 3)
    assert button.box.iou(drawn) >= 0.8
    label = entry_for(layout, "用户名")
    assert_color_near(label.background_color, PAGE, 3)
    assert_color_near(label.color, RED, 8)


def test_colors_survive_jpeg_compression(engine: OcrEngine) -> None:
    canvas = Canvas(420, 220)
    canvas.fill(Box(30, 30, 250, 90), BLUE)
    canvas.text(50, 45, "提交申请", 24, WHITE)
    canvas.text(30, 130, "Email address", 18, INK)
    encoded = io.BytesIO()
    canvas.image.save(encoded, format="JPEG", quality=85)
    pixels = np.asarray(Image.open(encoded).convert("RGB"))

    layout = describe(engine, pixels)

    button, label = entry_for(layout, "提交申请"), entry_for(layout, "Email address")
    assert_color_near(button.background_color, BLUE, 8)
    # 4:2:0 chroma subsampling tints thin white strokes with the blue around them.
    assert_color_near(button.color, WHITE, 32)
    assert_color_near(label.background_color, WHITE, 8)
    assert_color_near(label.color, INK, 16)


@pytest.mark.parametrize("pitch", [28, 36])
def test_line_height_of_a_paragraph_is_its_line_pitch(engine: OcrEngine, pitch: int) -> None:
    canvas = Canvas(600, 300)
    draw_paragraph(canvas, "left", top=60, pitch=pitch)

    layout = describe(engine, canvas.pixels)

    assert [entry.msg for entry in layout.entries] == PARAGRAPH
    assert all(abs(entry.line_height - pitch) <= 2 for entry in layout.entries)


def test_a_lone_line_gets_its_height_times_1_2(engine: OcrEngine) -> None:
    canvas = Canvas(300, 100)
    canvas.text(30, 30, "提交申请", 20, INK)

    (entry,) = describe(engine, canvas.pixels).entries

    assert entry.line_height == round(entry.box.height * 1.2)
    assert 20 <= entry.line_height <= 28  # a 20 px CJK font: glyphs about 20 px tall


def test_heading_and_separate_blocks_are_not_one_paragraph(engine: OcrEngine) -> None:
    canvas = Canvas(900, 420)
    canvas.text(100, 14, "用户管理", 36, INK)  # heading: 1.8 x the body size, right above the paragraph
    draw_paragraph(canvas, "left", top=80, pitch=30)
    canvas.text(620, 80, "Account", 20, INK)  # same rows, another column
    canvas.text(620, 110, "Payment", 20, INK)
    canvas.text(100, 320, "Export", 20, INK)  # far below the paragraph

    layout = describe(engine, canvas.pixels)

    assert entry_for(layout, "用户管理").line_height == round(entry_for(layout, "用户管理").box.height * 1.2)
    assert all(abs(entry_for(layout, text).line_height - 30) <= 2 for text in [*PARAGRAPH, "Account", "Payment"])
    assert entry_for(layout, "Export").line_height == round(entry_for(layout, "Export").box.height * 1.2)


@pytest.mark.parametrize("align", ["left", "center", "right"])
def test_alignment_of_paragraphs(engine: OcrEngine, align: str) -> None:
    canvas = Canvas(600, 400)
    draw_paragraph(canvas, align, top=40, pitch=32)
    draw_paragraph(canvas, align, top=240, pitch=28, size=16)

    assert describe(engine, canvas.pixels).align == align


def test_single_lines_only_are_left_aligned(engine: OcrEngine) -> None:
    canvas = Canvas(600, 300)
    canvas.text(300, 40, "Submit order", 20, INK)
    canvas.text(100, 200, "用户名", 20, INK)

    layout = describe(engine, canvas.pixels)

    assert len(layout.entries) == 2
    assert layout.align == "left"


def test_no_text(engine: OcrEngine) -> None:
    pixels = np.full((200, 300, 3), 255, np.uint8)
    layout = describe(engine, pixels)
    assert layout == TextLayout(entries=[], align=None)
    assert layout.to_payload() == []


def test_flat_box_keeps_its_box_and_contrasts_with_the_background() -> None:
    pixels = np.zeros((60, 120, 3), np.uint8)
    pixels[:, 60:] = (250, 250, 250)
    dark, light = Box(5, 5, 50, 30), Box(65, 5, 110, 30)

    layout = describe_text(pixels, [TextLine(dark, "a", 0.9), TextLine(light, "b", 0.9)])

    assert [(e.box, e.background_color, e.color) for e in layout.entries] == [
        (dark, (0, 0, 0), (255, 255, 255)),
        (light, (250, 250, 250), (0, 0, 0)),
    ]


def test_payload_matches_the_api() -> None:
    entry = TextEntry(Box(10, 20, 130, 44), "提交申请", (49, 97, 245), (255, 255, 255), 28)
    assert TextLayout(entries=[entry], align="left").to_payload() == [
        {
            "left_top_coord": [10, 20],
            "width": 120,
            "height": 24,
            "msg": "提交申请",
            "backgroundColor": [49, 97, 245],
            "color": [255, 255, 255],
            "line_height": 28,
        },
        {"align": "left"},
    ]


def test_rejects_boxes_outside_the_image() -> None:
    with pytest.raises(InvalidArgument, match="outside"):
        describe_text(np.zeros((50, 50, 3), np.uint8), [TextLine(Box(60, 0, 80, 10), "x", 0.9)])


def test_rejects_images_that_are_not_rgb_bytes() -> None:
    with pytest.raises(InvalidArgument, match="RGB uint8"):
        describe_text(np.zeros((50, 50), np.uint8), [])
