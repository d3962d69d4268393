"""What every benchmark under bench/ shares: percentiles, verdicts, load average, JSON results."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(len(sorted_values) * pct / 100))
    return sorted_values[rank - 1]


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def load_average() -> float | None:
    """The 1-minute load average: a busy machine makes every figure worse, so reports print it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_json(report: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
