"""What the inference service needs to know about a registered model, and whether it can be served."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import Conflict


@dataclass(frozen=True)
class ServableModel:
    model_id: str
    classes: tuple[str, ...]
    imgsz: int  # the square input side the model was exported at
    export_status: str  # pending | ready | failed (the training service's ONNX export into Triton's repository)
    export_error: str

    def require_ready(self) -> None:
        """Conflict (409) with the reason unless the model's ONNX export is in Triton's repository."""
        if self.export_status == "failed":
            reason = self.export_error or "no reason given"
            raise Conflict(f"Model {self.model_id} cannot be served: its ONNX export failed: {reason}")
        if self.export_status != "ready":
            raise Conflict(
                f"Model {self.model_id} is still being exported for serving (export status: {self.export_status}); "
                "retry in a few seconds"
            )
