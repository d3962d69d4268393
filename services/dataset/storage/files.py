"""Where the dataset service keeps its files: <data root>/datasets/<dataset_id>/...

upload.zip            the ZIP as uploaded
v1/data.yaml          a prepared version (Ultralytics layout)
v1/images/{train,val,test}/<image_id>.<ext>
v1/labels/{train,val,test}/<image_id>.txt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetFiles:
    data_root: Path

    @property
    def root(self) -> Path:
        return self.data_root / "datasets"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / dataset_id

    def upload_zip(self, dataset_id: str) -> Path:
        return self.dataset_dir(dataset_id) / "upload.zip"

    def version_dir(self, dataset_id: str, version: str) -> Path:
        return self.dataset_dir(dataset_id) / version

    def data_yaml(self, dataset_id: str, version: str) -> Path:
        return self.version_dir(dataset_id, version) / "data.yaml"

    def labels_dir(self, dataset_id: str, version: str) -> Path:
        return self.version_dir(dataset_id, version) / "labels"

    def image_path(self, dataset_id: str, version: str, relpath: str) -> str:
        """The documented `image_path`: relative to the data root, served at GET /static/<image_path>."""
        return f"datasets/{dataset_id}/{version}/{relpath}"
