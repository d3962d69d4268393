"""Every setting and every `./mesh` command is documented."""

from __future__ import annotations

import re

from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from services.common.settings import REPO_ROOT
from services.common.triton.settings import TritonSettings
from services.registry import MESH_SERVICES


def _env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    return {
        field.validation_alias if isinstance(field.validation_alias, str) else f"{prefix}{name.upper()}"
        for name, field in settings.model_fields.items()
    }


def test_every_setting_is_in_the_configuration_reference() -> None:
    documented = set(re.findall(r"`(VM_[A-Z0-9_]+)`", (REPO_ROOT / "docs" / "configuration.md").read_text()))
    classes = [GatewaySettings, TritonSettings, *(type(service.settings()) for service in MESH_SERVICES)]
    missing = set().union(*(_env_names(cls) for cls in classes)) - documented
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"


def test_every_mesh_command_is_in_the_readme() -> None:
    script = (REPO_ROOT / "mesh").read_text()
    commands = set(re.findall(r"^  ([a-z]+)(?: \| [-a-z |]+)?\)$", script, re.MULTILINE)) - {"help"}
    readme = (REPO_ROOT / "README.md").read_text()
    assert commands >= {"setup", "up", "test", "bench", "lint", "lock"}
    assert all(f"./mesh {command}" in readme for command in commands)
