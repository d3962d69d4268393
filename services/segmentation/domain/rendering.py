"""Synthetic UI components: the built-in component classifier is trained on single-component crops
(`render_component`).

Everything is drawn by one routine, `draw_component(canvas, kind, box, style, text)` (Containers too), which the
page builder of the tests and benchmarks (synthetic/pages.py) uses as well, so a crop looks exactly like the same
component on a page.

Randomness lives in two places only: `random_theme` (page-wide colours: light or dark, brand colour) and
`random_style` (per-component choices: size scale, radius, border, shadow, checked/on, glyph, picture kind).
Drawing itself is deterministic given the style, which carries a seed for textured pictures. Every shape is
drawn to fill its box exactly (a Text box is its ink), so boxes are tight ground truth.

`text` conventions: lines separated by "\n". A Text draws its lines as one block; a Bar draws its items (the
first one is the title of a navigation bar, the tab labels of a tab bar; a progress bar has none).
"""

from __future__ import annotations

import colorsys
import random
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.common.errors import InvalidArgument
from services.common.fonts import cjk_font
from services.common.geometry import Box

COMPONENT_TYPES: tuple[str, ...] = (
    "Button", "Input", "Text", "Image", "Bar", "Checkbox", "Radio", "Switch", "Select", "Icon",
)  # fmt: skip
CONTAINER_TYPE = "Container"

RGB = tuple[int, int, int]

PICTURES: tuple[str, ...] = ("gradient", "noise", "landscape", "shapes", "avatar")
BAR_VARIANTS: tuple[str, ...] = ("nav", "tabs", "segmented", "progress")

_BRANDS: tuple[RGB, ...] = (
    (37, 99, 235), (22, 119, 255), (64, 158, 255), (16, 185, 129), (34, 197, 94), (220, 38, 38), (239, 68, 68),
    (124, 58, 237), (147, 51, 234), (234, 88, 12), (245, 158, 11), (13, 148, 136), (219, 39, 119), (17, 24, 39),
    (7, 193, 96), (250, 84, 28),
)  # fmt: skip

EN_LABELS = (
    "Username", "Email", "Password", "Full name", "Phone", "Address", "Company", "City", "Country", "Amount",
    "Start date", "Description", "Title", "Category", "Status", "Notes", "Website", "Project name",
)  # fmt: skip
ZH_LABELS = (
    "用户名", "邮箱", "密码", "姓名", "手机号", "地址", "公司名称", "城市", "国家", "金额", "开始日期", "描述", "标题",
    "分类", "状态", "备注", "项目名称", "联系人",
)  # fmt: skip
_EN_BUTTONS = (
    "Submit", "Cancel", "Save", "Sign in", "Sign up", "Next", "Back", "Delete", "Edit", "Confirm", "Apply",
    "Search", "Upload", "Download", "Continue", "Add item", "Export", "Reset",
)  # fmt: skip
_ZH_BUTTONS = (
    "提交", "取消", "保存", "登录", "注册", "下一步", "返回", "删除", "编辑", "确定", "应用", "搜索", "上传",
    "下载", "继续", "新增", "导出", "重置",
)  # fmt: skip
_EN_PLACEHOLDERS = ("Enter your email", "Search...", "Type here", "Your name", "Enter password", "example.com")
_ZH_PLACEHOLDERS = ("请输入用户名", "请输入邮箱", "搜索", "请输入内容", "请选择日期", "请输入手机号")
_EN_VALUES = ("john@example.com", "Alice Smith", "2024-05-01", "Shanghai", "42.50", "Acme Inc.", "Option A")
_ZH_VALUES = ("张三", "北京市朝阳区", "2024年5月1日", "技术部", "已完成", "上海分公司", "选项一")
_EN_WORDS = [
    "the",
    "project",
    "dashboard",
    "shows",
    "recent",
    "activity",
    "for",
    "your",
    "team",
    "members",
    "and",
    "lets",
    "you",
    "review",
    "pending",
    "tasks",
    "update",
    "settings",
    "invite",
    "new",
    "people",
    "track",
    "progress",
    "across",
    "every",
    "release",
    "schedule",
    "reports",
    "export",
    "data",
    "manage",
    "billing",
    "and",
    "keep",
    "notes",
    "on",
    "customer",
    "requests",
    "in",
    "one",
    "place",
    "with",
    "simple",
    "tools",
]
_ZH_PHRASES = (
    "本页面展示团队的最新动态", "您可以在这里查看待办事项", "修改设置并邀请新成员", "跟踪每个版本的进度",
    "导出报表数据", "管理账单信息", "记录客户的需求", "所有操作都会自动保存", "请在提交前确认信息无误",
)  # fmt: skip
EN_NAV = ("Home", "Products", "Pricing", "About", "Docs", "Blog", "Contact", "Settings", "Help")
ZH_NAV = ("首页", "产品", "价格", "关于我们", "文档", "博客", "联系", "设置", "帮助")
EN_TITLES = ("Dashboard", "Account settings", "New order", "Profile", "Team members", "Billing", "Reports")
ZH_TITLES = ("控制台", "账户设置", "新建订单", "个人资料", "团队成员", "账单", "数据报表", "用户管理")
_CLOSING = frozenset("，。、；：！？）》」")
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


