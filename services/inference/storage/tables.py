"""Metadata tables of the inference service. As in the other services, a committed row is the truth; result
files are published before it says `completed` and start-up clean-up removes files no row vouches for."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.storage.db import NAMING_CONVENTION
from services.common.work import WorkItemColumns

# Arguments of services.common.storage.db.migrate for this service's schema.
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_inference"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WorkItemRow(WorkItemColumns, Base):
    """The service's work items (services.common.work): the queued inference tasks of the 002 document
    (kind inference_task; spec: index, sample_name, model_id; result: inference_time)."""

    __tablename__ = "inference_work_items"


class SessionRow(Base):
    """An export session (POST /infer/{model_id}/export); its files live in the session's directory."""

    __tablename__ = "export_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    image_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
