"""Where the segmentation service keeps its files under the data root.

segmentation/uploads/<name>            images uploaded through /ingest (GET /uploads/{filename} serves them)
segmentation/results/<task_id>.json    a finished ingest task's components (written before its row says 200)
segmentation/resources/<id>.png        training resources added through the add-training-resource API
segmentation/training/<task_id>/       a classifier training: spec.json, progress.json, work/ checkpoints,
                                       model.onnx and result.json once finished
segmentation/work/                     per-request staging (uploads being received); anything left there is
                                       from a killed process
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.storage.files import discard_leftover


@dataclass(frozen=True)
class SegmentationFiles:
    data_root: Path

    @property
    def root(self) -> Path:
        return self.data_root / "segmentation"

    @property
    def uploads_root(self) -> Path:
        return self.root / "uploads"

    @property
    def results_root(self) -> Path:
        return self.root / "results"

    def result_file(self, task_id: str) -> Path:
        return self.results_root / f"{task_id}.json"

    @property
    def resources_root(self) -> Path:
        return self.root / "resources"

    def resource_file(self, resource_id: str) -> Path:
        return self.resources_root / f"{resource_id}.png"

    @property
    def training_root(self) -> Path:
        return self.root / "training"

    def training_dir(self, task_id: str) -> Path:
        return self.training_root / task_id

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    def prepare(self) -> None:
        for directory in (self.uploads_root, self.results_root, self.resources_root, self.training_root):
            directory.mkdir(parents=True, exist_ok=True)
        if self.work_root.is_dir():
            for entry in self.work_root.iterdir():
                discard_leftover(entry)
        self.work_root.mkdir(parents=True, exist_ok=True)
