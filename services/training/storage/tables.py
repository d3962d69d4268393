"""Metadata tables of the training service. As in the dataset service, a committed row is the truth;
files are put in place before it and removed after it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.storage.db import NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    __tablename__ = "training_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(255))
    base_model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    epochs: Mapped[int] = mapped_column(Integer)
    imgsz: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    # queued | running | completed | failed | stopped | interrupted
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The next run continues from last.pt rather than starting over.
    resume: Mapped[bool] = mapped_column(default=False)
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    weights_source: Mapped[str] = mapped_column(String(512), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ModelRow(Base):
    __tablename__ = "models"

    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(16))  # trained | uploaded
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    classes: Mapped[list[str]] = mapped_column(JSON)
    imgsz: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    file_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # ONNX export into the Triton repository: pending | ready | failed
    export_status: Mapped[str] = mapped_column(String(16), default="pending")
    export_error: Mapped[str] = mapped_column(Text, default="")
