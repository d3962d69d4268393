"""Screenshots with known layouts: whole pages whose every component's tight box is known (`render_page`), and
single components by seed, drawn by the segmentation service's own component renderer
(services/segmentation/domain/rendering.py), so a page shows exactly what the built-in classifier trains on.

The layout segmenter and OCR are measured on these pages (tests, bench/segmentation_bench.py); the service itself
never renders a page.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace

from PIL import Image

from services.common.fonts import cjk_font
from services.common.geometry import Box
from services.segmentation.domain.rendering import (
    CONTAINER_TYPE,
    EN_LABELS,
    EN_NAV,
    EN_TITLES,
    RGB,
    ZH_LABELS,
    ZH_NAV,
    ZH_TITLES,
    Style,
    draw_component,
    fit_text,
    natural_size,
    random_sentence,
    random_style,
    random_text,
    random_theme,
    render_component,
    text_size,
    wrap_text,
)


@dataclass(frozen=True)
class PageComponent:
    kind: str
    box: Box
    text: str = ""
    parent: int | None = None  # index of the Container holding it


@dataclass(frozen=True)
class RenderedPage:
    image: Image.Image
    components: list[PageComponent]


@dataclass(frozen=True)
class _Placed:
    kind: str
    box: Box  # relative to the row's top-left corner
    style: Style
    text: str = ""


class _PageBuilder:
    """Lays a page out top-down: header, optional sidebar, a grid of cards filled row by row."""

    def __init__(self, rng: random.Random, width: int, height: int) -> None:
        self.rng = rng
        self.theme = random_theme(rng)
        self.scale = rng.uniform(1.0, 1.2)
        self.font_size = round(rng.uniform(13, 15) * self.scale)
        self.zh = rng.random() < 0.5  # the page's main language; some strings use the other one
        self.canvas = Image.new("RGB", (width, height), self.theme.page)
        self.components: list[PageComponent] = []
        self.gap = round(rng.uniform(14, 20) * self.scale)

    def style(self, kind: str, **changes: object) -> Style:
        base = random_style(kind, self.theme, self.rng, scale=self.scale)
        if kind not in ("Text", "Icon", "Image"):
            base = replace(base, font_size=self.font_size)
        return replace(base, **changes)  # type: ignore[arg-type]

    def text(self, kind: str, variant: str = "") -> str:
        chinese = self.zh if self.rng.random() < 0.8 else not self.zh
        return random_text(kind, self.rng, chinese=chinese, variant=variant)

    def add(self, kind: str, box: Box, style: Style, text: str = "", parent: int | None = None) -> int:
        draw_component(self.canvas, kind, box, style, text)
        self.components.append(PageComponent(kind, box, text, parent))
        return len(self.components) - 1

    def place(self, items: list[_Placed], x: int, y: int, parent: int | None) -> None:
        for item in items:
            box = Box(item.box.x0 + x, item.box.y0 + y, item.box.x1 + x, item.box.y1 + y)
            self.add(item.kind, box, item.style, item.text, parent)

    # Rows: each returns its items relative to the row's top-left corner, within `width`.

    def text_item(self, text: str, font_size: int, colour: RGB | None = None) -> _Placed:
        style = replace(self.style("Text"), font_size=font_size, colour=colour or self.theme.text)
        width, height = text_size(text, font_size)
        return _Placed("Text", Box(0, 0, width, height), style, text)

    def sized(self, kind: str, width: int | None = None) -> _Placed:
        """A component of `kind` in a random style with fitting text, `width` wide or as wide as it needs."""
        style = self.style(kind)
        text = self.text(kind, style.variant)
        natural_width, height = natural_size(kind, style, text, self.rng)
        return _Placed(kind, Box(0, 0, width or natural_width, height), style, text)

    def row_title(self, width: int) -> list[_Placed]:
        font_size = round(self.font_size * self.rng.uniform(1.3, 1.7))
        text = fit_text(self.rng.choice(ZH_TITLES if self.zh else EN_TITLES), cjk_font(font_size), width)
        return [self.text_item(text, font_size)]

    def row_paragraph(self, width: int) -> list[_Placed]:
        font_size = self.font_size
        words = self.rng.randint(6, 30)
        sentence = random_sentence(self.rng, zh=self.zh, words=words)
        lines = wrap_text(sentence, cjk_font(font_size), width, max_lines=3)
        colour = self.rng.choice((self.theme.text, self.theme.muted))
        return [self.text_item("\n".join(lines), font_size, colour)]

    def row_field(self, width: int) -> list[_Placed]:
        kind = "Input" if self.rng.random() < 0.65 else "Select"
        label = self.text_item(self.rng.choice(ZH_LABELS if self.zh else EN_LABELS), self.font_size)
        control_width = min(width, round(self.rng.uniform(0.5, 1.0) * width))
        if self.rng.random() < 0.5:  # label above the control
            control = self.sized(kind, width=control_width)
            top = label.box.height + round(self.rng.uniform(6, 10) * self.scale)
            return [label, _shift(control, 0, top)]
        label_width = max(label.box.width, round(self.rng.uniform(70, 120) * self.scale))
        control = self.sized(kind, width=max(80, min(control_width, width - label_width - self.gap)))
        return _centre_row([label, control], [0, label_width + self.gap])

    def row_choices(self, width: int) -> list[_Placed]:
        kind = self.rng.choice(("Checkbox", "Radio", "Switch"))
        count = 1 if kind == "Switch" else self.rng.randint(1, 3)
        style = self.style(kind)
        side_width, side_height = natural_size(kind, style, "", self.rng)
        items: list[_Placed] = []
        offsets: list[int] = []
        x = 0
        for i in range(count):
            label = self.text_item(self.text("Text") if count == 1 else self.text("Button"), self.font_size)
            end = x + side_width + round(8 * self.scale) + label.box.width
            if end > width:
                break
            control = _Placed(
                kind, Box(0, 0, side_width, side_height), replace(style, checked=(i == 0) == style.checked)
            )
            items += [control, label]
            offsets += [x, x + side_width + round(8 * self.scale)]
            x = end + round(self.rng.uniform(24, 40) * self.scale)
        return _centre_row(items, offsets)

    def row_buttons(self, width: int) -> list[_Placed]:
        buttons = [self.sized("Button") for _ in range(self.rng.randint(1, 3))]
        spacing = round(self.rng.uniform(8, 16) * self.scale)
        offsets, x = [], 0
        for button in buttons:
            offsets.append(x)
            x += button.box.width + spacing
        total = x - spacing
        while buttons and total > width:
            total -= buttons.pop().box.width + spacing
            offsets.pop()
        start = width - total if self.rng.random() < 0.4 else 0
        return _centre_row(buttons, [start + offset for offset in offsets])

    def row_image(self, width: int) -> list[_Placed]:
        image = self.sized("Image")
        image_width = min(image.box.width, width)
        image_height = image_width if image.style.variant == "avatar" else image.box.height  # avatars stay round
        image = replace(image, box=Box(0, 0, image_width, image_height))
        room = width - image_width - self.gap
        if room < 120:
            return [image]
        lines = wrap_text(
            random_sentence(self.rng, zh=self.zh, words=self.rng.randint(4, 16)), cjk_font(self.font_size), room, 3
        )
        text = self.text_item("\n".join(lines), self.font_size)
        return [image, _shift(text, image_width + self.gap, 0)]

    def row_icons(self, width: int) -> list[_Placed]:
        side = round(self.rng.uniform(16, 24) * self.scale)
        spacing = round(self.rng.uniform(14, 32) * self.scale)
        count = min(self.rng.randint(3, 6), (width + spacing) // (side + spacing))
        icons = [replace(self.sized("Icon"), box=Box(0, 0, side, side)) for _ in range(count)]
        return _centre_row(icons, [i * (side + spacing) for i in range(count)])

    def row_progress(self, width: int) -> list[_Placed]:
        label = self.text_item(fit_text(self.text("Text"), cjk_font(self.font_size), width), self.font_size)
        bar_style = self.style("Bar", variant="progress")
        bar_height = max(4, round(self.rng.uniform(4, 10) * self.scale))
        bar = _Placed("Bar", Box(0, 0, round(width * self.rng.uniform(0.5, 1.0)), bar_height), bar_style)
        return [label, _shift(bar, 0, label.box.height + round(8 * self.scale))]

    def row_tabs(self, width: int) -> list[_Placed]:
        style = self.style("Bar", variant=self.rng.choice(("tabs", "segmented")))
        items = self.rng.sample(ZH_NAV if self.zh else EN_NAV, self.rng.randint(2, 4))
        widest = max(text_size(item, style.font_size)[0] for item in items)
        tab_width = min(widest + 3 * style.font_size, width // len(items))
        height = round(self.rng.uniform(32, 42) * self.scale)
        return [_Placed("Bar", Box(0, 0, tab_width * len(items), height), style, "\n".join(items))]

    # Page parts

    def header(self, width: int) -> int:
        height = round(self.rng.uniform(48, 64) * self.scale)
        # A surface-coloured header on a same-coloured page would show only its bottom line.
        brand_fill = self.rng.random() < 0.5 or self.theme.surface == self.theme.page
        style = self.style("Bar", variant="nav", checked=brand_fill)
        items = [self.title(), *self.rng.sample(ZH_NAV if self.zh else EN_NAV, self.rng.randint(2, 5))]
        self.add("Bar", Box(0, 0, width, height), style, "\n".join(items))
        return height

    def title(self) -> str:
        return self.rng.choice(("VisionMesh", "Acme", "控制台", "Admin", "云平台", "Shop"))

    def sidebar(self, top: int, height: int) -> int:
        width = round(self.rng.uniform(180, 240) * self.scale)
        style = self.style(CONTAINER_TYPE, radius=0, shadow=False, border=1)
        parent = self.add(CONTAINER_TYPE, Box(0, top, width, height), style)
        step = round(self.rng.uniform(36, 46) * self.scale)
        icon_side = round(16 * self.scale)
        with_icons = self.rng.random() < 0.6
        pad = round(20 * self.scale)
        labels = self.rng.sample(ZH_NAV if self.zh else EN_NAV, self.rng.randint(4, 7))
        for i, label in enumerate(labels):
            y = top + pad + i * step
            text = self.text_item(label, self.font_size)
            x = pad
            if with_icons:
                icon = _Placed("Icon", Box(0, 0, icon_side, icon_side), self.style("Icon", colour=self.theme.muted))
                self.place(_centre_row([icon, text], [0, icon_side + round(12 * self.scale)]), x, y, parent)
            else:
                self.place([text], x, y, parent)
        return width

    def card(self, cell: Box, budget: int) -> None:
        """A Container in `cell` filled with rows; it shrinks to its content more often than not."""
        pad = round(self.rng.uniform(16, 24) * self.scale)
        width = cell.width - 2 * pad
        rows: list[tuple[int, list[_Placed]]] = []
        y = pad
        builders = (
            self.row_field, self.row_field, self.row_choices, self.row_buttons, self.row_image, self.row_icons,
            self.row_paragraph, self.row_progress, self.row_tabs,
        )  # fmt: skip
        pending = [self.row_title] if self.rng.random() < 0.7 else []
        used = failures = 0
        while used < budget and failures < 4:
            items = (pending.pop() if pending else self.rng.choice(builders))(width)
            height = max((item.box.y1 for item in items), default=0)
            fits = items and all(item.box.x1 <= width for item in items) and y + height <= cell.height - pad
            if not fits or used + len(items) > budget:
                failures += 1
                continue
            rows.append((y, items))
            used += len(items)
            y += height + self.gap
        bottom = cell.y1 if self.rng.random() < 0.4 else min(cell.y1, cell.y0 + y - self.gap + pad)
        style = self.style(CONTAINER_TYPE)
        if self.theme.surface == self.theme.page or not style.shadow:
            style = replace(style, border=max(1, style.border))
        parent = self.add(CONTAINER_TYPE, Box(cell.x0, cell.y0, cell.x1, max(bottom, cell.y0 + 2 * pad)), style)
        for top, items in rows:
            self.place(items, cell.x0 + pad, cell.y0 + top, parent)

    def grid(self, area: Box, count: int, budget: int) -> None:
        columns = {2: 2, 3: 3, 4: 2, 5: 3, 6: 3}[count] if self.rng.random() < 0.8 else min(count, 2)
        rows = -(-count // columns)
        cell_width = (area.width - (columns - 1) * self.gap) // columns
        cell_height = (area.height - (rows - 1) * self.gap) // rows
        for i in range(count):
            row, column = divmod(i, columns)
            x = area.x0 + column * (cell_width + self.gap)
            y = area.y0 + row * (cell_height + self.gap)
            self.card(Box(x, y, x + cell_width, y + cell_height), max(2, budget // count))


def _shift(item: _Placed, dx: int, dy: int) -> _Placed:
    box = item.box
    return replace(item, box=Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy))


def _centre_row(items: list[_Placed], offsets: list[int]) -> list[_Placed]:
    """Items side by side at the given x offsets, centred vertically on the tallest."""
    height = max((item.box.height for item in items), default=0)
    return [_shift(item, offset, (height - item.box.height) // 2) for item, offset in zip(items, offsets, strict=True)]


def render_page(rng: random.Random, width: int = 1280, height: int = 800) -> RenderedPage:
    """A screenshot-like page: header bar, maybe a sidebar, and 2-6 cards of form rows, with every drawn
    component's tight box. Containers come before the components they hold."""
    if width < 640 or height < 400:
        raise ValueError(f"pages are at least 640x400 pixels, got {width}x{height}")
    page = _PageBuilder(rng, width, height)
    budget = rng.randint(24, 40)
    top = page.header(width)
    left = page.sidebar(top, height) if rng.random() < 0.5 else 0
    margin = round(page.gap * 1.5)
    area = Box(left + margin, top + margin, width - margin, height - margin)
    if rng.random() < 0.6:
        title = page.row_title(area.width // 2)
        page.place(title, area.x0, area.y0, None)
        area = Box(area.x0, area.y0 + title[0].box.height + page.gap, area.x1, area.y1)
    cards = rng.randint(2, 6)
    page.grid(area, cards, budget - len(page.components) - cards)  # the cards count too
    return RenderedPage(page.canvas, page.components)


def page(seed: int, width: int = 1280, height: int = 800) -> RenderedPage:
    return render_page(random.Random(seed), width, height)


def component(kind: str, seed: int) -> Image.Image:
    return render_component(kind, random.Random(seed))


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()
