"""Shared fixtures. `platform` is the whole real platform (launcher → services, gateway, Envoy) on free
ports with a temporary data root, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.instance import PlatformInstance

# Small enough that the "too large" test sends little, large enough for every real test dataset.
TEST_MAX_UPLOAD_BYTES = 24 * 1024 * 1024
# The segmentation service trains its built-in component classifier when it first starts, and the platform is up only
# once it is trained: minutes of CPU. Only the session platform (which tests it) trains one, within its start; the
# other platforms tests start skip it (0 epochs = none).
BUILTIN_EPOCHS = 6
os.environ.setdefault("VM_SEGMENTATION_BUILTIN_EPOCHS", "0")


def platform_env(work: Path) -> dict[str, str]:
    """What the test platforms run with: small upload limits, images fetched from the tests' own local server
    (127.0.0.1 is refused otherwise), and a randomly initialised MobileSAM (no weights can be downloaded) so the
    predictSam routes run SAM's real code; /ingest keeps the built-in layout segmenter."""
    from synthetic.sam_checkpoints import write_random_checkpoint

    checkpoint = work / "mobile_sam_random.pt"
    if not checkpoint.exists():
        write_random_checkpoint("vit_t", checkpoint, seed=0)
    return {
        "VM_DATASET_MAX_UPLOAD_BYTES": str(TEST_MAX_UPLOAD_BYTES),
        "VM_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "VM_SEGMENTATION_SAM_CHECKPOINT": str(checkpoint),
        "VM_SEGMENTATION_SAM_MODEL_TYPE": "vit_t",
        "VM_SEGMENTATION_SAM_POINTS_PER_SIDE": "4",
        "VM_SEGMENTATION_INGEST_SEGMENTER": "layout",
    }


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInstance]:
    root = tmp_path_factory.mktemp("platform")
    instance = PlatformInstance(
        root / "data", extra_env={**platform_env(root), "VM_SEGMENTATION_BUILTIN_EPOCHS": str(BUILTIN_EPOCHS)}
    )
    with instance:
        yield instance


@pytest.fixture(scope="session")
def http(platform: PlatformInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.base_url, timeout=120) as client:
        yield client


def datasets_dir(platform: PlatformInstance) -> Path:
    return platform.data_root / "datasets"
