"""What the training domain needs from elsewhere, as interfaces (implemented over gRPC in clients.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class DatasetVersion:
    dataset_id: str
    version: str
    classes: list[str]
    train_count: int
    val_count: int


class DatasetSource(Protocol):
    async def describe(self, dataset_id: str, version: str) -> DatasetVersion:
        """The prepared version; NotFound for an unknown dataset or version, InvalidArgument when the
        dataset is not prepared or has no classes."""
        ...

    async def fetch(self, dataset_id: str, version: str, destination: Path) -> Path:
        """Copy the version (images, labels) into `destination`; returns its data.yaml (absolute paths)."""
        ...
