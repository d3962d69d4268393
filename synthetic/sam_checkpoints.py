"""SAM-shaped random weights: real SAM weights cannot be downloaded here, so tests and the benchmark give the
segmentation service these instead and run its real loading and prediction code (the masks mean nothing)."""

from __future__ import annotations

from pathlib import Path

import torch

from services.segmentation.domain.sam import build_model


def write_random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save the state dict of a randomly initialised `model_type` model (the same for the same `seed`) to `path`."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = build_model(model_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
