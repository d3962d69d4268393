"""File-system helpers: atomic writes, staging directories, and paths that cannot escape their root."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from services.common.errors import NotFound
from services.common.processes import ended_here

log = structlog.get_logger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
# Staging directories carry their process (PID and a tag of the host) after the prefix: several replicas of a
# service may share a data root, and a start-up clean-up must not take the work of a replica that still runs.
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_FOREIGN_STAGING_SECONDS = 24 * 3600
_STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)\.([0-9a-f]{{8}})\.")


def staging_prefix() -> str:
    """The name prefix of this process's staging directories (for tools that make their own)."""
    return f"{STAGING_PREFIX}{os.getpid()}.{_HOST_TAG}."


def _staged_by_a_live_process(path: Path) -> bool:
    """A staging directory of another process that may still be running: of this host and alive, or of another
    host (whose processes cannot be looked at) and touched within the last day."""
    match = _STAGING_NAME.match(path.name)
    if match is None:
        return False  # made before staging names carried their process
    pid, host_tag = int(match.group(1)), match.group(2)
    if host_tag == _HOST_TAG:
        return pid != os.getpid() and not ended_here(socket.gethostname(), pid)
    try:
        return time.time() - path.stat().st_mtime < _FOREIGN_STAGING_SECONDS
    except FileNotFoundError:
        return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object a worker process writes atomically; {} while it does not exist yet (or is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link to `source` (it shares the writer's file, which must only ever be replaced by rename, never
    rewritten in place); a durable copy across file systems. A missing source raises FileNotFoundError."""
    try:
        os.link(source, destination)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, destination)
        with open(destination, "rb") as handle:
            os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A fresh hidden directory under `parent`; removed on exit unless the caller renamed it away.

    Publishing is `os.rename(staging, final)`, atomic on one file system. Leftovers of a killed process
    carry STAGING_PREFIX, so start-up clean-up can find them.
    """
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{staging_prefix()}{uuid.uuid4().hex}"
    path.mkdir()
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Delete a directory tree: first renamed aside (atomic), then removed, so no half-deleted tree is
    ever visible under its real name."""
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def discard_leftover(path: Path) -> None:
    """Start-up clean-up: delete a file or directory an interrupted operation left behind, and say so. The
    staging directory of another process that still runs (a replica sharing the data root) is left alone."""
    if _staged_by_a_live_process(path):
        return
    log.warning("removing leftover from an interrupted operation", path=str(path))
    remove_tree(path) if path.is_dir() else path.unlink(missing_ok=True)


def is_transient(name: str) -> bool:
    """Staging or trash leftovers that start-up clean-up may delete."""
    return name.startswith((STAGING_PREFIX, TRASH_PREFIX))


def resolve_inside(root: Path, relative: str) -> Path:
    """`root/relative`, refusing anything that would leave `root` (.., absolute paths, symlinks out)."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or any(part in ("..", "") for part in parts) or parts[0] == "/":
        raise NotFound(f"File not found: {relative}")
    candidate = (root / Path(*parts)).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise NotFound(f"File not found: {relative}")
    return candidate
