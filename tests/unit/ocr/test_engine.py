"""OcrEngine on text rendered here with Noto Sans CJK: English and Chinese, on buttons and on plain pages,
checked for the text read and for boxes that cover the drawn glyphs."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.common.errors import InvalidArgument
from services.common.fonts import cjk_font
from services.common.geometry import Box
from services.ocr.domain.engine import OcrEngine

BLUE = (49, 97, 245)
WHITE = (255, 255, 255)
INK = (33, 33, 33)


class Canvas:
    """An RGB image to draw UI-like text on; `text` returns the drawn glyphs' bounding box."""

    def __init__(self, width: int, height: int, background: tuple[int, int, int] = WHITE) -> None:
        self.image = Image.new("RGB", (width, height), background)
        self._draw = ImageDraw.Draw(self.image)

    def fill(self, box: Box, color: tuple[int, int, int], radius: int = 6) -> None:
        self._draw.rounded_rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), radius, fill=color)

    def text(self, x: int, y: int, text: str, size: int, color: tuple[int, int, int]) -> Box:
        self._draw.text((x, y), text, font=cjk_font(size), fill=color)
        return Box(*self._draw.textbbox((x, y), text, font=cjk_font(size)))

    def text_width(self, text: str, size: int) -> int:
        x0, _, x1, _ = self._draw.textbbox((0, 0), text, font=cjk_font(size))
        return x1 - x0

    @property
    def pixels(self) -> np.ndarray:
        return np.asarray(self.image)


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    engine = OcrEngine(threads=2)
    engine.warm_up()
    return engine


@pytest.mark.parametrize(
    ("text", "size", "on_button"),
    [("Submit order", 20, True), ("Email address", 16, False), ("提交申请", 24, True), ("用户名", 18, False)],
)
def test_reads_text_where_it_was_drawn(engine: OcrEngine, text: str, size: int, on_button: bool) -> None:
    canvas = Canvas(360, 120)
    if on_button:
        canvas.fill(Box(30, 30, 250, 90), BLUE)
    drawn = canvas.text(50, 45, text, size, WHITE if on_button else INK)

    lines = engine.read(canvas.pixels)

    assert [line.text for line in lines] == [text]
    assert lines[0].box.contains(drawn, slack=1)
    assert lines[0].box.iou(drawn) >= 0.5
    assert 0.5 <= lines[0].score <= 1.0


def test_reads_a_form_in_reading_order(engine: OcrEngine) -> None:
    canvas = Canvas(640, 240)
    # Same row, different sizes: the larger label starts higher but is still left of the smaller one.
    canvas.text(20, 30, "用户名", 22, INK)
    canvas.text(220, 36, "Email address", 16, INK)
    canvas.text(20, 120, "Forgot password?", 16, INK)
    canvas.fill(Box(300, 100, 500, 160), BLUE)
    canvas.text(340, 115, "提交申请", 20, WHITE)

    lines = engine.read(canvas.pixels)

    assert [line.text for line in lines] == ["用户名", "Email address", "Forgot password?", "提交申请"]


def test_reads_a_dense_page(engine: OcrEngine) -> None:
    rng = random.Random(5)
    words = ["订单", "用户", "管理", "数据", "报表", "Order", "Status", "Payment", "Account", "Export"]
    canvas = Canvas(1280, 800, background=(245, 246, 250))
    drawn: list[tuple[str, Box]] = []
    for row in range(15):
        for column in range(2):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 4)))
            drawn.append((text, canvas.text(60 + 600 * column, 30 + 50 * row, text, rng.choice([14, 16, 20]), INK)))

    lines = engine.read(canvas.pixels)

    assert len(lines) == len(drawn)
    matched = [(max(lines, key=lambda line, box=box: line.box.iou(box)), text, box) for text, box in drawn]
    # The detector pads boxes by about a third of the text height, which weighs most on the 14 px lines.
    assert all(line.box.contains(box, slack=1) and line.box.iou(box) >= 0.4 for line, _, box in matched)
    # Chinese is written without spaces, so the recogniser drops spaces next to Chinese characters; Latin-only
    # lines must keep theirs.
    exact = sum(line.text.replace(" ", "") == text.replace(" ", "") for line, text, _ in matched)
    assert exact >= len(drawn) - 1
    latin = [(line.text, text) for line, text, _ in matched if text.isascii()]
    assert latin and all(read == text for read, text in latin)


def test_blank_image_has_no_lines(engine: OcrEngine) -> None:
    assert engine.read(np.full((200, 300, 3), 255, np.uint8)) == []
    assert engine.read(np.full((200, 300, 3), BLUE, np.uint8)) == []


@pytest.mark.parametrize("shape", [(5, 5, 3), (7, 400, 3), (400, 7, 3)])
def test_tiny_image_has_no_lines(engine: OcrEngine, shape: tuple[int, int, int]) -> None:
    assert engine.read(np.zeros(shape, np.uint8)) == []


@pytest.mark.parametrize(
    "image", [np.zeros((50, 50), np.uint8), np.zeros((50, 50, 4), np.uint8), np.zeros((50, 50, 3), np.float32)]
)
def test_rejects_images_that_are_not_rgb_bytes(engine: OcrEngine, image: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match="RGB uint8"):
        engine.read(image)


def test_min_score_drops_uncertain_lines(engine: OcrEngine) -> None:
    canvas = Canvas(420, 140)
    canvas.text(20, 20, "Submit order", 22, INK)
    canvas.text(20, 80, "Emai1 adress 9x", 12, (200, 200, 200))  # small, faint and misspelled
    scores = sorted(line.score for line in engine.read(canvas.pixels))
    assert len(scores) == 2 and scores[0] < scores[1]

    strict = OcrEngine(min_score=(scores[0] + scores[1]) / 2)
    assert [line.text for line in strict.read(canvas.pixels)] == ["Submit order"]


def test_concurrent_reads_match_sequential_reads(engine: OcrEngine) -> None:
    canvases = []
    for index, text in enumerate(["Submit order", "提交申请", "Email address", "用户名"]):
        canvas = Canvas(300, 90)
        canvas.text(20 + 10 * index, 25, text, 20, INK)
        canvases.append(canvas.pixels)
    sequential = [engine.read(pixels) for pixels in canvases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(engine.read, canvases))
    assert concurrent == sequential


@pytest.mark.parametrize(
    "kwargs", [{"threads": 0}, {"det_limit_side_len": 16}, {"min_score": 1.5}, {"min_score": -0.1}]
)
def test_rejects_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OcrEngine(**kwargs)
