"""Metric names: what Ultralytics reports, and the document's training_metrics of a model."""

from __future__ import annotations

from services.training.domain.metrics import from_ultralytics, training_metrics


def test_ultralytics_metrics_get_our_names() -> None:
    raw = {
        "metrics/precision(B)": 0.5,
        "metrics/recall(B)": 0.25,
        "metrics/mAP50(B)": 0.75,
        "metrics/mAP50-95(B)": None,  # not measured
        "val/box_loss": 1.2,
    }
    assert from_ultralytics(raw) == {"mAP50": 0.75, "precision": 0.5, "recall": 0.25}


def test_training_metrics_of_a_trained_model() -> None:
    # A trained model keeps result.json's metrics: our names, null where a value was not finite.
    metrics = {"precision": 0.88, "recall": 0.82, "mAP50": 0.85, "mAP50-95": None, "fitness": 0.7}
    assert training_metrics(metrics) == {"mAP50": 0.85, "precision": 0.88, "recall": 0.82}


def test_training_metrics_of_an_uploaded_model_json_in_either_naming() -> None:
    ultralytics = {"metrics/mAP50(B)": 0.6, "metrics/mAP50-95(B)": 0.4, "metrics/precision(B)": 1, "x": 2}
    assert training_metrics(ultralytics) == {"mAP50": 0.6, "mAP50-95": 0.4, "precision": 1.0}
    # Both names: ours wins; a value that is no number falls back to the other name, or is left out.
    mixed = {"mAP50": 0.9, "metrics/mAP50(B)": 0.1, "recall": "high", "metrics/recall(B)": 0.3, "precision": True}
    assert training_metrics(mixed) == {"mAP50": 0.9, "recall": 0.3}


def test_a_model_without_metrics_has_empty_training_metrics() -> None:
    assert training_metrics({}) == {}
    assert training_metrics({"mAP50": float("nan"), "recall": float("inf"), "loss": 1.0}) == {}
