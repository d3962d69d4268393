"""Metadata tables of the segmentation service. A committed row is the truth; files (uploads, results,
training work directories) are written before the row that points at them says they are complete."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, Float, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.storage.db import NAMING_CONVENTION
from services.common.work import WorkItemColumns

# Arguments of services.common.storage.db.migrate for this service's schema.
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_segmentation"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WorkItemRow(WorkItemColumns, Base):
    """The service's work items (services.common.work): POST /ingest tasks (kind ingest; owner: user_id; spec:
    upload_name or image_url, segmenter; result on failure: the document's err)."""

    __tablename__ = "segmentation_work_items"


class TrainingTaskRow(Base):
    """A ResNet classifier training (the 004 document's training APIs); its files are training/<task id>/."""

    __tablename__ = "training_tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Train-imgSeg-<uuid4>, or -default
    user_id: Mapped[str] = mapped_column(String(128))
    task_type: Mapped[str] = mapped_column(String(32))
    # 300 running, 200 done, 400 failed, 500 stopped by the user.
    task_status: Mapped[int] = mapped_column(Integer, index=True)
    params: Mapped[dict] = mapped_column(JSON)  # epochs, batch_size, learning_rate
    # The last progress the worker reported (the document's acc, loss, epoch, modelEpoch, labels, ...).
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    # Set once the best model is in Triton's repository: the task id is then a usable model id.
    model_ready: Mapped[int] = mapped_column(Integer, default=0)
    heldout_acc: Mapped[float | None] = mapped_column(Float, nullable=True)  # on rendered held-out images
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class TrainingResourceRow(Base):
    """A labelled component image added through the add-training-resource API (file: resources/<id>.png)."""

    __tablename__ = "training_resources"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    resource_id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4; names the file
    user_id: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(128))  # the caller's key in `dataset` (adding it again replaces it)
    component_type: Mapped[str] = mapped_column(String(32))
    source_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
