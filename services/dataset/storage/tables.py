"""Metadata tables. Files live under the data root (see files.py); rows say which files are real.

The database is the commit point: a dataset or version exists once its row is committed. Files are put in
place before that and removed after a row is deleted; start-up clean-up removes files without rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.common.storage.db import NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatasetRow(Base):
    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True, order_by="VersionRow.number"
    )


class VersionRow(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.dataset_id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(16))
    number: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    train_count: Mapped[int] = mapped_column(Integer)
    val_count: Mapped[int] = mapped_column(Integer)
    test_count: Mapped[int] = mapped_column(Integer)
    split_ratio: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    dataset: Mapped[DatasetRow] = relationship(back_populates="versions")


class ImageRow(Base):
    __tablename__ = "dataset_images"
    __table_args__ = (UniqueConstraint("version_pk", "image_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(8))
    relpath: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class TaskRow(Base):
    __tablename__ = "annotation_tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(16))
    classes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class AnnotationRow(Base):
    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("task_id", "image_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.task_id", ondelete="CASCADE"), index=True)
    image_pk: Mapped[int] = mapped_column(ForeignKey("dataset_images.id", ondelete="CASCADE"))
    # [[class_id, x1, y1, x2, y2], ...] in pixels of the image as displayed.
    boxes: Mapped[list[list[float]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
