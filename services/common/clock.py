"""Timestamps and the documented timestamp-based IDs (ds_20240115_123456, task_20240115_123456)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0, tzinfo=None)


def utcnow_precise() -> datetime:
    """utcnow() with its microseconds: for ordering events within one second, and timestamps that show them."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso(moment: datetime | None) -> str:
    """ISO 8601 in UTC without an offset, as the documents print it ("2024-01-15T12:34:56")."""
    return moment.isoformat(timespec="seconds") if moment else ""


def timestamp_id(prefix: str, moment: datetime, attempt: int = 0) -> str:
    """`prefix_YYYYMMDD_HHMMSS`; later attempts within the same second get `_2`, `_3`, ..."""
    base = f"{prefix}_{moment:%Y%m%d_%H%M%S}"
    return base if attempt == 0 else f"{base}_{attempt + 1}"
