"""Every setting and every `./mesh` command is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from launcher.settings import LauncherSettings
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
    classes = [
        GatewaySettings,
        LauncherSettings,
        TritonSettings,
        *(type(service.settings()) for service in MESH_SERVICES),
    ]
    missing = set().union(*(_env_names(cls) for cls in classes)) - documented
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"


def test_every_mesh_command_is_in_the_readme() -> None:
    script = (REPO_ROOT / "mesh").read_text()
    commands = set(re.findall(r"^  ([a-z]+)(?: \| [-a-z |]+)?\)$", script, re.MULTILINE)) - {"help"}
    readme = (REPO_ROOT / "README.md").read_text()
    assert commands >= {"setup", "up", "test", "bench", "lint", "lock"}
    assert all(f"./mesh {command}" in readme for command in commands)


def _layout_entries() -> list[str]:
    """The paths the README's layout tree names: `dir/` lines, and indented lines under the `dir/` above them."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("```\nprotos/") + 4
    tree = readme[start : readme.index("```", start)]
    entries, parent = [], ""
    for line in tree.splitlines():
        if not line.strip() or line.startswith(" " * 20):  # blank, or the continuation of a description
            continue
        name = line.split()[0]
        if line.startswith(" "):
            entries.append(parent + name)
        else:
            entries.append(name)
            parent = name if name.endswith("/") else ""
    return entries


def test_the_readme_layout_names_only_what_exists() -> None:
    entries = _layout_entries()
    assert len(entries) > 10
    missing = [entry for entry in entries if not (REPO_ROOT / entry).exists()]
    assert not missing, f"the README's layout tree names what does not exist: {missing}"


def test_the_readme_layout_names_every_service_and_top_level_folder() -> None:
    entries = _layout_entries()
    services = {f"{service.module.replace('.', '/')}/" for service in MESH_SERVICES}
    # Top-level folders of the repository (not the generated or local ones), named or with something inside named.
    local = {"build", "data"}
    folders = {f"{p.name}/" for p in REPO_ROOT.iterdir() if p.is_dir() and p.name[0] != "." and p.name not in local}
    unnamed = sorted(services - set(entries)) + sorted(f for f in folders if not any(e.startswith(f) for e in entries))
    assert not unnamed, f"add to the README's layout tree: {unnamed}"


def _imported_modules(path: Path) -> set[str]:
    """The absolute module names a Python file imports, wherever the import statement is (lazy ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_layout_keeps_product_code_apart_from_tests_and_benchmarks() -> None:
    # Product code holds only what the product runs; benchmarks share synthetic/ with the tests, never tests/ itself;
    # services talk to each other only over gRPC (a peer's address comes from services/registry.py).
    rules = {"bench": ("tests",), "synthetic": ("tests",), "services": ("tests", "synthetic")}
    for service in MESH_SERVICES:
        rules[service.module.replace(".", "/")] = tuple(other.module for other in MESH_SERVICES if other != service)
    offending = [
        f"{path.relative_to(REPO_ROOT)} imports {module}"
        for folder, forbidden in rules.items()
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        for module in sorted(_imported_modules(path))
        if any(module == name or module.startswith(f"{name}.") for name in forbidden)
    ]
    assert not offending, offending
