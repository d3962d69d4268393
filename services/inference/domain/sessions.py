"""Export sessions (POST /infer/{model_id}/export): annotated images, results.csv and metadata.json in a
directory of their own, published with one rename, and the ZIP of GET /infer/results/{session_id}/export."""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from services.common.archives import ZipMember, stream_zip
from services.common.clock import iso
from services.common.downloads import Download
from services.common.errors import NotFound
from services.common.storage.files import atomic_write_bytes, atomic_write_text
from services.inference.domain.detection import Detection, encode_jpeg

CSV_COLUMNS = (
    "image_uuid",
    "image_filename",
    "model_id",
    "image_width",
    "image_height",
    "detection_count",
    "detection_index",
    "class_id",
    "class_name",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
)
_SESSION_ID = re.compile(r"^session_\d{8}_\d{6}_[0-9a-f]{8}$")
# What makes a spreadsheet read a cell as a formula (OWASP, CSV injection): its first character.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def new_session_id(moment: datetime) -> str:
    return f"session_{moment:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def check_session_id(session_id: str) -> str:
    """Only well-formed IDs reach the file system (no traversal through the path parameter)."""
    if not _SESSION_ID.match(session_id):
        raise NotFound(f"Session {session_id} not found")
    return session_id


@dataclass(frozen=True)
class SessionImage:
    image_uuid: str
    image_filename: str
    model_id: str
    image_width: int
    image_height: int
    detections: list[Detection]

    @property
    def detection_count(self) -> int:
        return len(self.detections)


def new_image_uuid() -> str:
    return str(uuid.uuid4())


def write_annotated_image(session_dir: Path, image_uuid: str, annotated: np.ndarray) -> None:
    atomic_write_bytes(session_dir / "images" / f"{image_uuid}.jpg", encode_jpeg(annotated))


def write_session_files(
    session_dir: Path,
    session_id: str,
    *,
    model_id: str,
    created_at: datetime,
    images: list[SessionImage],
    settings: dict,
) -> None:
    """results.csv (one row per detection; an image without detections still gets one row, its detection
    columns empty) and metadata.json, into a session directory that already holds images/."""
    atomic_write_text(session_dir / "results.csv", results_csv(images))
    metadata = {
        "session_id": session_id,
        "model_id": model_id,
        "created_at": iso(created_at),
        "image_count": len(images),
        "detection_count": sum(image.detection_count for image in images),
        "settings": settings,
        "images": [
            {key: value for key, value in asdict(image).items() if key != "detections"}
            | {"detection_count": image.detection_count, "annotated_image": f"images/{image.image_uuid}.jpg"}
            for image in images
        ],
    }
    atomic_write_text(session_dir / "metadata.json", json.dumps(metadata, ensure_ascii=False, indent=2))


def csv_cell(value: object) -> str:
    """A cell no spreadsheet evaluates: text starting like a formula gets a leading single quote (OWASP). Plain
    numbers stay as they are; a sign in front of digits computes nothing."""
    text = str(value)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return f"'{text}"
    return text


def results_csv(images: list[SessionImage]) -> str:
    rows: list[list[object]] = [list(CSV_COLUMNS)]
    for image in images:
        head = [
            image.image_uuid,
            image.image_filename,
            image.model_id,
            image.image_width,
            image.image_height,
            image.detection_count,
        ]
        if not image.detections:
            rows.append([*head, "", "", "", "", "", "", "", ""])
        for index, detection in enumerate(image.detections):
            rows.append(
                [
                    *head,
                    index,
                    detection.class_id,
                    detection.class_name,
                    f"{detection.confidence:.4f}",
                    f"{detection.x1:.2f}",
                    f"{detection.y1:.2f}",
                    f"{detection.x2:.2f}",
                    f"{detection.y2:.2f}",
                ]
            )
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([csv_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def session_archive(session_dir: Path, session_id: str) -> Download:
    """The session as a streamed ZIP: images/{uuid}.jpg, results.csv, metadata.json."""
    if not (session_dir / "metadata.json").is_file():
        raise NotFound(f"Session {session_id} not found")
    members: list[ZipMember] = [
        (f"images/{path.name}", path) for path in sorted((session_dir / "images").glob("*.jpg"))
    ]
    members += [("results.csv", session_dir / "results.csv"), ("metadata.json", session_dir / "metadata.json")]
    return Download(f"{session_id}.zip", "application/zip", stream_zip(members))
