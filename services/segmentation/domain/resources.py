"""Training resources: labelled component images that callers add through the 004 document's
add-training-resource API, and that every later training of the same user learns from.

Each dataset entry (key -> url, component_type) is checked, fetched under the mesh's fetch policy, decoded,
and stored as a PNG under resources/<resource id>.png; then its row is written. The entries of one request
are fetched concurrently (at most `concurrency` at a time) and each gets its own code (getTrainDataStatus):
900 added, 901 unknown component type or unusable URL, 902 the URL could not be read (unreachable, HTTP
error, too large, timeout), 601 the URL's content is not an image.

A key belongs to its user: adding it again replaces the row and its file. The new file is written before the
row that names it, and the old file is deleted only after the row changed, so a crash leaves at worst an
orphaned file, never a row without its image. Trainings copy (hard-link) the files they use when they are
created, so replacing a resource never changes the data of a training that already exists.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import httpx
import numpy as np
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow
from services.common.envelope import EnvelopeError, Err
from services.common.fetch import FetchPolicy
from services.common.image_urls import load_image_url
from services.common.storage.db import transaction
from services.common.storage.files import atomic_write_bytes
from services.segmentation.domain.rendering import COMPONENT_TYPES
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import TrainingResourceRow

log = structlog.get_logger(__name__)

ADDED = 900
INVALID_ENTRY = 901
UNREADABLE_URL = 902
NOT_AN_IMAGE = int(Err.INVALID_IMAGE)  # 601

# Column widths of TrainingResourceRow.
_MAX_ID_LENGTH = 128
# Canonical spelling of every component type, looked up case-insensitively ("button" is a Button).
_TYPES_BY_LOWER = {kind.lower(): kind for kind in COMPONENT_TYPES}


@dataclass(frozen=True)
class _Entry:
    key: str
    url: str
    component_type: str


class TrainingResources:
    def __init__(
        self,
        db: sessionmaker[Session],
        files: SegmentationFiles,
        policy: FetchPolicy,
        max_pixels: int,
        *,
        concurrency: int = 8,
    ) -> None:
        self._db = db
        self._files = files
        self._policy = policy
        self._max_pixels = max_pixels
        self._concurrency = concurrency

    async def add_resources(self, user_id: str, dataset: Mapping[str, tuple[str, str]]) -> dict[str, int]:
        """Add every entry of `dataset` (key -> (url, component_type)) for `user_id`; key -> its code.
        Ids that do not fit the store refuse the whole request (807) before anything is fetched."""
        for name, value in (("user_id", user_id), *(("dataset key", key) for key in dataset)):
            if not value or len(value) > _MAX_ID_LENGTH:
                raise EnvelopeError(Err.INVALID_PARAMETER, f"{name} must have 1 to {_MAX_ID_LENGTH} characters")
        slots = asyncio.Semaphore(self._concurrency)

        async def add_bounded(entry: _Entry) -> int:
            async with slots:
                return await self._add(user_id, entry)

        entries = [_Entry(key, url, component_type) for key, (url, component_type) in dataset.items()]
        codes = await asyncio.gather(*(add_bounded(entry) for entry in entries))
        return {entry.key: code for entry, code in zip(entries, codes, strict=True)}

    async def _add(self, user_id: str, entry: _Entry) -> int:
        component_type = _TYPES_BY_LOWER.get(entry.component_type.strip().lower())
        url = entry.url.strip()
        if component_type is None or not _is_fetchable(url):
            return INVALID_ENTRY
        try:
            image = await load_image_url(url, self._policy, self._max_pixels)
        except EnvelopeError as error:
            log.info("training resource not added", key=entry.key, err=int(error.err), reason=error.detail)
            return NOT_AN_IMAGE if error.err == Err.INVALID_IMAGE else UNREADABLE_URL
        png = await asyncio.to_thread(_png, image.rgb)
        row = TrainingResourceRow(
            resource_id=str(uuid.uuid4()),
            user_id=user_id,
            key=entry.key,
            component_type=component_type,
            source_url=url,
            created_at=utcnow(),
        )
        await asyncio.to_thread(self._store, row, png)
        return ADDED

    def _store(self, row: TrainingResourceRow, png: bytes) -> None:
        new_file = self._files.resource_file(row.resource_id)
        atomic_write_bytes(new_file, png)
        try:
            replaced = self._upsert(row)
        except BaseException:
            new_file.unlink(missing_ok=True)
            raise
        if replaced is not None:
            self._files.resource_file(replaced).unlink(missing_ok=True)

    def _upsert(self, row: TrainingResourceRow) -> str | None:
        """Insert `row`, replacing the user's row of the same key; the replaced resource id, if any."""
        for _attempt in range(3):  # a concurrent request may insert the same key between our read and write
            try:
                with transaction(self._db) as session:
                    old = session.scalar(
                        select(TrainingResourceRow).where(
                            TrainingResourceRow.user_id == row.user_id, TrainingResourceRow.key == row.key
                        )
                    )
                    replaced = old.resource_id if old is not None else None
                    if old is not None:
                        session.delete(old)
                        session.flush()  # the unit of work would otherwise insert before it deletes
                    session.add(row)
                return replaced
            except IntegrityError:
                continue
        raise EnvelopeError(Err.UNKNOWN_ERROR, f"Training resource {row.key!r} is being added concurrently; retry")


def _is_fetchable(url: str) -> bool:
    """An http(s) URL with a host: anything else is the caller's mistake (901), not a failed read (902)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _png(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EnvelopeError(Err.UNKNOWN_ERROR, "Could not encode a training resource as PNG")
    return encoded.tobytes()
