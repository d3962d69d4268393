"""The data root holds only what docs/configuration.md says it holds."""

from __future__ import annotations

import re

import httpx
import pytest

from launcher.instance import PlatformInstance
from services.common.settings import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_every_top_level_folder_of_the_data_root_is_documented(platform: PlatformInstance, http: httpx.Client) -> None:
    assert http.get("/datasets").status_code == 200
    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    section = reference[reference.index("## The data root") :]
    documented = set(re.findall(r"^\| `([a-z_]+)/` \|", section, re.MULTILINE))
    written = {entry.name for entry in platform.data_root.iterdir() if entry.is_dir()}
    assert written, platform.data_root
    assert not written - documented, f"document in docs/configuration.md: {sorted(written - documented)}"
