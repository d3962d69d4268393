"""Where the inference service keeps its files under the data root.

inference/tasks/<task_id>/            a completed task's result files (annotated images, videos), published
                                      with one rename from a staging directory beside it
inference/sessions/<session_id>/      an export session: images/<uuid>.jpg, results.csv, metadata.json
inference/uploads/                    uploaded images kept for their documented image_path
inference/work/                       per-request staging directories (uploads being received, videos
                                      being annotated); anything left there is from a killed process
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.storage.files import discard_leftover


@dataclass(frozen=True)
class InferenceFiles:
    data_root: Path

    @property
    def root(self) -> Path:
        return self.data_root / "inference"

    @property
    def tasks_root(self) -> Path:
        return self.root / "tasks"

    def task_dir(self, task_id: str) -> Path:
        return self.tasks_root / task_id

    @property
    def sessions_root(self) -> Path:
        return self.root / "sessions"

    @property
    def uploads_root(self) -> Path:
        return self.root / "uploads"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    def discard_leftovers(self) -> None:
        """Start-up clean-up of request staging: nothing in work/ outlives its request. (Tasks and sessions
        are checked against their rows: TaskQueue.recover, SessionStore.recover.)"""
        if self.work_root.is_dir():
            for entry in self.work_root.iterdir():
                discard_leftover(entry)
