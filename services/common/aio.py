"""Bridges between the asyncio gRPC servers and the synchronous domain code they call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Drive a blocking iterator (file reads, ZIP writing) in worker threads, one item at a time.

    The iterator is closed when the consumer stops early (e.g. the client went away), so its `finally`
    blocks release files.
    """
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _DONE)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
