"""Datasets: upload, prepare into versions, read, update, delete, export, serve image files."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import structlog
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from services.common.archives import ZipMember, open_zip, safe_entries, stream_zip
from services.common.clock import timestamp_id, utcnow
from services.common.downloads import Download, file_chunks
from services.common.errors import InvalidArgument, NotFound
from services.common.locks import KeyedLocks
from services.common.metadata import check_description, clean_tags
from services.common.storage.db import paged, transaction
from services.common.storage.files import (
    discard_leftover,
    fsync_dir,
    is_transient,
    remove_tree,
    resolve_inside,
    staging_dir,
)
from services.common.uploads import ReceivedFile
from services.dataset.domain.data_yaml import render_data_yaml
from services.dataset.domain.labels import MAX_CLASSES
from services.dataset.domain.layout import IMAGE_SUFFIXES
from services.dataset.domain.prepare import SPLITS, PreparedContent, PrepareOptions, prepare_version
from services.dataset.domain.splitting import SplitRatio
from services.dataset.settings import DatasetSettings
from services.dataset.storage.files import DatasetFiles
from services.dataset.storage.tables import DatasetRow, ImageRow, VersionRow

log = structlog.get_logger(__name__)

DATASET_ID = re.compile(r"^ds_\d{8}_\d{6}(_\d+)?$")
VERSION = re.compile(r"^v(\d{1,6})$")
LABELS_BACKUP_PREFIX = ".labels-old-"
_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


def clean_classes(classes: list[str]) -> list[str]:
    names = [name.strip() for name in classes]
    if any(not name for name in names):
        raise InvalidArgument("classes must be non-empty strings")
    if len(set(names)) != len(names):
        raise InvalidArgument("classes must not repeat a name")
    if len(names) > MAX_CLASSES:
        raise InvalidArgument(f"at most {MAX_CLASSES} classes are supported")
    return names


def version_number(version: str) -> int:
    match = VERSION.match(version)
    if not match:
        raise NotFound(f"Version {version!r} not found (versions are named v1, v2, ...)")
    return int(match.group(1))


class DatasetManager:
    def __init__(
        self, db: sessionmaker[Session], files: DatasetFiles, settings: DatasetSettings, locks: KeyedLocks
    ) -> None:
        self._db = db
        self._files = files
        self._settings = settings
        self._locks = locks
        files.root.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------------------

    def _load(self, session: Session, dataset_id: str) -> DatasetRow:
        row = None
        if DATASET_ID.match(dataset_id):
            # One joined query: this is the hottest read of the service.
            query = (
                select(DatasetRow).options(joinedload(DatasetRow.versions)).where(DatasetRow.dataset_id == dataset_id)
            )
            row = session.execute(query).unique().scalar_one_or_none()
        if row is None:
            raise NotFound(f"Dataset {dataset_id!r} not found")
        return row

    def get(self, dataset_id: str) -> DatasetRow:
        with self._db() as session:
            return self._load(session, dataset_id)

    def get_version(self, session: Session, dataset_id: str, version: str) -> VersionRow:
        dataset = self._load(session, dataset_id)
        number = version_number(version)
        for row in dataset.versions:
            if row.number == number:
                return row
        available = ", ".join(v.version for v in dataset.versions) or "none: prepare it first"
        raise NotFound(f"Version {version!r} of dataset {dataset_id!r} not found (versions: {available})")

    def list(self, page: int, page_size: int) -> tuple[list[DatasetRow], int]:
        with self._db() as session:
            total = session.scalar(select(func.count()).select_from(DatasetRow)) or 0
            query = (
                select(DatasetRow)
                .options(selectinload(DatasetRow.versions))
                .order_by(DatasetRow.created_at.desc(), DatasetRow.dataset_id.desc())
            )
            return list(session.scalars(paged(query, page, page_size, 1000))), total

    def data_yaml_path(self, row: VersionRow) -> Path:
        return self._files.data_yaml(row.dataset_id, row.version)

    # -- upload ------------------------------------------------------------------------------------------

    def upload_staging(self):
        """A directory for receiving an upload, on the same file system as the datasets."""
        return staging_dir(self._files.root)

    def register_upload(self, received: ReceivedFile) -> DatasetRow:
        """Check the received ZIP and store it as a new dataset (status `uploaded`)."""
        if received.size == 0:
            raise InvalidArgument("The uploaded file is empty")
        with open_zip(received.path) as archive:
            entries = safe_entries(archive, self._settings.zip_limits)
        if not any(PurePosixPath(e.name).suffix.lower() in IMAGE_SUFFIXES for e in entries):
            raise InvalidArgument("The ZIP contains no images (jpg, jpeg, png, bmp or webp)")
        created = utcnow()
        for attempt in range(1000):
            dataset_id = timestamp_id("ds", created, attempt)
            target = self._files.dataset_dir(dataset_id)
            try:
                target.mkdir()  # claims the ID against concurrent uploads in this data root
            except FileExistsError:
                continue
            try:
                os.rename(received.path, self._files.upload_zip(dataset_id))
                fsync_dir(target)
                row = DatasetRow(
                    dataset_id=dataset_id,
                    filename=received.filename,
                    size=received.size,
                    status="uploaded",
                    description="",
                    tags=[],
                    created_at=created,
                    versions=[],
                )
                with transaction(self._db) as session:
                    session.add(row)
            except IntegrityError:
                remove_tree(target)  # another replica committed this ID first
                continue
            except BaseException:
                remove_tree(target)
                raise
            log.info("dataset uploaded", dataset_id=dataset_id, filename=received.filename, size=received.size)
            return row
        raise InvalidArgument("Too many uploads in the same second; retry")

    # -- prepare -----------------------------------------------------------------------------------------

    def prepare(
        self, dataset_id: str, split_ratio: SplitRatio | None, classes: list[str]
    ) -> tuple[VersionRow, PreparedContent]:
        """Build the next version (v1, v2, ...) from the uploaded ZIP; earlier versions stay untouched."""
        classes = clean_classes(classes)
        if split_ratio is not None:
            split_ratio.validate()
        with self._locks.hold(dataset_id):
            dataset = self.get(dataset_id)
            number = max((v.number for v in dataset.versions), default=0) + 1
            version = f"v{number}"
            final_dir = self._files.version_dir(dataset_id, version)
            options = PrepareOptions(
                split_ratio,
                classes,
                seed=dataset_id,
                zip_limits=self._settings.zip_limits,
                max_image_pixels=self._settings.max_image_pixels,
                workers=self._settings.prepare_workers,
            )
            log.info("preparing dataset", dataset_id=dataset_id, version=version)
            with staging_dir(self._files.dataset_dir(dataset_id)) as staging:
                content = prepare_version(self._files.upload_zip(dataset_id), staging, final_dir, options)
                os.rename(staging, final_dir)
            fsync_dir(final_dir.parent)
            try:
                row = self._commit_version(dataset_id, version, number, content)
            except BaseException:
                remove_tree(final_dir)
                raise
        log.info(
            "dataset prepared",
            dataset_id=dataset_id,
            version=version,
            images=len(content.images),
            rejected_images=len(content.report.rejected_images),
            rejected_label_lines=len(content.report.rejected_labels),
        )
        return row, content

    def _commit_version(self, dataset_id: str, version: str, number: int, content: PreparedContent) -> VersionRow:
        report = content.report
        row = VersionRow(
            dataset_id=dataset_id,
            version=version,
            number=number,
            classes=content.classes,
            train_count=content.count("train"),
            val_count=content.count("val"),
            test_count=content.count("test"),
            split_ratio=content.split_ratio.as_dict() if content.split_ratio else None,
            report={
                "layout": report.layout,
                "images_found": report.images_found,
                "rejected_images": len(report.rejected_images),
                "rejected_labels": len(report.rejected_labels),
            },
            created_at=utcnow(),
        )
        with transaction(self._db) as session:
            session.add(row)
            session.flush()
            session.execute(
                insert(ImageRow),
                [
                    {
                        "version_pk": row.id,
                        "image_id": image.image_id,
                        "split": image.split,
                        "relpath": image.relpath,
                        "width": image.width,
                        "height": image.height,
                    }
                    for image in content.images
                ],
            )
            dataset = session.get(DatasetRow, dataset_id)
            if dataset is None:
                raise NotFound(f"Dataset {dataset_id!r} not found")
            dataset.status = "prepared"
        return row

    # -- update / delete -----------------------------------------------------------------------------------

    def update(self, dataset_id: str, description: str | None, tags: list[str] | None) -> DatasetRow:
        if description is not None:
            check_description(description)
        if tags is not None:
            tags = clean_tags(tags)
        with transaction(self._db) as session:
            row = self._load(session, dataset_id)
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = tags
        return row

    def delete(self, dataset_id: str) -> None:
        with self._locks.hold(dataset_id):
            with transaction(self._db) as session:
                session.delete(self._load(session, dataset_id))
            # The row is gone, so the dataset is gone; a crash before this line leaves files that start-up
            # clean-up removes.
            remove_tree(self._files.dataset_dir(dataset_id))
        log.info("dataset deleted", dataset_id=dataset_id)

    # -- export and files ----------------------------------------------------------------------------------

    def export(self, dataset_id: str, version: str, with_labels: bool) -> Download:
        with self._db() as session:
            row = self.get_version(session, dataset_id, version or "v1")
            images = list(session.scalars(select(ImageRow).where(ImageRow.version_pk == row.id).order_by(ImageRow.id)))
        version_dir = self._files.version_dir(dataset_id, row.version)
        splits = sorted({image.split for image in images}, key=SPLITS.index)

        def members() -> Iterator[ZipMember]:
            yield "data.yaml", render_data_yaml(row.classes, splits, path=None).encode()
            for image in images:
                yield image.relpath, version_dir / image.relpath
            if with_labels:
                for image in images:
                    label = version_dir / "labels" / image.split / f"{image.image_id}.txt"
                    if label.exists():
                        yield f"labels/{image.split}/{image.image_id}.txt", label

        kind = "annotated" if with_labels else "original"
        return Download(f"{dataset_id}_{row.version}_{kind}.zip", "application/zip", stream_zip(members()))

    def open_image(self, relative: str) -> Download:
        """An image of a prepared version, by its path below datasets/ (the static file service)."""
        parts = PurePosixPath(relative).parts
        if (
            len(parts) != 5
            or not DATASET_ID.match(parts[0])
            or not VERSION.match(parts[1])
            or parts[2] != "images"
            or parts[3] not in SPLITS
            or PurePosixPath(parts[4]).suffix.lower() not in IMAGE_SUFFIXES
        ):
            raise NotFound(f"File not found: datasets/{relative}")
        with self._db() as session:
            self.get_version(session, parts[0], parts[1])
        path = resolve_inside(self._files.root, relative)
        if not path.is_file():
            raise NotFound(f"File not found: datasets/{relative}")
        return Download(path.name, _CONTENT_TYPES[path.suffix.lower()], file_chunks(path), inline=True)

    # -- start-up clean-up -----------------------------------------------------------------------------------

    def recover(self) -> None:
        """Remove what a killed process left half-done: staging and trash directories, files without rows,
        and put back a labels/ directory whose swap was interrupted."""
        with self._db() as session:
            known = {
                row.dataset_id: {v.version for v in row.versions}
                for row in session.scalars(select(DatasetRow).options(selectinload(DatasetRow.versions)))
            }
        for entry in self._files.root.iterdir():
            if entry.name not in known:
                discard_leftover(entry)
                continue
            for child in entry.iterdir():
                if child.name in known[entry.name]:
                    self._recover_version(child)
                elif child.name != "upload.zip":
                    discard_leftover(child)

    def _recover_version(self, version_dir: Path) -> None:
        labels = version_dir / "labels"
        backups = sorted(version_dir.glob(f"{LABELS_BACKUP_PREFIX}*"))
        if not labels.exists() and backups:
            log.warning("restoring labels after an interrupted export", path=str(version_dir))
            os.rename(backups[-1], labels)
            backups = backups[:-1]
        for child in [*backups, *(c for c in version_dir.iterdir() if is_transient(c.name))]:
            remove_tree(child)
