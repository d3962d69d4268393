"""services.common.uploads: the streaming multipart/raw body receiver, fed real bodies in odd chunks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.common.errors import InvalidArgument, PayloadTooLarge
from services.common.uploads import (
    ReceivedFile,
    ReceivedUpload,
    UploadReceiver,
    clean_filename,
    receive_upload,
)
from tests.unit.zips import zip_bytes

BOUNDARY = "----VisionMeshBoundary7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def file_part(name: str, filename: str, data: bytes, content_type: str = "application/zip") -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


def text_part(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"


def closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# The form fields the tests' route takes.
PARTS = {"file", "extra", "description", "tags", "image_url", "user_id", "e"}


def receive(directory: Path, content_type: str, body: bytes, chunk: int = 7, max_bytes: int = 10**9) -> ReceivedUpload:
    receiver = UploadReceiver(directory, max_bytes, raw_field="file", raw_filename="dataset.zip", parts=PARTS)
    try:
        receiver.start(content_type)
        for piece in chunked(body, chunk):
            receiver.feed(piece)
        return receiver.finish()
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def archive() -> bytes:
    """A real ZIP whose bytes include CR LF and a fake boundary prefix, to trip a naive parser."""
    tricky = b"\r\n--" + BOUNDARY.encode()[:-1] + b"X\r\n" + b"\r\n--\r\n"
    return zip_bytes({"images/a.bin": random.Random(3).randbytes(20_000), "tricky.txt": tricky * 50})


@pytest.mark.parametrize("chunk", [1, 7, 13, 64, 1000, 10**9])
def test_multipart_file_is_saved_byte_identical_and_fields_captured(tmp_path: Path, archive: bytes, chunk: int) -> None:
    body = (
        text_part("description", "Cats & dogs, 猫と犬")
        + file_part("file", "pets.zip", archive)
        + text_part("tags", "")
        + closing()
    )
    upload = receive(tmp_path, MULTIPART, body, chunk=chunk)
    received = upload.single_file("file")
    assert received.filename == "pets.zip"
    assert received.size == len(archive)
    assert received.path.read_bytes() == archive
    assert received.path.parent == tmp_path
    assert upload.fields == {"description": "Cats & dogs, 猫と犬", "tags": ""}


def test_multipart_with_several_files_keeps_each_one(tmp_path: Path) -> None:
    first, second = b"first\r\n" * 100, b"--" * 300
    body = file_part("file", "a.zip", first) + file_part("extra", "b.bin", second, "image/png") + closing()
    upload = receive(tmp_path, MULTIPART, body)
    assert [(f.field, f.filename, f.size) for f in upload.files] == [
        ("file", "a.zip", len(first)),
        ("extra", "b.bin", len(second)),
    ]
    assert upload.files[0].path.read_bytes() == first
    assert upload.files[1].path.read_bytes() == second
    assert upload.files[0].path != upload.files[1].path


def test_multipart_ignores_an_epilogue(tmp_path: Path) -> None:
    body = file_part("file", "a.zip", b"PK") + closing() + b"trailing epilogue\r\n"
    assert receive(tmp_path, MULTIPART, body).single_file("file").path.read_bytes() == b"PK"


def test_multipart_content_type_is_case_insensitive_and_boundary_may_be_quoted(tmp_path: Path) -> None:
    body = file_part("file", "a.zip", b"data") + closing()
    upload = receive(tmp_path, f'Multipart/Form-Data; boundary="{BOUNDARY}"', body)
    assert upload.single_file("file").path.read_bytes() == b"data"


def test_multipart_without_closing_boundary_is_refused(tmp_path: Path, archive: bytes) -> None:
    body = file_part("file", "pets.zip", archive)  # the client stopped before --boundary--
    with pytest.raises(InvalidArgument, match="closing boundary"):
        receive(tmp_path, MULTIPART, body)


def test_multipart_with_no_body_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="closing boundary"):
        receive(tmp_path, MULTIPART, b"")


def test_multipart_without_boundary_is_refused(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 100, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    with pytest.raises(InvalidArgument, match="without a boundary"):
        receiver.start("multipart/form-data")


def test_malformed_multipart_is_refused(tmp_path: Path) -> None:
    body = f"--{BOUNDARY}\r\nno colon in this header line\r\n\r\ndata\r\n".encode() + closing()
    with pytest.raises(InvalidArgument, match="Malformed multipart"):
        receive(tmp_path, MULTIPART, body)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_an_unknown_form_field_is_refused_by_name(tmp_path: Path, chunk: int) -> None:
    body = text_part("confidence", "0.5") + closing()
    with pytest.raises(InvalidArgument, match='Unknown form field "confidence"; this route takes: description, '):
        receive(tmp_path, f"multipart/form-data; boundary={BOUNDARY}", body, chunk)
    with pytest.raises(InvalidArgument, match='Unknown form field "confidence"'):
        receive(tmp_path, "application/x-www-form-urlencoded", b"user_id=u&confidence=0.5")


def test_a_form_field_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="description"\r\n\r\n'.encode()
    body = head + b"caf\xe9\r\n" + closing()  # Latin-1, not UTF-8
    with pytest.raises(InvalidArgument, match='Form field "description" is not valid UTF-8'):
        receive(tmp_path, f"multipart/form-data; boundary={BOUNDARY}", body)


def test_overlong_text_field_is_refused(tmp_path: Path) -> None:
    body = text_part("description", "x" * (64 * 1024 + 1)) + closing()
    with pytest.raises(InvalidArgument, match='"description" is too long'):
        receive(tmp_path, MULTIPART, body, chunk=4096)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../x.zip", "x.zip"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\Desktop\\data set.zip", "data set.zip"),
        ("..\\..\\x.zip", "x.zip"),
        ("a\x00b\x1fc\x7f.zip", "abc.zip"),
        ("  spaced.zip  ", "spaced.zip"),
        ("", "dataset.zip"),
        ("dir/", "dir"),
        ("/", "dataset.zip"),
        ("\x01\x02", "dataset.zip"),
        ("猫.zip", "猫.zip"),
    ],
)
def test_clean_filename(raw: str, expected: str) -> None:
    assert clean_filename(raw, default="dataset.zip") == expected


def test_clean_filename_caps_the_length() -> None:
    assert clean_filename("a" * 1000 + ".zip", "d.zip") == "a" * 255


@pytest.mark.parametrize(
    ("sent", "saved"),
    [("../../x.zip", "x.zip"), ("C:\\temp\\y.zip", "y.zip"), ("", "dataset.zip"), ("dir/../../z.zip", "z.zip")],
)
def test_multipart_filename_is_sanitised_and_file_stays_in_directory(tmp_path: Path, sent: str, saved: str) -> None:
    body = file_part("file", sent, b"PK\x03\x04") + closing()
    received = receive(tmp_path, MULTIPART, body).single_file("file")
    assert received.filename == saved
    assert received.path.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [received.path.name]


# -- raw bodies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/zip",
        "application/x-zip-compressed",
        "application/octet-stream",
        "Application/ZIP; charset=binary",
        "image/jpeg",
        "video/mp4",
        "",
    ],
)
def test_raw_body_is_saved_as_the_raw_field(tmp_path: Path, archive: bytes, content_type: str) -> None:
    upload = receive(tmp_path, content_type, archive)
    assert upload.fields == {}
    assert upload.files == [ReceivedFile("file", "dataset.zip", tmp_path / "raw.part", len(archive))]
    assert (tmp_path / "raw.part").read_bytes() == archive


def test_empty_raw_body_gives_an_empty_file(tmp_path: Path) -> None:
    upload = receive(tmp_path, "application/zip", b"")
    assert upload.single_file("file").size == 0


def test_form_urlencoded_body_gives_fields_only(tmp_path: Path) -> None:
    upload = receive(
        tmp_path, "application/x-www-form-urlencoded", b"image_url=http%3A%2F%2Fa.b%2Fc.png&user_id=u+1&e="
    )
    assert upload.files == []
    assert upload.fields == {"image_url": "http://a.b/c.png", "user_id": "u 1", "e": ""}
    with pytest.raises(InvalidArgument, match="Missing file"):
        upload.single_file("file")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
def test_unsupported_content_type_is_refused(tmp_path: Path, content_type: str) -> None:
    receiver = UploadReceiver(tmp_path, 100, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    with pytest.raises(InvalidArgument, match="Unsupported content type") as caught:
        receiver.start(content_type)
    assert '"file"' in caught.value.detail
    assert list(tmp_path.iterdir()) == []


def test_finish_without_start_is_an_empty_body(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 100, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    with pytest.raises(InvalidArgument, match="Empty request body"):
        receiver.finish()


# -- size limit -------------------------------------------------------------------------------------------


def test_limit_is_inclusive(tmp_path: Path) -> None:
    assert receive(tmp_path, "application/zip", b"x" * 100, max_bytes=100).single_file("file").size == 100


def test_raw_body_over_the_limit_is_refused_before_it_is_written(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 100, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    receiver.start("application/zip")
    receiver.feed(b"x" * 60)
    with pytest.raises(PayloadTooLarge, match="100 bytes limit"):
        receiver.feed(b"y" * 41)
    receiver.close()
    assert (tmp_path / "raw.part").read_bytes() == b"x" * 60


def test_multipart_over_the_limit_is_refused(tmp_path: Path, archive: bytes) -> None:
    body = file_part("file", "pets.zip", archive) + closing()
    with pytest.raises(PayloadTooLarge, match="limit"):
        receive(tmp_path, MULTIPART, body, chunk=7, max_bytes=len(body) - 1)
    exact = tmp_path / "exact"
    exact.mkdir()
    assert receive(exact, MULTIPART, body, max_bytes=len(body)).single_file("file").size == len(archive)


@pytest.mark.parametrize(
    ("limit", "text"),
    [(1536, "1.5 KiB"), (10 * 1024**2, "10.0 MiB"), (10 * 1024**3, "10.0 GiB"), (5000 * 1024**3, "5000.0 GiB")],
)
def test_limit_message_is_human_readable(tmp_path: Path, limit: int, text: str) -> None:
    receiver = UploadReceiver(tmp_path, limit, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    receiver.start("application/octet-stream")
    receiver._received = limit
    with pytest.raises(PayloadTooLarge) as caught:
        receiver.feed(b"!")
    receiver.close()
    assert caught.value.detail == f"Upload is larger than the {text} limit"


def test_close_closes_a_part_file_left_open_mid_stream(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 10**6, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    receiver.start(MULTIPART)
    receiver.feed(file_part("file", "a.zip", b"partial data")[:-10])
    handle = receiver._part_file
    assert handle is not None and not handle.closed
    receiver.close()
    assert handle.closed
    with pytest.raises(InvalidArgument, match="closing boundary"):
        receiver.finish()


# -- ReceivedUpload.single_file ---------------------------------------------------------------------------


def test_single_file_requires_exactly_one_file_in_the_field(tmp_path: Path) -> None:
    upload = receive(tmp_path, MULTIPART, text_part("file", "not a file") + closing())
    assert upload.fields == {"file": "not a file"}
    with pytest.raises(InvalidArgument, match='Missing file: send it as the multipart form field "file"'):
        upload.single_file("file")
    body = file_part("file", "a.zip", b"a") + file_part("file", "b.zip", b"b") + closing()
    with pytest.raises(InvalidArgument, match="exactly one file"):
        receive(tmp_path, MULTIPART, body).single_file("file")


# -- receive_upload (the RPC drain loop, with plain objects for messages) ---------------------------------


def messages(content_type: str, pieces: list[bytes]) -> AsyncIterator[SimpleNamespace]:
    async def generate() -> AsyncIterator[SimpleNamespace]:
        for index, piece in enumerate(pieces):
            # Like HttpBody chunks: only the first message carries the content type.
            yield SimpleNamespace(body=SimpleNamespace(content_type=content_type if index == 0 else "", data=piece))

    return generate()


def test_receive_upload_drains_a_stream_and_returns_the_first_message(tmp_path: Path, archive: bytes) -> None:
    body = file_part("file", "../pets.zip", archive) + closing()
    pieces = [b"", *chunked(body, 7)]  # an empty first message, as some clients send
    receiver = UploadReceiver(tmp_path, 10**6, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    upload, first = asyncio.run(receive_upload(messages(MULTIPART, pieces), lambda m: m.body, receiver))
    assert first.body.content_type == MULTIPART
    received = upload.single_file("file")
    assert (received.filename, received.path.read_bytes()) == ("pets.zip", archive)


def test_receive_upload_of_an_empty_stream_is_refused(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 10**6, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    with pytest.raises(InvalidArgument, match="Empty request body"):
        asyncio.run(receive_upload(messages(MULTIPART, []), lambda m: m.body, receiver))


def test_receive_upload_closes_the_receiver_on_error(tmp_path: Path) -> None:
    receiver = UploadReceiver(tmp_path, 10, raw_field="file", raw_filename="dataset.zip", parts={"file"})
    with pytest.raises(PayloadTooLarge):
        asyncio.run(receive_upload(messages("application/zip", [b"12345", b"678901"]), lambda m: m.body, receiver))
    assert receiver._raw is not None and receiver._raw.closed
