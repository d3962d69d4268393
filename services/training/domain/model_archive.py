"""Model ZIPs: reading the ones users upload, and the members of the ones we export.

Two layouts are accepted (the API document's formats):

    model_20240115_123456/model.json            model.json
    model_20240115_123456/weights/best.pt       weights/best.pt

The ZIP must hold a `weights/` directory with at least one .pt file (best.pt preferred); model.json is
optional. The checkpoint is only copied out here, not loaded: checkpoints.inspect_checkpoint does that.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from services.common.archives import (
    ArchiveEntry,
    ZipLimits,
    ZipMember,
    copy_entry,
    open_zip,
    read_entry,
    safe_entries,
)
from services.common.errors import InvalidArgument, NotFound

_MAX_METADATA_BYTES = 1024 * 1024
# Archivers' clutter that is never part of a model.
_IGNORED_PARTS = {"__MACOSX", ".DS_Store"}


@dataclass(frozen=True)
class UploadedModel:
    weights: Path  # destination/weights/best.pt
    metadata: dict[str, Any] | None  # model.json, when the ZIP has one
    original_model_id: str | None  # model.json's model_id, else the Format 1 top-level folder name


def read_model_zip(zip_path: Path, destination: Path, limits: ZipLimits) -> UploadedModel:
    """Copy the model ZIP's checkpoint to `destination/weights/best.pt` and parse its model.json."""
    with open_zip(zip_path) as archive:
        entries = [entry for entry in safe_entries(archive, limits) if not _ignored(entry.name)]
        root, weights = _find_weights(entries)
        metadata_entry = next((entry for entry in entries if entry.name == f"{root}model.json"), None)
        metadata = _read_metadata(archive, metadata_entry) if metadata_entry else None
        target = destination / "weights" / "best.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_entry(archive, weights, target)
    model_id = metadata.get("model_id") if metadata else None
    if not (isinstance(model_id, str) and model_id.strip()):
        model_id = root.rstrip("/") or None
    return UploadedModel(weights=target, metadata=metadata, original_model_id=model_id)


def _ignored(name: str) -> bool:
    return any(part in _IGNORED_PARTS or part.startswith("._") for part in PurePosixPath(name).parts)


def _find_weights(entries: list[ArchiveEntry]) -> tuple[str, ArchiveEntry]:
    """The model's root prefix ("" or "<folder>/") and its checkpoint entry."""
    by_root: dict[str, list[ArchiveEntry]] = {}
    for entry in entries:
        parts = PurePosixPath(entry.name).parts
        # <root>/weights/<file>.pt with root empty (Format 2) or one folder (Format 1); deeper is not a model.
        if len(parts) in (2, 3) and parts[-2] == "weights" and parts[-1].lower().endswith(".pt"):
            root = f"{parts[0]}/" if len(parts) == 3 else ""
            by_root.setdefault(root, []).append(entry)
    if not by_root:
        raise InvalidArgument(
            "The ZIP must contain a weights/ directory with at least one .pt file "
            "(weights/best.pt, or <model folder>/weights/best.pt)"
        )
    if len(by_root) > 1:
        roots = ", ".join(sorted(f"{root}weights/" for root in by_root))
        raise InvalidArgument(f"The ZIP holds more than one model ({roots}); upload one model per ZIP")
    root, candidates = next(iter(by_root.items()))
    best = [entry for entry in candidates if PurePosixPath(entry.name).name == "best.pt"]
    return root, (best or sorted(candidates, key=lambda entry: entry.name))[0]


def _read_metadata(archive: zipfile.ZipFile, entry: ArchiveEntry) -> dict[str, Any]:
    if entry.size > _MAX_METADATA_BYTES:
        raise InvalidArgument(f"{entry.name} is larger than {_MAX_METADATA_BYTES // 1024} KiB")
    try:
        metadata = json.loads(read_entry(archive, entry).decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"{entry.name} is not UTF-8 text") from error
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{entry.name} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise InvalidArgument(f"{entry.name} must hold a JSON object, not {type(metadata).__name__}")
    return metadata


def model_zip_members(model_dir: Path, model_id: str, metadata: dict[str, Any]) -> list[ZipMember]:
    """A registered model as Format 1 ZIP members for stream_zip: <id>/weights/best.pt and <id>/model.json."""
    weights = model_dir / "weights" / "best.pt"
    if not weights.is_file():
        raise NotFound(f"The weights of model {model_id} are missing")
    document = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    return [
        (f"{model_id}/weights/best.pt", weights),
        (f"{model_id}/model.json", document.encode("utf-8")),
    ]
