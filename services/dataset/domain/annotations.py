"""Annotation tasks: pixel boxes per image of a prepared version, exported as YOLO label files."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import timestamp_id, utcnow
from services.common.errors import InvalidArgument, NotFound
from services.common.locks import KeyedLocks
from services.common.storage.db import paged, transaction
from services.common.storage.files import atomic_write_text, fsync_dir, remove_tree, staging_dir
from services.dataset.domain.data_yaml import render_data_yaml
from services.dataset.domain.datasets import LABELS_BACKUP_PREFIX, DatasetManager, clean_classes
from services.dataset.domain.labels import (
    PixelBox,
    check_pixel_box,
    format_label_text,
    parse_label_text,
    pixels_to_yolo,
    yolo_to_pixels,
)
from services.dataset.domain.prepare import SPLITS
from services.dataset.storage.files import DatasetFiles
from services.dataset.storage.tables import AnnotationRow, ImageRow, TaskRow, VersionRow

log = structlog.get_logger(__name__)

EXPORT_FORMATS = ("yolo",)
_MAX_BOXES = 10_000


@dataclass(frozen=True)
class TaskSummary:
    task: TaskRow
    total_items: int
    annotated_count: int


@dataclass(frozen=True)
class TaskItem:
    image: ImageRow
    image_path: str
    has_annotation: bool


@dataclass(frozen=True)
class ItemAnnotation:
    image_id: str
    boxes: list[PixelBox]
    updated_at: datetime | None


@dataclass(frozen=True)
class LabelsExport:
    labels_dir: str
    exported_count: int


def _boxes_to_json(boxes: list[PixelBox]) -> list[list[float]]:
    return [[box.class_id, box.x1, box.y1, box.x2, box.y2] for box in boxes]


def _boxes_from_json(rows: list[list[float]]) -> list[PixelBox]:
    return [PixelBox(int(c), x1, y1, x2, y2) for c, x1, y1, x2, y2 in rows]


class AnnotationManager:
    def __init__(
        self, db: sessionmaker[Session], files: DatasetFiles, datasets: DatasetManager, locks: KeyedLocks
    ) -> None:
        self._db = db
        self._files = files
        self._datasets = datasets
        self._locks = locks

    def _task(self, session: Session, task_id: str) -> TaskRow:
        task = session.get(TaskRow, task_id)
        if task is None:
            raise NotFound(f"Annotation task {task_id!r} not found")
        return task

    def _image(self, session: Session, task: TaskRow, image_id: str) -> ImageRow:
        image = session.scalar(
            select(ImageRow).where(ImageRow.version_pk == task.version_pk, ImageRow.image_id == image_id)
        )
        if image is None:
            raise NotFound(f"Image {image_id!r} not found in annotation task {task.task_id!r}")
        return image

    def _summary(self, session: Session, task: TaskRow) -> TaskSummary:
        total = session.scalar(select(func.count()).where(ImageRow.version_pk == task.version_pk)) or 0
        annotated = session.scalar(select(func.count()).where(AnnotationRow.task_id == task.task_id)) or 0
        return TaskSummary(task, total, annotated)

    # -- tasks ---------------------------------------------------------------------------------------------

    def create_task(self, dataset_id: str, version: str, classes: list[str]) -> TaskSummary:
        """A task over one version. The version's existing labels become the task's starting boxes."""
        classes = clean_classes(classes)
        with self._db() as session:
            version_row = self._datasets.get_version(session, dataset_id, version or "v1")
            images = list(session.scalars(select(ImageRow).where(ImageRow.version_pk == version_row.id)))
        classes = classes or list(version_row.classes)
        if not classes:
            raise InvalidArgument(f"Dataset {dataset_id!r} {version_row.version} has no class names: pass `classes`")
        imported = self._existing_boxes(version_row, images, len(classes))
        created = utcnow()
        for attempt in range(1000):
            task = TaskRow(
                task_id=timestamp_id("task", created, attempt),
                version_pk=version_row.id,
                dataset_id=dataset_id,
                version=version_row.version,
                classes=classes,
                created_at=created,
            )
            try:
                with transaction(self._db) as session:
                    session.add(task)
                    session.flush()
                    session.add_all(
                        AnnotationRow(
                            task_id=task.task_id, image_pk=image_pk, boxes=_boxes_to_json(boxes), updated_at=created
                        )
                        for image_pk, boxes in imported.items()
                    )
            except IntegrityError:
                continue  # a task created in the same second took this ID
            log.info(
                "annotation task created",
                task_id=task.task_id,
                dataset_id=dataset_id,
                version=version_row.version,
                images=len(images),
                imported=len(imported),
            )
            return TaskSummary(task, len(images), len(imported))
        raise InvalidArgument("Too many tasks created in the same second; retry")

    def _existing_boxes(
        self, version: VersionRow, images: list[ImageRow], num_classes: int
    ) -> dict[int, list[PixelBox]]:
        labels_dir = self._files.labels_dir(version.dataset_id, version.version)
        boxes: dict[int, list[PixelBox]] = {}
        for image in images:
            label = labels_dir / image.split / f"{image.image_id}.txt"
            if label.exists():
                parsed = parse_label_text(label.read_text(), num_classes)
                boxes[image.id] = [yolo_to_pixels(box, image.width, image.height) for box in parsed.boxes]
        return boxes

    def get_task(self, task_id: str) -> TaskSummary:
        with self._db() as session:
            return self._summary(session, self._task(session, task_id))

    def list_items(self, task_id: str, page: int, page_size: int) -> tuple[list[TaskItem], int]:
        with self._db() as session:
            task = self._task(session, task_id)
            total = session.scalar(select(func.count()).where(ImageRow.version_pk == task.version_pk)) or 0
            annotated = select(AnnotationRow.image_pk).where(AnnotationRow.task_id == task_id)
            query = (
                select(ImageRow, ImageRow.id.in_(annotated))
                .where(ImageRow.version_pk == task.version_pk)
                .order_by(ImageRow.split, ImageRow.image_id)
            )
            items = [
                TaskItem(image, self._files.image_path(task.dataset_id, task.version, image.relpath), bool(flag))
                for image, flag in session.execute(paged(query, page, page_size, 10_000))
            ]
        return items, total

    # -- items -----------------------------------------------------------------------------------------------

    def get_item(self, task_id: str, image_id: str) -> ItemAnnotation:
        with self._db() as session:
            task = self._task(session, task_id)
            image = self._image(session, task, image_id)
            row = session.scalar(
                select(AnnotationRow).where(AnnotationRow.task_id == task_id, AnnotationRow.image_pk == image.id)
            )
        if row is None:
            return ItemAnnotation(image_id, [], None)
        return ItemAnnotation(image_id, _boxes_from_json(row.boxes), row.updated_at)

    def save_item(self, task_id: str, image_id: str, boxes: list[PixelBox]) -> None:
        """Replace the image's boxes (last writer wins). An empty list records "no objects"."""
        if len(boxes) > _MAX_BOXES:
            raise InvalidArgument(f"at most {_MAX_BOXES} boxes per image")
        with transaction(self._db) as session:
            task = self._task(session, task_id)
            image = self._image(session, task, image_id)
            for index, box in enumerate(boxes):
                reason = check_pixel_box(box, image.width, image.height, len(task.classes))
                if reason:
                    raise InvalidArgument(f"boxes[{index}]: {reason}")
            row = session.scalar(
                select(AnnotationRow).where(AnnotationRow.task_id == task_id, AnnotationRow.image_pk == image.id)
            )
            if row is None:
                row = AnnotationRow(task_id=task_id, image_pk=image.id, boxes=[], updated_at=utcnow())
                session.add(row)
            row.boxes = _boxes_to_json(boxes)
            row.updated_at = utcnow()

    # -- export ----------------------------------------------------------------------------------------------

    def export(self, task_id: str, export_format: str) -> LabelsExport:
        """Write the task's boxes as the version's labels/ (swapped in whole) and its classes into data.yaml."""
        export_format = (export_format or "yolo").lower()
        if export_format not in EXPORT_FORMATS:
            raise InvalidArgument(f"Unsupported export format {export_format!r}: supported formats are yolo")
        with self._db() as session:
            task = self._task(session, task_id)
            rows = session.execute(
                select(ImageRow, AnnotationRow.boxes)
                .join(AnnotationRow, AnnotationRow.image_pk == ImageRow.id)
                .where(AnnotationRow.task_id == task_id)
            ).all()
            splits = set(session.scalars(select(ImageRow.split).where(ImageRow.version_pk == task.version_pk)))
        version_dir = self._files.version_dir(task.dataset_id, task.version)
        labels_dir = self._files.labels_dir(task.dataset_id, task.version)
        with self._locks.hold(task.dataset_id):
            if not version_dir.is_dir():
                raise NotFound(f"Dataset {task.dataset_id!r} {task.version} no longer exists")
            with staging_dir(version_dir) as staging:
                for split in splits:
                    (staging / split).mkdir()
                for image, boxes in rows:
                    yolo = [pixels_to_yolo(box, image.width, image.height) for box in _boxes_from_json(boxes)]
                    (staging / image.split / f"{image.image_id}.txt").write_text(format_label_text(yolo))
                backup = version_dir / f"{LABELS_BACKUP_PREFIX}{uuid.uuid4().hex}"
                if labels_dir.exists():
                    os.rename(labels_dir, backup)
                os.rename(staging, labels_dir)
                fsync_dir(version_dir)
            remove_tree(backup)
            used_splits = sorted(splits, key=SPLITS.index)
            atomic_write_text(
                self._files.data_yaml(task.dataset_id, task.version),
                render_data_yaml(task.classes, used_splits, str(version_dir)),
            )
            with transaction(self._db) as session:
                version_row = session.get(VersionRow, task.version_pk)
                if version_row is not None:
                    version_row.classes = list(task.classes)
        log.info("annotations exported", task_id=task_id, labels=len(rows), labels_dir=str(labels_dir))
        return LabelsExport(str(labels_dir), len(rows))