@dataclass(frozen=True)
class Theme:
    """Page-wide colours."""

    page: RGB
    surface: RGB  # cards and controls
    field: RGB  # input fill
    text: RGB
    muted: RGB  # placeholders, secondary text
    border: RGB
    brand: RGB
    on_brand: RGB  # text on a brand fill
    track: RGB  # unchecked switch, progress track
    dark: bool


@dataclass(frozen=True)
class Style:
    """How one component looks. `variant` depends on the kind: "filled"/"outline"/"soft" for a Button,
    "placeholder"/"filled" for an Input or Select, a glyph name for an Icon, a picture kind for an Image,
    a bar variant for a Bar. `checked` is checked/on for Checkbox, Radio and Switch."""

    theme: Theme
    font_size: int
    radius: int
    border: int
    shadow: bool = False
    variant: str = ""
    checked: bool = False
    icon: str = ""  # leading glyph inside a Button or Input; "" for none
    colour: RGB | None = None  # overrides the kind's main colour (brand or text)
    seed: int = 0  # texture of pictures, filled fraction of progress bars


# ---------------------------------------------------------------------------------------------- colours


def _shade(colour: RGB, amount: float) -> RGB:
    """Towards white (amount > 0) or black (amount < 0)."""
    target = 255 if amount > 0 else 0
    return tuple(round(c + (target - c) * abs(amount)) for c in colour)  # type: ignore[return-value]


def _distance(first: RGB, second: RGB) -> int:
    return max(abs(a - b) for a, b in zip(first, second, strict=True))


def _luminance(colour: RGB) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _random_brand(rng: random.Random) -> RGB:
    if rng.random() < 0.75:
        return rng.choice(_BRANDS)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.9))
    return round(r * 255), round(g * 255), round(b * 255)


