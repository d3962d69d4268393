"""Validation metrics under their two names: Ultralytics' keys and ours, which are the API document's.

Ours are what progress.json, result.json, the job log and a trained model's `metrics` use, and what
GET /models/{model_id} summarises as `training_metrics`. A model.json uploaded with a model may use either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Ultralytics' keys (trainer.metrics, results.csv columns, a checkpoint's train_metrics) -> ours.
ULTRALYTICS_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
}


def from_ultralytics(raw: Mapping[str, Any]) -> dict[str, float]:
    """Our names for the metrics Ultralytics reported (those it left out or None are absent)."""
    return {name: float(raw[key]) for key, name in ULTRALYTICS_KEYS.items() if raw.get(key) is not None}


def training_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The document's training_metrics of a model: mAP50, mAP50-95, precision and recall, each one the model's
    metrics hold as a finite number, under our name or Ultralytics' (ours first); {} for a model without any."""
    summary = {}
    for key, name in ULTRALYTICS_KEYS.items():
        value = next((v for v in (metrics.get(name), metrics.get(key)) if _is_finite_number(v)), None)
        if value is not None:
            summary[name] = float(value)
    return summary


def _is_finite_number(value: object) -> bool:
    # bool is an int subclass: `true` is no metric
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
