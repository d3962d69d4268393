"""The environment every process that imports Ultralytics needs on a machine without internet access.

Ultralytics otherwise tries the network: settings sync, and a font download (Arial.ttf) on every
detection-dataset check and plot. We point it at a config directory of our own that already holds the
fonts (copied from matplotlib's DejaVu Sans, or a CJK font when the system has one, so Chinese class names
render in plots) and switch it offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Debian's fonts-wqy-microhei, when installed, covers Chinese class names in charts and plots.
_CJK_FONTS = (Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),)


def _dejavu() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def ultralytics_environment(config_root: Path) -> dict[str, str]:
    """Environment variables for a process that will import Ultralytics; prepares `config_root` once."""
    fonts = config_root / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    unicode_font = next((font for font in _CJK_FONTS if font.exists()), _dejavu())
    for name, source in (("Arial.ttf", _dejavu()), ("Arial.Unicode.ttf", unicode_font)):
        target = fonts / name
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(config_root),
        "MPLBACKEND": "Agg",
    }
