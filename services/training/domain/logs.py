"""Job logs: timestamped lines appended by the service and the job's worker; read by offset, by last-n,
or followed live (SSE and gRPC streaming)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.clock import iso, utcnow
from services.common.errors import InvalidArgument

TAIL_MAX_LINES = 50
# How often a follower looks for new lines: the bound on how late an SSE client sees a line.
FOLLOW_POLL_SECONDS = 0.05
# How often it asks whether the job has ended (a database query): ending may be noticed this much later.
FINISHED_CHECK_SECONDS = 0.5


def append_line(log_file: Path, message: str) -> None:
    """Append `[timestamp] message` as one write, so lines from the service and the worker never mix."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    line = f"[{iso(utcnow())}] {message}\n".encode()
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Tail:
    offset: int
    lines: list[str]


def tail(log_file: Path, offset: int) -> Tail:
    size = _size(log_file)
    if offset < 0 or offset > size:
        raise InvalidArgument(f"offset {offset} is outside the log, which has {size} bytes")
    lines: list[str] = []
    consumed = 0
    if size == 0:
        return Tail(0, lines)
    with open(log_file, "rb") as handle:
        handle.seek(offset)
        while len(lines) < TAIL_MAX_LINES:
            raw = handle.readline()
            if not raw.endswith(b"\n"):
                break  # end of file, or a line the writer has not finished
            lines.append(raw[:-1].decode("utf-8", "replace"))
            consumed += len(raw)
    return Tail(offset + consumed, lines)


@dataclass(frozen=True)
class LastLines:
    lines: list[str]
    total: int


def last_lines(log_file: Path, count: int) -> LastLines:
    if count < 0:
        raise InvalidArgument("n must be 0 (all lines) or a positive number of lines")
    if not log_file.exists():
        return LastLines([], 0)
    total = 0
    kept: deque[str] = deque(maxlen=count or None)
    with open(log_file, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            total += 1
            kept.append(raw[:-1].decode("utf-8", "replace"))
    return LastLines(list(kept), total)


def _read_from(log_file: Path, offset: int) -> bytes:
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


async def follow(log_file: Path, finished: Callable[[], bool], offset: int = 0) -> AsyncIterator[tuple[str, int]]:
    """Yield (line, offset after it) from `offset` on, as lines are written, until `finished()` holds and
    everything written before that has been sent. Until then a line still being written waits for its
    newline."""
    checked_at = -math.inf
    while True:
        done = False
        if time.monotonic() - checked_at >= FINISHED_CHECK_SECONDS:
            # Checked before reading, so the lines written just before the end are still sent.
            done, checked_at = finished(), time.monotonic()
        data = _read_from(log_file, offset)
        usable = data if done else data[: data.rfind(b"\n") + 1]
        position = 0
        while position < len(usable):
            newline = usable.find(b"\n", position)
            end = len(usable) if newline < 0 else newline + 1
            raw, position = usable[position:end], end
            offset += len(raw)
            yield raw.rstrip(b"\n").decode("utf-8", "replace"), offset
        if done:
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
