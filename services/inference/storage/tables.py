"""Metadata tables of the inference service. As in the other services, a committed row is the truth; result
files are published before it says `completed` and start-up clean-up removes files no row vouches for."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, Float, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.storage.db import NAMING_CONVENTION

# Arguments of services.common.storage.db.migrate for this service's schema.
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_inference"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskRow(Base):
    """A queued inference task of the 002 document (POST /api/inference?index=N)."""

    __tablename__ = "inference_tasks"

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a UUID4, canonical text form
    index: Mapped[int] = mapped_column(Integer)  # the 1-based sample index the caller asked for
    # The sample's entry name when the task was submitted: the worker refuses to run another sample should
    # the sample set change meanwhile.
    sample_name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str] = mapped_column(String(64))
    # pending | processing | completed | failed
    status: Mapped[str] = mapped_column(String(16), index=True)
    # Runs started; a task a crash interrupted max_attempts times is failed instead of run again.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    inference_time: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds the runner took
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)


class SessionRow(Base):
    """An export session (POST /infer/{model_id}/export); its files live in the session's directory."""

    __tablename__ = "export_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    image_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
