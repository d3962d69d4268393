"""The font for drawing text into images: Noto Sans CJK (Chinese, Japanese, Korean and Latin) from the
cvttf-NotoSansCJK-Regular wheel, so no system font package is needed."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PIL import ImageFont


@cache
def cjk_font_path() -> Path:
    import cvttf_NotoSansCJK_Regular

    return next(Path(cvttf_NotoSansCJK_Regular.__file__).parent.glob("*.otf"))


@cache
def cjk_font(size: int) -> ImageFont.FreeTypeFont:
    """Noto Sans CJK at `size` pixels; covers Chinese and Latin text."""
    return ImageFont.truetype(str(cjk_font_path()), size)