def random_theme(rng: random.Random) -> Theme:
    brand = _random_brand(rng)
    on_brand = (255, 255, 255) if _luminance(brand) < 170 else (17, 24, 39)
    if rng.random() < 0.25:
        page = rng.choice(((17, 24, 39), (15, 23, 42), (24, 24, 27), (30, 30, 30)))
        surface = _shade(page, rng.uniform(0.06, 0.12))
        return Theme(
            page=page, surface=surface, field=_shade(page, 0.03), text=(229, 231, 235), muted=(148, 163, 184),
            border=_shade(page, rng.uniform(0.2, 0.3)), brand=brand, on_brand=on_brand,
            track=_shade(page, 0.3), dark=True,
        )  # fmt: skip
    page = rng.choice(((255, 255, 255), (245, 246, 248), (240, 242, 245), (249, 250, 251), (243, 244, 246)))
    grey = rng.choice(((209, 213, 219), (220, 223, 230), (200, 205, 212), (190, 196, 204)))
    return Theme(
        page=page, surface=(255, 255, 255), field=rng.choice(((255, 255, 255), (243, 244, 246))),
        text=rng.choice(((17, 24, 39), (31, 41, 55), (51, 51, 51), (0, 0, 0))),
        muted=rng.choice(((107, 114, 128), (153, 153, 153), (140, 147, 157))), border=grey, brand=brand,
        on_brand=on_brand, track=_shade(grey, 0.2), dark=False,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- text


def _is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def random_text(kind: str, rng: random.Random, *, chinese: bool | None = None, variant: str = "") -> str:
    """Plausible text for a component of `kind` ("" for kinds that carry none); an Input or Select of the
    "placeholder" variant gets a placeholder, otherwise a value."""
    zh = rng.random() < 0.45 if chinese is None else chinese
    text = ""
    if kind == "Button":
        text = rng.choice(_ZH_BUTTONS if zh else _EN_BUTTONS)
    elif kind in ("Input", "Select") and variant == "placeholder":
        text = rng.choice(_ZH_PLACEHOLDERS if zh else _EN_PLACEHOLDERS)
    elif kind in ("Input", "Select"):
        text = rng.choice(_ZH_VALUES if zh else _EN_VALUES)
    elif kind == "Text":
        roll = rng.random()
        if roll < 0.4:
            text = rng.choice(ZH_LABELS if zh else EN_LABELS)
        elif roll < 0.6:
            text = rng.choice(ZH_TITLES if zh else EN_TITLES)
        else:
            text = random_sentence(rng, zh=zh, words=rng.randint(3, 9))
    elif kind == "Bar":
        text = "\n".join(rng.sample(ZH_NAV if zh else EN_NAV, rng.randint(2, 5)))
    return text


def random_sentence(rng: random.Random, *, zh: bool, words: int) -> str:
    if zh:
        return "，".join(rng.choice(_ZH_PHRASES) for _ in range(max(1, words // 4))) + "。"
    start = rng.randrange(len(_EN_WORDS) - words)
    sentence = " ".join(_EN_WORDS[start : start + words])
    return sentence[0].upper() + sentence[1:] + "."


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy wrap at spaces (Latin) or any character (CJK); the last line is cut to fit."""
    tokens = re.findall(r"[\u3000-\u9fff\uff00-\uffef]|[^\s\u3000-\u9fff\uff00-\uffef]+\s*", text)
    lines: list[str] = []
    current = ""
    for token in tokens:
        # A closing punctuation mark never starts a line.
        if current and token not in _CLOSING and font.getlength(current + token.rstrip()) > width:
            lines.append(current.rstrip())
            current = ""
        current += token
    if current.strip():
        lines.append(current.rstrip())
    lines = lines[:max_lines]
    return [fit_text(line, font, width) for line in lines]


def fit_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-1].rstrip()
    return text


def _line_step(font_size: int) -> int:
    return round(font_size * 1.5)


def text_extent(text: str, font_size: int) -> tuple[int, int, int, int]:
    """Ink bounds (left, top, right, bottom) of a block of lines drawn with its origin at (0, 0)."""
    font = cjk_font(font_size)
    step = _line_step(font_size)
    bounds = [font.getbbox(line) for line in text.split("\n") if line]
    if not bounds:
        return 0, 0, 0, 0
    tops = [b[1] + i * step for i, b in enumerate(bounds)]
    bottoms = [b[3] + i * step for i, b in enumerate(bounds)]
    return min(b[0] for b in bounds), min(tops), max(b[2] for b in bounds), max(bottoms)


def text_size(text: str, font_size: int) -> tuple[int, int]:
    left, top, right, bottom = text_extent(text, font_size)
    return right - left, bottom - top


def _draw_text_block(
    draw: ImageDraw.ImageDraw, corner: tuple[float, float], text: str, font_size: int, colour: RGB
) -> None:
    """Draws `text` so that its ink's top-left corner lands on `corner`."""
    x, y = corner
    font = cjk_font(font_size)
    left, top, _, _ = text_extent(text, font_size)
    for i, line in enumerate(text.split("\n")):
        draw.text((round(x - left), round(y - top + i * _line_step(font_size))), line, font=font, fill=colour)


def _draw_centred_text(draw: ImageDraw.ImageDraw, box: Box, text: str, font_size: int, colour: RGB) -> None:
    width, height = text_size(text, font_size)
    _draw_text_block(draw, ((box.x0 + box.x1 - width) / 2, (box.y0 + box.y1 - height) / 2), text, font_size, colour)


# ---------------------------------------------------------------------------------------------- glyphs


@dataclass(frozen=True)
class _Frame:
    """Where a glyph goes: inclusive corners, side, centre and stroke width."""

    x0: float
    y0: float
    x1: float
    y1: float
    size: float
    cx: float
    cy: float
    stroke: int

    @property
    def half(self) -> float:
        return self.stroke / 2


Pen = ImageDraw.ImageDraw


def _search(draw: Pen, f: _Frame, colour: RGB) -> None:
    radius = f.size * 0.36
    draw.ellipse((f.x0, f.y0, f.x0 + 2 * radius, f.y0 + 2 * radius), outline=colour, width=f.stroke)
    draw.line((f.x0 + 1.7 * radius, f.y0 + 1.7 * radius, f.x1 - f.half, f.y1 - f.half), fill=colour, width=f.stroke + 1)


def _close(draw: Pen, f: _Frame, colour: RGB) -> None:
    draw.line((f.x0 + f.half, f.y0 + f.half, f.x1 - f.half, f.y1 - f.half), fill=colour, width=f.stroke)
    draw.line((f.x0 + f.half, f.y1 - f.half, f.x1 - f.half, f.y0 + f.half), fill=colour, width=f.stroke)


def _menu(draw: Pen, f: _Frame, colour: RGB) -> None:
    for y in (f.y0 + f.size * 0.15, f.cy, f.y1 - f.size * 0.15):
        draw.line((f.x0, y, f.x1, y), fill=colour, width=f.stroke)


def _star(draw: Pen, f: _Frame, colour: RGB) -> None:
    points = []
    for i in range(10):
        angle = -np.pi / 2 + i * np.pi / 5
        reach = f.size / 2 if i % 2 == 0 else f.size * 0.2
        points.append((f.cx + reach * np.cos(angle), f.cy + 0.1 * f.size + reach * np.sin(angle)))
    draw.polygon(points, fill=colour)


def _arrow(draw: Pen, f: _Frame, colour: RGB) -> None:
    tip = (f.x1 - f.half, f.cy)
    draw.line((f.x0, f.cy, *tip), fill=colour, width=f.stroke)
    draw.line((f.cx + f.size * 0.1, f.y0 + f.size * 0.12, *tip), fill=colour, width=f.stroke)
    draw.line((f.cx + f.size * 0.1, f.y1 - f.size * 0.12, *tip), fill=colour, width=f.stroke)


def _plus(draw: Pen, f: _Frame, colour: RGB) -> None:
    draw.rectangle((f.cx - f.half, f.y0, f.cx + f.half, f.y1), fill=colour)
    draw.rectangle((f.x0, f.cy - f.half, f.x1, f.cy + f.half), fill=colour)


def _home(draw: Pen, f: _Frame, colour: RGB) -> None:
    draw.polygon(((f.cx, f.y0), (f.x1, f.cy), (f.x0, f.cy)), fill=colour)
    draw.rectangle((f.x0 + f.size * 0.18, f.cy, f.x1 - f.size * 0.18, f.y1), outline=colour, width=f.stroke)


def _bell(draw: Pen, f: _Frame, colour: RGB) -> None:
    side = f.size * 0.12
    draw.chord((f.x0 + side, f.y0, f.x1 - side, f.y1 - f.size * 0.1), 180, 360, fill=colour)
    draw.rectangle((f.x0 + side, f.cy - 1, f.x1 - side, f.y1 - f.size * 0.22), fill=colour)
    draw.rectangle((f.x0, f.y1 - f.size * 0.24, f.x1, f.y1 - f.size * 0.14), fill=colour)
    draw.ellipse((f.cx - side, f.y1 - f.size * 0.2, f.cx + side, f.y1), fill=colour)


def _gear(draw: Pen, f: _Frame, colour: RGB) -> None:
    for i in range(8):
        angle = i * np.pi / 4
        reach = f.size / 2 - f.half
        draw.line((f.cx, f.cy, f.cx + np.cos(angle) * reach, f.cy + np.sin(angle) * reach), fill=colour,
                  width=f.stroke + 1)  # fmt: skip
    inset = f.size * 0.15
    draw.ellipse((f.x0 + inset, f.y0 + inset, f.x1 - inset, f.y1 - inset), fill=colour)
    hole = f.size * 0.14
    draw.ellipse((f.cx - hole, f.cy - hole, f.cx + hole, f.cy + hole), fill=_contrast(colour))


def _check(draw: Pen, f: _Frame, colour: RGB) -> None:
    points = (
        (f.x0 + f.half, f.cy),
        (f.x0 + f.size * 0.38, f.y1 - f.size * 0.15),
        (f.x1 - f.half, f.y0 + f.size * 0.15),
    )
    draw.line(points, fill=colour, width=f.stroke + 1, joint="curve")


def _heart(draw: Pen, f: _Frame, colour: RGB) -> None:
    lobe = f.size / 2
    draw.ellipse((f.x0, f.y0, f.x0 + lobe, f.y0 + lobe), fill=colour)
    draw.ellipse((f.x1 - lobe, f.y0, f.x1, f.y0 + lobe), fill=colour)
    draw.polygon(((f.x0 + 0.5, f.y0 + lobe * 0.6), (f.x1 - 0.5, f.y0 + lobe * 0.6), (f.cx, f.y1)), fill=colour)


def _user(draw: Pen, f: _Frame, colour: RGB) -> None:
    draw.ellipse((f.cx - f.size * 0.22, f.y0, f.cx + f.size * 0.22, f.y0 + f.size * 0.44), fill=colour)
    draw.chord((f.x0, f.y0 + f.size * 0.52, f.x1, f.y1 + f.size * 0.45), 180, 360, fill=colour)


_GLYPH_DRAWERS = {
    "search": _search, "close": _close, "menu": _menu, "star": _star, "arrow": _arrow, "plus": _plus,
    "home": _home, "bell": _bell, "gear": _gear, "check": _check, "heart": _heart, "user": _user,
}  # fmt: skip
GLYPHS: tuple[str, ...] = tuple(_GLYPH_DRAWERS)


def draw_glyph(draw: Pen, glyph: str, box: Box, colour: RGB) -> None:
    """A line-art symbol filling the square centred in `box`."""
    drawer = _GLYPH_DRAWERS.get(glyph)
    if drawer is None:
        raise InvalidArgument(f"unknown glyph {glyph!r}; known: {', '.join(GLYPHS)}")
    size = min(box.width, box.height)
    if size < 3:
        return
    x0, y0 = box.x0 + (box.width - size) // 2, box.y0 + (box.height - size) // 2
    x1, y1 = x0 + size - 1, y0 + size - 1
    frame = _Frame(x0, y0, x1, y1, size, (x0 + x1) / 2, (y0 + y1) / 2, stroke=max(1, round(size / 9)))
    drawer(draw, frame, colour)


def _contrast(colour: RGB) -> RGB:
    return (255, 255, 255) if _luminance(colour) < 128 else (0, 0, 0)


# ---------------------------------------------------------------------------------------------- pictures


def _picture(variant: str, width: int, height: int, seed: int) -> Image.Image:
    """A width x height picture: gradient, smooth noise, landscape, flat shapes, or an avatar (a face on a
    disc; the disc's outside is left for the caller to mask)."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)

    def colour() -> RGB:
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.0))
        return round(r * 255), round(g * 255), round(b * 255)

    if variant == "gradient":
        start, end = np.array(colour(), float), np.array(colour(), float)
        ys, xs = np.mgrid[0:height, 0:width]
        angle = rng.uniform(0, np.pi)
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
        pixels = start + (end - start) * t[..., None]
        return Image.fromarray(pixels.astype(np.uint8))
    if variant == "noise":
        cells = noise.integers(0, 256, size=(rng.randint(2, 6), rng.randint(2, 6), 3), dtype=np.uint8)
        smooth = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
        grain = noise.normal(0, rng.uniform(4, 18), size=(height, width, 1))
        return Image.fromarray(np.clip(np.asarray(smooth, float) + grain, 0, 255).astype(np.uint8))
    image = Image.new("RGB", (width, height), colour())
    draw = ImageDraw.Draw(image)
    if variant == "landscape":
        sky_top, sky_bottom = np.array(colour(), float), np.array((230, 236, 245), float)
        t = np.linspace(0, 1, height)[:, None, None]
        sky = np.broadcast_to(sky_top + (sky_bottom - sky_top) * t, (height, width, 3))
        image = Image.fromarray(sky.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        sun = min(width, height) * rng.uniform(0.08, 0.16)
        sx, sy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.15, 0.4) * height
        draw.ellipse((sx - sun, sy - sun, sx + sun, sy + sun), fill=(255, 214, 102))
        for layer in range(rng.randint(1, 3)):
            base = height * (0.55 + 0.12 * layer)
            peaks = [(0, height), (0, base)]
            for x in np.linspace(0, width, rng.randint(3, 6)):
                peaks.append((x, base - rng.uniform(0.05, 0.35) * height))
            peaks += [(width, base), (width, height)]
            draw.polygon(peaks, fill=_shade((60, 110, 70), -0.2 * layer))
    elif variant == "shapes":
        for _ in range(rng.randint(3, 8)):
            x, y = rng.uniform(-0.2, 1) * width, rng.uniform(-0.2, 1) * height
            w, h = rng.uniform(0.15, 0.6) * width, rng.uniform(0.15, 0.6) * height
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + w, y + h), fill=colour())
    elif variant == "avatar":
        draw.ellipse((width * 0.3, height * 0.18, width * 0.7, height * 0.58), fill=colour())
        draw.chord((width * 0.1, height * 0.62, width * 0.9, height * 1.5), 180, 360, fill=colour())
    else:
        raise InvalidArgument(f"unknown picture {variant!r}; known: {', '.join(PICTURES)}")
    return image


# ---------------------------------------------------------------------------------------------- components


def _xy(box: Box) -> tuple[int, int, int, int]:
    """PIL's inclusive rectangle corners for an exclusive Box."""
    return box.x0, box.y0, box.x1 - 1, box.y1 - 1


def _panel(draw: ImageDraw.ImageDraw, box: Box, fill: RGB | None, style: Style, outline: RGB | None = None) -> None:
    """A rounded rectangle filling `box`, with the style's border and a soft drop shadow beneath it."""
    radius = min(style.radius, box.height // 2, box.width // 2)
    if style.shadow:
        shadow = _shade(style.theme.page, -0.08 if not style.theme.dark else -0.3)
        draw.rounded_rectangle(_xy(Box(box.x0, box.y0 + 2, box.x1, box.y1 + 2)), radius, fill=shadow)
    width = style.border if outline is not None else 0
    draw.rounded_rectangle(_xy(box), radius, fill=fill, outline=outline, width=width)


def _leading_icon_size(box: Box, style: Style) -> int:
    return min(box.height - 4, round(style.font_size * 1.1))


def _draw_labelled(draw: Pen, box: Box, style: Style, text: str, colour: RGB, *, centred: bool) -> None:
    """Text (and the style's leading icon) inside a control, centred or left-aligned after padding."""
    font_size = style.font_size
    icon = _leading_icon_size(box, style) if style.icon else 0
    gap = round(font_size * 0.5) if icon else 0
    width, height = text_size(text, font_size) if text else (0, 0)
    if centred:
        x = (box.x0 + box.x1 - (icon + gap + width)) / 2
    else:
        x = box.x0 + max(style.border + 2, round(font_size * 0.8))
    if icon:
        y = round((box.y0 + box.y1 - icon) / 2)
        draw_glyph(draw, style.icon, Box(round(x), y, round(x) + icon, y + icon), colour)
    if text:
        _draw_text_block(draw, (x + icon + gap, (box.y0 + box.y1 - height) / 2), text, font_size, colour)


def _draw_button(draw: ImageDraw.ImageDraw, box: Box, style: Style, text: str) -> None:
    theme = style.theme
    brand = style.colour or theme.brand
    if style.variant == "outline":
        _panel(draw, box, theme.surface, style, outline=brand)
        ink = brand
    elif style.variant == "soft":
        _panel(draw, box, _shade(brand, 0.85) if not theme.dark else _shade(brand, -0.6), style)
        ink = brand if not theme.dark else _shade(brand, 0.5)
    else:
        _panel(draw, box, brand, style)
        ink = theme.on_brand
    _draw_labelled(draw, box, style, text, ink, centred=True)


def _draw_field(draw: ImageDraw.ImageDraw, box: Box, style: Style, text: str, *, chevron: bool) -> None:
    theme = style.theme
    _panel(draw, box, theme.field, style, outline=theme.border if style.border else None)
    ink = theme.muted if style.variant == "placeholder" else theme.text
    _draw_labelled(draw, box, style, text, ink, centred=False)
    if chevron:
        size = max(4, round(style.font_size * 0.35))
        cx = box.x1 - round(style.font_size * 0.8) - size
        cy = (box.y0 + box.y1) / 2
        draw.line(
            ((cx - size, cy - size / 2), (cx, cy + size / 2), (cx + size, cy - size / 2)),
            fill=theme.muted, width=max(1, round(style.font_size / 10)),
        )  # fmt: skip


def _draw_checkbox(draw: ImageDraw.ImageDraw, box: Box, style: Style) -> None:
    theme = style.theme
    brand = style.colour or theme.brand
    radius = min(style.radius, box.width // 4)
    if style.checked:
        draw.rounded_rectangle(_xy(box), radius, fill=brand)
        inset = max(2, box.width // 5)
        draw_glyph(draw, "check", Box(box.x0 + inset, box.y0 + inset, box.x1 - inset, box.y1 - inset), theme.on_brand)
    else:
        draw.rounded_rectangle(_xy(box), radius, fill=theme.field, outline=theme.border, width=max(1, style.border))


def _draw_radio(draw: ImageDraw.ImageDraw, box: Box, style: Style) -> None:
    theme = style.theme
    brand = style.colour or theme.brand
    ring = max(1, style.border)
    if style.checked:
        draw.ellipse(_xy(box), fill=theme.field, outline=brand, width=max(2, min(box.width, box.height) // 8))
        inset = min(box.width, box.height) * 0.3
        dot = (box.x0 + inset, box.y0 + inset, box.x1 - 1 - inset, box.y1 - 1 - inset)
        if dot[2] >= dot[0] and dot[3] >= dot[1]:
            draw.ellipse(dot, fill=brand)
    else:
        draw.ellipse(_xy(box), fill=theme.field, outline=theme.border, width=ring)


def _draw_switch(draw: ImageDraw.ImageDraw, box: Box, style: Style) -> None:
    theme = style.theme
    radius = box.height // 2
    draw.rounded_rectangle(_xy(box), radius, fill=(style.colour or theme.brand) if style.checked else theme.track)
    inset = max(1, box.height // 8)
    knob = min(box.height, box.width) - 2 * inset
    if knob >= 2:
        x = box.x1 - inset - knob if style.checked else box.x0 + inset
        draw.ellipse((x, box.y0 + inset, x + knob - 1, box.y0 + inset + knob - 1), fill=(255, 255, 255))


def _draw_icon(draw: ImageDraw.ImageDraw, box: Box, style: Style) -> None:
    colour = style.colour or style.theme.text
    if style.shadow:  # an app-style tile behind the glyph
        side = min(box.width, box.height)
        draw.rounded_rectangle(_xy(box), min(style.radius, side // 3), fill=colour)
        inset = max(1, side // 5)
        draw_glyph(draw, style.variant, Box(box.x0 + inset, box.y0 + inset, box.x1 - inset, box.y1 - inset),
                   _contrast(colour))  # fmt: skip
    else:
        draw_glyph(draw, style.variant, box, colour)


def _draw_image(canvas: Image.Image, box: Box, style: Style) -> None:
    picture = _picture(style.variant, box.width, box.height, style.seed)
    mask = Image.new("L", (box.width, box.height), 0)
    if style.variant == "avatar":
        ImageDraw.Draw(mask).ellipse((0, 0, box.width - 1, box.height - 1), fill=255)
    else:
        radius = min(style.radius, box.width // 2, box.height // 2)
        ImageDraw.Draw(mask).rounded_rectangle((0, 0, box.width - 1, box.height - 1), radius, fill=255)
    canvas.paste(picture, (box.x0, box.y0), mask)


def _draw_bar(draw: ImageDraw.ImageDraw, box: Box, style: Style, text: str) -> None:
    theme = style.theme
    brand = style.colour or theme.brand
    items = [item for item in text.split("\n") if item]
    pad = round(style.font_size * 1.2)
    if style.variant == "progress":
        radius = box.height // 2 if style.radius else 0
        draw.rounded_rectangle(_xy(box), radius, fill=theme.track)
        filled = max(1, round(box.width * (0.1 + 0.85 * random.Random(style.seed).random())))
        draw.rounded_rectangle(_xy(Box(box.x0, box.y0, box.x0 + filled, box.y1)), radius, fill=brand)
        return
    if style.variant == "nav":
        fill = brand if style.checked else theme.surface
        ink = theme.on_brand if style.checked else theme.text
        draw.rectangle(_xy(box), fill=fill)
        if not style.checked:
            draw.line((box.x0, box.y1 - 1, box.x1 - 1, box.y1 - 1), fill=theme.border)
        x = box.x0 + pad
        if style.icon:
            icon = round(style.font_size * 1.3)
            draw_glyph(draw, style.icon, Box(x, (box.y0 + box.y1 - icon) // 2, x + icon, (box.y0 + box.y1 + icon) // 2),
                       ink)  # fmt: skip
            x += icon + pad // 2
        for i, item in enumerate(items):
            size = round(style.font_size * 1.25) if i == 0 else style.font_size
            width, height = text_size(item, size)
            _draw_text_block(draw, (x, (box.y0 + box.y1 - height) / 2), item, size, ink)
            x += width + (pad * 3 if i == 0 else pad * 2)
        return
    # Tabs: equal slots; the first one is active. "tabs" underlines it, "segmented" raises it as a pill.
    track = _shade(theme.surface, 0.15) if theme.dark else _shade(theme.border, 0.4)
    draw.rounded_rectangle(_xy(box), min(style.radius, box.height // 2), fill=track)
    slot = box.width / max(1, len(items))
    for i, item in enumerate(items):
        cell = Box(round(box.x0 + i * slot), box.y0, round(box.x0 + (i + 1) * slot), box.y1)
        active = i == 0
        inset = 3
        if active and style.variant == "segmented" and cell.height > 4 * inset and cell.width > 4 * inset:
            draw.rounded_rectangle(
                _xy(Box(cell.x0 + inset, cell.y0 + inset, cell.x1 - inset, cell.y1 - inset)),
                max(0, min(style.radius, cell.height // 2) - 2), fill=theme.surface,
            )  # fmt: skip
        elif active:
            draw.rectangle(_xy(Box(cell.x0, box.y1 - 3, cell.x1, box.y1)), fill=brand)
        colour = (brand if style.variant == "tabs" else theme.text) if active else theme.muted
        _draw_centred_text(draw, cell, item, style.font_size, colour)


def draw_component(canvas: Image.Image, kind: str, box: Box, style: Style, text: str = "") -> None:
    """Draws one component (or a Container) so that it fills `box` (a Text's ink fills it)."""
    draw = ImageDraw.Draw(canvas)
    if kind == "Button":
        _draw_button(draw, box, style, text)
    elif kind in ("Input", "Select"):
        _draw_field(draw, box, style, text, chevron=kind == "Select")
    elif kind == "Text":
        _draw_text_block(draw, (box.x0, box.y0), text, style.font_size, style.colour or style.theme.text)
    elif kind == "Image":
        _draw_image(canvas, box, style)
    elif kind == "Bar":
        _draw_bar(draw, box, style, text)
    elif kind == "Checkbox":
        _draw_checkbox(draw, box, style)
    elif kind == "Radio":
        _draw_radio(draw, box, style)
    elif kind == "Switch":
        _draw_switch(draw, box, style)
    elif kind == "Icon":
        _draw_icon(draw, box, style)
    elif kind == CONTAINER_TYPE:
        outline = style.theme.border if style.border else None
        _panel(draw, box, style.colour or style.theme.surface, style, outline=outline)
    else:
        raise _unknown_kind(kind)


# ---------------------------------------------------------------------------------------------- styles and sizes


def _unknown_kind(kind: str) -> InvalidArgument:
    return InvalidArgument(f"unknown component kind {kind!r}; known: {', '.join(COMPONENT_TYPES)}")


def random_style(kind: str, theme: Theme, rng: random.Random, *, scale: float = 1.0) -> Style:
    """Per-component look. `scale` is the UI scale (1 = 1x, 2 = retina)."""
    font_size = max(9, round(rng.uniform(12, 16) * scale))
    radius = round(rng.choice((0, 2, 4, 6, 8, 12, 999)) * scale)
    border = rng.choice((1, 1, 1, 2)) if rng.random() < 0.85 else 0
    style = Style(theme=theme, font_size=font_size, radius=radius, border=border, seed=rng.randrange(1 << 30))
    changes: dict[str, object]
    if kind == "Button":
        variant = rng.choice(("filled", "filled", "outline", "soft"))
        icon = rng.choice(GLYPHS) if rng.random() < 0.25 else ""
        changes = {"variant": variant, "icon": icon, "border": max(1, border), "shadow": rng.random() < 0.2}
    elif kind in ("Input", "Select"):
        icon = rng.choice(("search", "user", "bell")) if kind == "Input" and rng.random() < 0.2 else ""
        # A borderless field needs a fill that stands out from the surface it sits on.
        border = border if _distance(theme.field, theme.surface) > 24 else max(1, border)
        changes = {"variant": rng.choice(("placeholder", "filled")), "icon": icon, "border": border}
    elif kind == "Text":
        size = max(9, round(rng.choice((12, 13, 14, 16, 20, 24)) * scale))
        changes = {"colour": rng.choice((theme.text, theme.text, theme.muted, theme.brand)), "font_size": size}
    elif kind == "Image":
        changes = {"variant": rng.choice(PICTURES), "radius": rng.choice((0, 4, 8, 12))}
    elif kind == "Bar":
        icon = rng.choice(("menu", "home", "star")) if rng.random() < 0.4 else ""
        changes = {"variant": rng.choice(BAR_VARIANTS), "checked": rng.random() < 0.5, "icon": icon,
                   "radius": min(radius, 8)}  # fmt: skip
    elif kind in ("Checkbox", "Radio", "Switch"):
        changes = {"checked": rng.random() < 0.5, "radius": min(radius, round(4 * scale))}
    elif kind == "Icon":
        colour = rng.choice((theme.text, theme.muted, theme.brand))
        changes = {"variant": rng.choice(GLYPHS), "colour": colour, "shadow": rng.random() < 0.15}
    elif kind == CONTAINER_TYPE:
        changes = {"shadow": rng.random() < 0.5, "radius": min(radius, round(12 * scale))}
    else:
        raise _unknown_kind(kind)
    return replace(style, **changes)  # type: ignore[arg-type]


def natural_size(kind: str, style: Style, text: str, rng: random.Random) -> tuple[int, int]:
    """A typical (width, height) for the component with this style and text."""
    font_size = style.font_size
    scale = font_size / 14
    control_height = round(font_size * rng.uniform(2.1, 2.8))
    if kind == "Button":
        text_width = text_size(text, font_size)[0] if text else 0
        icon = _leading_icon_size(Box(0, 0, 0, control_height), style) + font_size // 2 if style.icon else 0
        size = text_width + icon + 2 * round(font_size * rng.uniform(1.0, 1.8)), control_height
    elif kind in ("Input", "Select"):
        text_width = text_size(text, font_size)[0] + font_size * 4 if text else 0
        size = max(text_width, round(rng.uniform(140, 340) * scale)), control_height
    elif kind == "Text":
        size = text_size(text, font_size)
    elif kind == "Image" and style.variant == "avatar":
        side = round(rng.uniform(32, 96) * scale)
        size = side, side
    elif kind == "Image":
        size = round(rng.uniform(80, 360) * scale), round(rng.uniform(60, 220) * scale)
    elif kind == "Bar":
        size = _bar_size(style, text, rng)
    elif kind in ("Checkbox", "Radio", "Icon"):
        side = round(rng.uniform(14, 28 if kind == "Icon" else 20) * scale)
        size = side, side
    elif kind == "Switch":
        height = round(rng.uniform(18, 26) * scale)
        size = round(height * rng.uniform(1.7, 2.0)), height
    else:
        raise _unknown_kind(kind)
    return size


def _bar_size(style: Style, text: str, rng: random.Random) -> tuple[int, int]:
    font_size = style.font_size
    scale = font_size / 14
    if style.variant == "progress":
        return round(rng.uniform(120, 420) * scale), max(3, round(rng.uniform(4, 12) * scale))
    widths = [text_size(item, font_size)[0] for item in text.split("\n")] if text else [font_size * 4]
    if style.variant == "nav":
        return round(sum(widths) * 1.6 + font_size * 10 + rng.uniform(0, 300) * scale), round(
            rng.uniform(44, 64) * scale
        )
    return len(widths) * (max(widths) + 2 * font_size), round(rng.uniform(32, 44) * scale)


def _fit_text_to_box(text: str, font_size: int, width: int, height: int) -> tuple[str, int]:
    """A font size whose block is `height` tall, and the text's lines cut to `width`."""
    natural_height = text_size(text, font_size)[1]
    font_size = max(6, round(font_size * height / max(1, natural_height)))
    font = cjk_font(font_size)
    return "\n".join(fit_text(line, font, width) for line in text.split("\n")), font_size


def render_component(
    kind: str, rng: random.Random, *, size: tuple[int, int] | None = None, text: str | None = None
) -> Image.Image:
    """One component of `kind` in a random style, with a 0-4 px margin of page background around it, like a
    crop a segmenter would produce. `size` is the component's (width, height) without the margin."""
    if kind not in COMPONENT_TYPES:
        raise _unknown_kind(kind)
    if size is not None and (size[0] < 2 or size[1] < 2):
        raise InvalidArgument(f"component size must be at least 2x2 pixels, got {size}")
    theme = random_theme(rng)
    style = random_style(kind, theme, rng, scale=rng.uniform(1.0, 2.0))
    if text is None:
        text = random_text(kind, rng, variant=style.variant)
        if kind == "Text" and rng.random() < 0.3:  # a paragraph
            zh = _is_cjk(text)
            text = "\n".join(
                wrap_text(random_sentence(rng, zh=zh, words=20), cjk_font(style.font_size), style.font_size * 18, 3)
            )
    if kind == "Text" and not text.strip():
        raise InvalidArgument("a Text component needs some text")
    width, height = size or natural_size(kind, style, text, rng)
    if size is not None:
        if kind == "Text" and text:
            text, font_size = _fit_text_to_box(text, style.font_size, width, height)
            style = replace(style, font_size=font_size)
        else:
            style = replace(style, font_size=max(6, min(style.font_size, round(height * 0.55))))
    left, top, right, bottom = (rng.randint(0, 4) for _ in range(4))
    background = theme.page if rng.random() < 0.6 else theme.surface
    canvas = Image.new("RGB", (width + left + right, height + top + bottom), background)
    if style.shadow and kind != "Icon":
        style = replace(style, theme=replace(theme, page=background))
    draw_component(canvas, kind, Box(left, top, left + width, top + height), style, text)
    return canvas
