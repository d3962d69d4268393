"""google.api.HttpBody helpers for servicers: streamed downloads with their HTTP headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    download: Download, context: grpc.aio.ServicerContext
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """Send `download` as a stream of HttpBody messages; Envoy turns it into one HTTP response body."""
    await context.send_initial_metadata(
        (("content-disposition", content_disposition(download.filename, download.inline)),)
    )
    sent = False
    async for chunk in iterate_in_thread(download.chunks):
        sent = True
        yield httpbody_pb2.HttpBody(content_type=download.content_type, data=chunk)
    if not sent:  # an empty file still needs one message to carry its content type
        yield httpbody_pb2.HttpBody(content_type=download.content_type)
