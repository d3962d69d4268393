"""Receiving streamed uploads (google.api.HttpBody chunks) onto disk.

REST clients send multipart/form-data; Envoy passes the raw body through, so it is parsed here, streaming,
with every file part written straight to disk. Native gRPC clients may instead send the file itself as the
body (application/zip, application/octet-stream, ...). Nothing is held in memory but small form fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.common.errors import InvalidArgument, PayloadTooLarge

_MAX_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int


@dataclass
class ReceivedUpload:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def single_file(self, name: str) -> ReceivedFile:
        matches = [f for f in self.files if f.field == name]
        if not matches:
            raise InvalidArgument(f'Missing file: send it as the multipart form field "{name}"')
        if len(matches) > 1:
            raise InvalidArgument(f'Send exactly one file in the form field "{name}"')
        return matches[0]


def clean_filename(raw: str, default: str) -> str:
    """The last path component of a client-supplied name, without control characters."""
    name = PurePosixPath(raw.replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:255]
    return name or default


def _human(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:g} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


class UploadReceiver:
    """Feed it the body chunks in order; `finish` returns what was received.

    `parts` are the form fields (files and values) the route takes: any other is refused by name, as the
    gateway refuses unknown JSON fields, since a misspelt field silently ignored does what the client did not
    ask. `raw_field`/`raw_filename` name the file when the body is not multipart. Every file lands in
    `directory` (a staging directory the caller owns and cleans up).
    """

    def __init__(
        self, directory: Path, max_bytes: int, raw_field: str, raw_filename: str, *, parts: Collection[str]
    ) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._raw_field = raw_field
        self._raw_filename = raw_filename
        self._parts = frozenset(parts) | {raw_field}
        self._received = 0
        self._result = ReceivedUpload()
        self._parser: MultipartParser | None = None
        self._raw: BinaryIO | None = None
        self._complete = False
        self._part_headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._part_name = ""
        self._part_filename: str | None = None
        self._part_file: BinaryIO | None = None
        self._part_path: Path | None = None
        self._part_size = 0
        self._field_value = bytearray()
        self._form: bytearray | None = None  # an application/x-www-form-urlencoded body: fields only

    def start(self, content_type: str) -> None:
        media_type, options = parse_options_header(content_type or "application/octet-stream")
        media = media_type.decode().lower() if isinstance(media_type, bytes) else str(media_type).lower()
        if media == "multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise InvalidArgument("multipart/form-data body without a boundary")
            self._parser = MultipartParser(boundary, self._callbacks())
        elif media == "application/x-www-form-urlencoded":
            self._form = bytearray()
        elif media in (
            "application/zip",
            "application/x-zip-compressed",
            "application/octet-stream",
        ) or media.startswith(("image/", "video/")):
            path = self._directory / "raw.part"
            self._raw = open(path, "wb")  # noqa: SIM115 - closed in finish()/close()
            self._result.files.append(ReceivedFile(self._raw_field, self._raw_filename, path, 0))
        else:
            raise InvalidArgument(
                f'Unsupported content type {media!r}: send multipart/form-data with a "{self._raw_field}" file field'
            )

    def feed(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._max_bytes:
            raise PayloadTooLarge(f"Upload is larger than the {_human(self._max_bytes)} limit")
        if self._raw is not None:
            self._raw.write(data)
            return
        if self._form is not None:
            if len(self._form) + len(data) > _MAX_FIELD_BYTES:
                raise InvalidArgument(f"A form-urlencoded body may hold at most {_human(_MAX_FIELD_BYTES)}")
            self._form += data
            return
        assert self._parser is not None
        try:
            self._parser.write(data)
        except MultipartParseError as error:
            raise InvalidArgument(f"Malformed multipart body: {error}") from error

    def finish(self) -> ReceivedUpload:
        if self._raw is not None:
            self._raw.close()
            raw = self._result.files[0]
            self._result.files[0] = ReceivedFile(raw.field, raw.filename, raw.path, self._received)
        elif self._form is not None:
            try:
                fields = parse_qsl(self._form.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError as error:
                raise InvalidArgument("The form body is not UTF-8") from error
            for name, value in fields:
                self._check_part(name)
                self._result.fields[name] = value
        elif self._parser is None:
            raise InvalidArgument("Empty request body")
        elif not self._complete:
            raise InvalidArgument("Malformed multipart body: it ends before its closing boundary")
        return self._result

    def close(self) -> None:
        for handle in (self._raw, self._part_file):
            if handle is not None and not handle.closed:
                handle.close()

    # -- multipart callbacks -------------------------------------------------------------------------

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._append_header("_header_name", data[start:end]),
            "on_header_value": lambda data, start, end: self._append_header("_header_value", data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _append_header(self, attribute: str, chunk: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + chunk)

    def _on_part_begin(self) -> None:
        self._part_headers = {}
        self._part_filename = None
        self._part_name = ""
        self._field_value = bytearray()
        self._part_size = 0

    def _on_header_end(self) -> None:
        self._part_headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition = self._part_headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        self._check_part(self._part_name)
        filename = options.get(b"filename")
        if filename is not None:
            self._part_filename = clean_filename(filename.decode("utf-8", "replace"), default=self._raw_filename)
            self._part_path = self._directory / f"part-{len(self._result.files)}"
            self._part_file = open(self._part_path, "wb")  # noqa: SIM115 - closed in _on_part_end/close()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part_file is not None:
            self._part_file.write(chunk)
            self._part_size += len(chunk)
        else:
            self._field_value += chunk
            if len(self._field_value) > _MAX_FIELD_BYTES:
                raise InvalidArgument(f'Form field "{self._part_name}" is too long')

    def _on_part_end(self) -> None:
        if self._part_file is not None:
            self._part_file.close()
            self._part_file = None
            assert self._part_path is not None and self._part_filename is not None
            self._result.files.append(
                ReceivedFile(self._part_name, self._part_filename, self._part_path, self._part_size)
            )
        else:
            try:
                self._result.fields[self._part_name] = self._field_value.decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f'Form field "{self._part_name}" is not valid UTF-8') from None

    def _on_end(self) -> None:
        self._complete = True

    def _check_part(self, name: str) -> None:
        if name not in self._parts:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise InvalidArgument(f'Unknown form field "{shown}"; this route takes: {", ".join(sorted(self._parts))}')


async def receive_upload(
    messages: AsyncIterator[Any],
    body_of: Callable[[Any], Any],
    receiver: UploadReceiver,
) -> tuple[ReceivedUpload, Any]:
    """Drain a client-streaming upload RPC into `receiver`; returns the upload and the first message
    (whose other fields carry path and query parameters)."""
    first = None
    try:
        async for message in messages:
            body = body_of(message)
            if first is None:
                first = message
                receiver.start(body.content_type)
            if body.data:
                await asyncio.to_thread(receiver.feed, body.data)
        if first is None:
            raise InvalidArgument("Empty request body")
        return await asyncio.to_thread(receiver.finish), first
    finally:
        receiver.close()


async def receive_file(
    messages: AsyncIterator[Any], body_of: Callable[[Any], Any], staging: Path, max_bytes: int, default_name: str
) -> ReceivedFile:
    """The single multipart field `file` (or a raw body) of a client-streaming upload RPC; a raw body is
    named by the first message's `filename`, if any."""
    receiver = UploadReceiver(staging, max_bytes, raw_field="file", raw_filename=default_name, parts={"file"})
    upload, first = await receive_upload(messages, body_of, receiver)
    return client_named(upload.single_file("file"), first)


def client_named(received: ReceivedFile, first: Any) -> ReceivedFile:
    """The file named by the first message's `filename` (how native clients name a raw body), if it has one."""
    if getattr(first, "filename", ""):
        return dataclasses.replace(received, filename=clean_filename(first.filename, received.filename))
    return received
