"""Shared fixtures. `platform` is the whole real platform (launcher → services, gateway, Envoy) on free
ports with a temporary data root, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.instance import PlatformInstance

# Small enough that the "too large" test sends little, large enough for every real test dataset.
TEST_MAX_UPLOAD_BYTES = 24 * 1024 * 1024


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInstance]:
    instance = PlatformInstance(
        tmp_path_factory.mktemp("platform") / "data",
        extra_env={"VM_DATASET_MAX_UPLOAD_BYTES": str(TEST_MAX_UPLOAD_BYTES)},
    )
    with instance:
        yield instance


@pytest.fixture(scope="session")
def http(platform: PlatformInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.base_url, timeout=120) as client:
        yield client


def datasets_dir(platform: PlatformInstance) -> Path:
    return platform.data_root / "datasets"
