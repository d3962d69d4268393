"""google.api.HttpBody helpers for servicers: streamed downloads with their HTTP headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import grpc
from google.api import httpbody_pb2

from services.common.aio import iterate_in_thread
from services.common.downloads import Download


def content_disposition(filename: str, inline: bool) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


async def stream_download(
    context: grpc.aio.ServicerContext, produce: Callable[..., Download], *args: object
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """Run `produce(*args)` in a worker thread and send the Download it returns as a stream of HttpBody
    messages; Envoy turns them into one HTTP response body with the content type and disposition."""
    download = await asyncio.to_thread(produce, *args)
    await context.send_initial_metadata(
        (("content-disposition", content_disposition(download.filename, download.inline)),)
    )
    sent = False
    async for chunk in iterate_in_thread(download.chunks):
        sent = True
        yield httpbody_pb2.HttpBody(content_type=download.content_type, data=chunk)
    if not sent:  # an empty file still needs one message to carry its content type
        yield httpbody_pb2.HttpBody(content_type=download.content_type)
