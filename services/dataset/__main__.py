"""Dataset service entry point: `python -m services.dataset`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from visionmesh.dataset.v1 import dataset_pb2, dataset_pb2_grpc

from services.common.grpc_server import run_service, serve
from services.common.locks import KeyedLocks
from services.common.storage.db import create_db_engine, database_probe, migrate, session_factory
from services.dataset.domain.annotations import AnnotationManager
from services.dataset.domain.datasets import DatasetManager
from services.dataset.servicer import AnnotationServicer, DatasetServicer
from services.dataset.settings import DatasetSettings
from services.dataset.storage.files import DatasetFiles
from services.dataset.storage.tables import Base

MIGRATIONS = Path(__file__).parent / "storage" / "migrations"


async def main(settings: DatasetSettings) -> None:
    engine = create_db_engine(settings.sqlalchemy_url("dataset"))
    migrate(engine, MIGRATIONS, Base.metadata, version_table="alembic_version_dataset")
    db = session_factory(engine)
    files = DatasetFiles(settings.data_root)
    locks = KeyedLocks()
    datasets = DatasetManager(db, files, settings, locks)
    await asyncio.to_thread(datasets.recover)
    annotations = AnnotationManager(db, files, datasets, locks)

    def register(server: grpc.aio.Server) -> list[str]:
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(DatasetServicer(datasets, settings), server)
        dataset_pb2_grpc.add_AnnotationServiceServicer_to_server(AnnotationServicer(annotations), server)
        return [service.full_name for service in dataset_pb2.DESCRIPTOR.services_by_name.values()]

    async def dispose() -> None:
        engine.dispose()

    await serve("dataset", settings, register, readiness=database_probe(engine), on_shutdown=dispose)


if __name__ == "__main__":
    dataset_settings = DatasetSettings()
    run_service("dataset", dataset_settings, lambda: main(dataset_settings))
