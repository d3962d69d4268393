"""data.yaml: the Ultralytics dataset config we write, and class names read from other people's."""

from __future__ import annotations

from typing import Any

import yaml


def render_data_yaml(classes: list[str], splits: list[str], path: str | None) -> str:
    """A data.yaml Ultralytics trains from as is. `path` None leaves it out, so Ultralytics resolves the
    split folders next to the file (used inside exported ZIPs)."""
    config: dict[str, Any] = {}
    if path is not None:
        config["path"] = path
    for split in ("train", "val", "test"):
        if split in splits:
            config[split] = f"images/{split}"
    config["nc"] = len(classes)
    config["names"] = dict(enumerate(classes))
    return "# Written by VisionMesh.\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def names_from_yaml(text: str) -> list[str]:
    """Class names from a data.yaml's `names` (list or {id: name}); ValueError if there are none."""
    config = yaml.safe_load(text)
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, dict):
        try:
            ordered = sorted((int(key), value) for key, value in names.items())
        except (TypeError, ValueError):
            raise ValueError("names keys must be class ids") from None
        if [key for key, _ in ordered] != list(range(len(ordered))):
            raise ValueError("names ids must be 0..n-1 without gaps")
        names = [value for _, value in ordered]
    if not isinstance(names, list) or not names:
        raise ValueError("no `names` list")
    return [str(name) for name in names]


def names_from_lines(text: str) -> list[str]:
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError("no class names")
    return names
