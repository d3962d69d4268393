"""ModelService: the one path of a registered or deleted model to the model server. A real registry (SQLite,
files), a real ONNX export of a really trained checkpoint into a Triton repository; only the inference service's
ServingControl is a recorder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from services.common.archives import ZipLimits
from services.common.errors import InvalidArgument, NotFound
from services.common.storage.db import create_db_engine, migrate, session_factory
from services.common.triton.settings import TritonSettings
from services.common.uploads import ReceivedFile
from services.training.__main__ import MIGRATIONS
from services.training.domain.models import ModelRegistry, ModelService, ServingExporter
from services.training.storage.files import TrainingFiles
from services.training.storage.tables import Base, ModelRow
from tests.unit.training.conftest import TrainedRun
from tests.unit.zips import zip_bytes

T = TypeVar("T")
MODEL_ID = "model_20240115_123456"


class RecordingServingControl:
    """The inference service's side: which models it was told are deleted, and whether their row was gone."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self.deleted: list[tuple[str, bool]] = []

    async def model_deleted(self, model_id: str) -> None:
        self.deleted.append((model_id, self._registry.exists(model_id)))


@dataclass
class Setup:
    registry: ModelRegistry
    serving: RecordingServingControl
    service: ModelService
    exporter: ServingExporter
    repository: Path
    files: TrainingFiles


@pytest.fixture
def setup(tmp_path: Path, yolo_env: dict[str, str]) -> Iterator[Setup]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'training.sqlite3'}")
    migrate(engine, MIGRATIONS, Base.metadata, version_table="alembic_version_training")
    files = TrainingFiles(tmp_path / "data")
    triton = TritonSettings(data_root=tmp_path / "data")
    registry = ModelRegistry(session_factory(engine), files, triton, ZipLimits(), yolo_env)
    exporter = ServingExporter(registry)
    serving = RecordingServingControl(registry)
    yield Setup(registry, serving, ModelService(registry, exporter, serving), exporter, triton.repository, files)
    engine.dispose()


def running(setup: Setup, body: Callable[[ModelService], Awaitable[T]]) -> T:
    """`body` with the exporter running, as the service runs it."""

    async def main() -> T:
        runner = asyncio.create_task(setup.exporter.run())
        try:
            return await body(setup.service)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    return asyncio.run(main())


def receiver(data: bytes) -> Callable[[Path], Awaitable[ReceivedFile]]:
    """What the servicer passes: writes the upload into the staging directory it is given."""

    async def receive(staging: Path) -> ReceivedFile:
        path = staging / "model.zip"
        path.write_bytes(data)
        return ReceivedFile("file", "shapes.zip", path, len(data))

    return receive


def model_zip(trained_run: TrainedRun) -> bytes:
    metadata = {"model_id": MODEL_ID, "name": "Shapes", "imgsz": 64}
    return zip_bytes(
        {
            f"{MODEL_ID}/model.json": json.dumps(metadata).encode(),
            f"{MODEL_ID}/weights/best.pt": trained_run.weights.read_bytes(),
        }
    )


def no_staging_left(files: TrainingFiles) -> bool:
    return all(not entry.name.startswith(".") for entry in files.models_root.iterdir())


def test_an_upload_is_answered_once_it_can_be_served_and_a_delete_unloads_it(
    setup: Setup, trained_run: TrainedRun
) -> None:
    async def upload_then_delete(service: ModelService) -> tuple[ModelRow, bool]:
        row = await service.upload(receiver(model_zip(trained_run)))
        exported = (setup.repository / MODEL_ID).is_dir()
        await service.delete(MODEL_ID)
        return row, exported

    row, exported = running(setup, upload_then_delete)
    assert (row.model_id, row.export_status, row.export_error) == (MODEL_ID, "ready", "")
    assert exported, "answered before the model was in Triton's repository"
    assert no_staging_left(setup.files)
    # Deleted: the row and files first, then the inference service hears it (and unloads the model).
    assert setup.serving.deleted == [(MODEL_ID, False)]
    assert not (setup.repository / MODEL_ID).exists() and not setup.files.model_dir(MODEL_ID).exists()
    with pytest.raises(NotFound):
        setup.service.get(MODEL_ID)


def test_registered_is_the_path_of_a_model_registered_another_way(setup: Setup, trained_run: TrainedRun) -> None:
    # A job registers its model itself, then calls `registered` (its export_for_serving callback).
    async def register_then_announce(service: ModelService) -> ModelRow:
        received = await receiver(model_zip(trained_run))(setup.files.models_root.parent)
        row = await asyncio.to_thread(setup.registry.register_upload, received)
        assert row.export_status == "pending"
        return await service.registered(row.model_id)

    assert running(setup, register_then_announce).export_status == "ready"
    assert (setup.repository / MODEL_ID).is_dir()


def test_a_model_deleted_before_its_export_is_not_found(setup: Setup) -> None:
    with pytest.raises(NotFound):
        running(setup, lambda service: service.registered(MODEL_ID))


def test_a_refused_upload_leaves_nothing_and_exports_nothing(setup: Setup) -> None:
    with pytest.raises(InvalidArgument):
        running(setup, lambda service: service.upload(receiver(b"not a zip")))
    assert no_staging_left(setup.files)
    assert setup.service.list(1, 10) == ([], 0)
    assert not setup.repository.exists() or list(setup.repository.iterdir()) == []


def test_deleting_an_unknown_model_tells_nobody(setup: Setup) -> None:
    with pytest.raises(NotFound):
        running(setup, lambda service: service.delete(MODEL_ID))
    assert setup.serving.deleted == []
