"""Where the training service keeps its files under the data root.

jobs/<job_id>.log                     a job's log (the document's `log_file`)
training/jobs/<job_id>/               a job's work directory: job.json, dataset/, train/ (Ultralytics run:
                                      weights/{best,last}.pt, results.csv), progress.json, result.json
training/ultralytics/                 Ultralytics' config directory (offline fonts and settings)
models/<model_id>/weights/best.pt     a registered model, with model.json and results.csv
models/<model_id>/model.onnx          its ONNX export (also written into the Triton repository)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainingFiles:
    data_root: Path

    def log_file(self, job_id: str) -> Path:
        return self.data_root / "jobs" / f"{job_id}.log"

    @property
    def jobs_root(self) -> Path:
        return self.data_root / "training" / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_root / job_id

    @property
    def ultralytics_config(self) -> Path:
        return self.data_root / "training" / "ultralytics"

    @property
    def models_root(self) -> Path:
        return self.data_root / "models"

    def model_dir(self, model_id: str) -> Path:
        return self.models_root / model_id

    def model_weights(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "weights" / "best.pt"

    def model_history(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "results.csv"

    def model_onnx(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "model.onnx"
