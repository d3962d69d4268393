"""services.common.storage.files: atomic writes, staging directories, tree removal, contained paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.errors import NotFound
from services.common.storage import files
from services.common.storage.files import (
    STAGING_PREFIX,
    TRASH_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    discard_leftover,
    is_transient,
    remove_tree,
    resolve_inside,
    staging_dir,
    staging_prefix,
)


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- atomic writes ----------------------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "data.bin"
    atomic_write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert listing(target.parent) == ["data.bin"]


def test_atomic_write_replaces_existing_content(tmp_path: Path) -> None:
    target = tmp_path / "data.yaml"
    atomic_write_text(target, "old: 1\n")
    atomic_write_text(target, "new: 猫\n")
    assert target.read_text(encoding="utf-8") == "new: 猫\n"
    assert listing(tmp_path) == ["data.yaml"]


def test_atomic_write_failure_keeps_the_old_content_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data.yaml"
    target.write_text("old\n")

    def broken_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        assert Path(src).read_bytes() == b"new\n"  # the temporary file was complete
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert listing(tmp_path) == ["data.yaml"]


# -- staging_dir / remove_tree ----------------------------------------------------------------------------


def test_staging_dir_is_fresh_hidden_and_removed_on_exit(tmp_path: Path) -> None:
    parent = tmp_path / "datasets" / "ds_1"
    with staging_dir(parent) as staging:
        assert staging.parent == parent and staging.is_dir()
        assert staging.name.startswith(STAGING_PREFIX) and is_transient(staging.name)
        (staging / "images").mkdir()
        (staging / "images" / "a.jpg").write_bytes(b"x")
        with staging_dir(parent) as other:
            assert other != staging
    assert listing(parent) == []


def test_staging_dir_is_removed_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staging_dir(tmp_path) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert listing(tmp_path) == []


def test_staging_dir_renamed_away_is_published(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with staging_dir(tmp_path) as staging:
        (staging / "data.yaml").write_text("nc: 0\n")
        os.rename(staging, final)
    assert listing(tmp_path) == ["v1"]
    assert (final / "data.yaml").read_text() == "nc: 0\n"


def test_remove_tree_deletes_a_tree_without_leaving_trash(tmp_path: Path) -> None:
    tree = tmp_path / "ds_1"
    (tree / "v1" / "images" / "train").mkdir(parents=True)
    (tree / "v1" / "images" / "train" / "a.jpg").write_bytes(b"a")
    (tmp_path / "keep.txt").write_text("keep")
    remove_tree(tree)
    assert listing(tmp_path) == ["keep.txt"]


def test_remove_tree_of_a_missing_path_does_nothing(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    assert listing(tmp_path) == []


def test_start_up_clean_up_leaves_the_staging_of_a_live_replica_alone(tmp_path: Path) -> None:
    """Replicas may share a data root: a staging directory names its process, and only one whose process has
    ended (or, of another host, one untouched for a day) is a leftover."""
    replica = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    tag = staging_prefix().split(".")[-2]
    live = tmp_path / f"{STAGING_PREFIX}{replica.pid}.{tag}.abc"
    dead = tmp_path / f"{STAGING_PREFIX}{int(ended.stdout)}.{tag}.abc"
    foreign, stale = tmp_path / f"{STAGING_PREFIX}1.00000000.new", tmp_path / f"{STAGING_PREFIX}1.00000000.old"
    old_style = tmp_path / f"{STAGING_PREFIX}0123"
    for path in (live, dead, foreign, stale, old_style):
        path.mkdir()
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    try:
        for path in list(tmp_path.iterdir()):
            discard_leftover(path)
        assert listing(tmp_path) == sorted(p.name for p in (live, foreign))
        with staging_dir(tmp_path) as own:
            assert own.name.startswith(staging_prefix())
    finally:
        replica.kill()
        replica.wait()
    discard_leftover(live)
    assert listing(tmp_path) == [foreign.name]


@pytest.mark.parametrize(
    ("name", "transient"),
    [(f"{STAGING_PREFIX}abc", True), (f"{TRASH_PREFIX}v1-1234", True), ("v1", False), ("staging-x", False)],
)
def test_is_transient(name: str, transient: bool) -> None:
    assert is_transient(name) is transient


# -- resolve_inside ------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "ds_1" / "v1" / "images" / "train").mkdir(parents=True)
    (root / "ds_1" / "v1" / "images" / "train" / "a.jpg").write_bytes(b"a")
    (tmp_path / "secret.txt").write_text("secret")
    return root


@pytest.mark.parametrize(
    "relative",
    ["ds_1/v1/images/train/a.jpg", "ds_1\\v1\\images\\train\\a.jpg", "./ds_1/v1/images/train/a.jpg", "ds_1//v1/"],
)
def test_resolve_inside_returns_paths_below_the_root(root: Path, relative: str) -> None:
    resolved = resolve_inside(root, relative)
    assert resolved.is_relative_to(root.resolve())
    assert resolved.name in ("a.jpg", "v1")


def test_resolve_inside_allows_a_missing_file_below_the_root(root: Path) -> None:
    assert resolve_inside(root, "ds_1/new.txt") == root.resolve() / "ds_1" / "new.txt"


@pytest.mark.parametrize(
    "relative",
    [
        "",
        ".",
        "..",
        "../secret.txt",
        "ds_1/../../secret.txt",
        "ds_1/../ds_1/v1",
        "..\\secret.txt",
        "/etc/passwd",
        "\\etc\\passwd",
    ],
)
def test_resolve_inside_refuses_paths_that_leave_the_root(root: Path, relative: str) -> None:
    with pytest.raises(NotFound, match="File not found"):
        resolve_inside(root, relative)


def test_resolve_inside_refuses_a_symlink_pointing_out(root: Path) -> None:
    (root / "ds_1" / "escape").symlink_to(root.parent)
    (root / "ds_1" / "leak.txt").symlink_to(root.parent / "secret.txt")
    with pytest.raises(NotFound):
        resolve_inside(root, "ds_1/escape/secret.txt")
    with pytest.raises(NotFound):
        resolve_inside(root, "ds_1/leak.txt")


def test_resolve_inside_follows_a_symlink_that_stays_inside(root: Path) -> None:
    (root / "latest").symlink_to(root / "ds_1" / "v1")
    assert resolve_inside(root, "latest/images/train/a.jpg") == (root / "ds_1/v1/images/train/a.jpg").resolve()


def test_resolve_inside_works_when_the_root_itself_is_a_symlink(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert resolve_inside(alias, "ds_1/v1/images/train/a.jpg").read_bytes() == b"a"
