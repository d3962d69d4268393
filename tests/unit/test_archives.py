"""services.common.archives: ZIP safety checks on untrusted archives, and the streaming ZIP writer."""

from __future__ import annotations

import io
import os
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.archives import (
    ZipLimits,
    ZipMember,
    copy_entry,
    open_zip,
    read_entry,
    safe_entries,
    stream_zip,
)
from services.common.errors import InvalidArgument
from tests.unit.zips import corrupt_stored_member, jpeg_bytes, mark_encrypted, symlink_info, write_zip, zip_bytes

MIB = 1024 * 1024


def entries_of(path: Path, limits: ZipLimits | None = None) -> list[str]:
    with open_zip(path) as archive:
        return [entry.name for entry in safe_entries(archive, limits or ZipLimits())]


def refused(path: Path, limits: ZipLimits | None = None) -> str:
    with open_zip(path) as archive, pytest.raises(InvalidArgument) as caught:
        safe_entries(archive, limits or ZipLimits())
    return caught.value.detail


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 MB of zeros, deflated to ~50 KB: a ~1000x expansion ratio."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("images/zeros.bin", bytes(50 * MIB))
    return path


# -- open_zip ------------------------------------------------------------------------------------------


def test_open_zip_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    path.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="empty"):
        open_zip(path)


def test_open_zip_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "photo.zip"
    path.write_bytes(jpeg_bytes())
    with pytest.raises(InvalidArgument, match="not a valid ZIP"):
        open_zip(path)


def test_open_zip_refuses_a_truncated_zip(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"hello" * 1000})
    path = tmp_path / "cut.zip"
    path.write_bytes(data[: len(data) // 2])  # the central directory is gone
    with pytest.raises(InvalidArgument, match="not a valid ZIP"):
        open_zip(path)


# -- safe_entries: paths ---------------------------------------------------------------------------------


def test_safe_entries_lists_files_with_normalised_names_and_skips_directories(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "ok.zip",
        [
            ("images/", b""),
            ("images/a.jpg", b"a"),
            ("./labels/a.txt", b"0 0.5 0.5 0.1 0.1"),
            ("labels\\b.txt", b"x"),
            ("deep//nested/./c.txt", b"c"),
            ("./", b""),
        ],
    )
    with open_zip(path) as archive:
        entries = safe_entries(archive, ZipLimits())
    assert [e.name for e in entries] == ["images/a.jpg", "labels/a.txt", "labels/b.txt", "deep/nested/c.txt"]
    assert entries[0].size == 1
    assert entries[1].info.filename == "./labels/a.txt"


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "images/../../evil.txt",
        "a/b/../../../evil.txt",
        "..\\evil.txt",
        "/etc/x",
        "\\etc\\x",
        "C:/Windows/evil.dll",
        "c:evil.txt",
    ],
)
def test_safe_entries_refuses_zip_slip_and_absolute_paths(tmp_path: Path, name: str) -> None:
    path = write_zip(tmp_path / "slip.zip", [("images/ok.jpg", b"ok"), (name, b"pwned")])
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()[1] == name  # stored as is: the check under test is ours, not zipfile's
    assert "Unsafe path" in refused(path)


def test_safe_entries_allows_dots_inside_names(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "dots.zip", {"images/..a.jpg": b"1", "images/b..jpg": b"2", "...": b"3"})
    assert entries_of(path) == ["images/..a.jpg", "images/b..jpg", "..."]


def test_safe_entries_refuses_a_symlink_entry(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "link.zip", [("images/a.jpg", b"a"), (symlink_info("images/link.jpg"), b"/etc/passwd")])
    assert "symbolic link" in refused(path)


def test_safe_entries_accepts_regular_file_modes(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("run.sh", (2024, 1, 1, 0, 0, 0))
    info.external_attr = 0o100755 << 16
    path = write_zip(tmp_path / "modes.zip", [(info, b"#!/bin/sh\n")])
    assert entries_of(path) == ["run.sh"]


def test_safe_entries_refuses_an_encrypted_entry(tmp_path: Path) -> None:
    path = tmp_path / "locked.zip"
    path.write_bytes(mark_encrypted(zip_bytes({"images/a.jpg": b"secret"})))
    with zipfile.ZipFile(path) as archive:
        assert archive.infolist()[0].flag_bits & 0x1
    assert "encrypted" in refused(path)


# -- safe_entries: size limits ----------------------------------------------------------------------------


def test_safe_entries_refuses_a_zip_bomb_by_ratio(zip_bomb: Path) -> None:
    with zipfile.ZipFile(zip_bomb) as archive:
        info = archive.infolist()[0]
    assert info.file_size == 50 * MIB
    assert info.file_size / info.compress_size > 200
    detail = refused(zip_bomb)
    assert "zip bomb" in detail and "images/zeros.bin" in detail


def test_safe_entries_ratio_limit_is_configurable(zip_bomb: Path) -> None:
    assert entries_of(zip_bomb, ZipLimits(max_ratio=100_000)) == ["images/zeros.bin"]


def test_safe_entries_ignores_the_ratio_of_small_entries(tmp_path: Path) -> None:
    # Exactly ratio_min_bytes of zeros compresses ~1000x, but small entries are exempt.
    path = write_zip(tmp_path / "small.zip", {"labels/zeros.txt": bytes(MIB)})
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    assert info.file_size > 200 * info.compress_size
    assert entries_of(path) == ["labels/zeros.txt"]
    assert "zip bomb" in refused(path, ZipLimits(ratio_min_bytes=MIB - 1))


def test_safe_entries_refuses_too_many_entries(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "many.zip", {f"images/{i}.jpg": b"x" for i in range(6)})
    assert len(entries_of(path, ZipLimits(max_entries=6))) == 6
    assert "6 entries" in refused(path, ZipLimits(max_entries=5))


def test_safe_entries_counts_directory_entries_towards_the_entry_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "dirs.zip", [(f"d{i}/", b"") for i in range(4)] + [("a.txt", b"a")])
    assert "5 entries" in refused(path, ZipLimits(max_entries=4))


def test_safe_entries_refuses_an_entry_over_the_entry_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "big.zip", {"a.bin": b"x" * 1000, "b.bin": b"y" * 1001})
    assert entries_of(path, ZipLimits(max_entry_bytes=1001)) == ["a.bin", "b.bin"]
    detail = refused(path, ZipLimits(max_entry_bytes=1000))
    assert "'b.bin'" in detail and "1001 bytes" in detail


def test_safe_entries_refuses_an_archive_over_the_total_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "total.zip", {f"{i}.bin": bytes([i]) * 400 for i in range(3)})
    assert len(entries_of(path, ZipLimits(max_total_bytes=1200))) == 3
    assert "1200 bytes" in refused(path, ZipLimits(max_total_bytes=1199))


# -- reading entries ----------------------------------------------------------------------------------------


def test_read_entry_and_copy_entry_return_the_exact_bytes(tmp_path: Path) -> None:
    payload = random.Random(7).randbytes(300_000)
    path = write_zip(tmp_path / "data.zip", {"images/a.bin": payload, "images/b.jpg": jpeg_bytes()})
    with open_zip(path) as archive:
        entries = safe_entries(archive, ZipLimits())
        assert read_entry(archive, entries[0]) == payload
        copy_entry(archive, entries[0], tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == payload


def test_read_entry_refuses_corrupt_data(tmp_path: Path) -> None:
    data = zip_bytes({"images/a.jpg": jpeg_bytes(), "images/b.jpg": jpeg_bytes()}, zipfile.ZIP_STORED)
    path = tmp_path / "crc.zip"
    path.write_bytes(corrupt_stored_member(data, "images/a.jpg"))
    with open_zip(path) as archive:
        first, second = safe_entries(archive, ZipLimits())
        with pytest.raises(InvalidArgument, match=r"'images/a\.jpg' is corrupt"):
            read_entry(archive, first)
        with pytest.raises(InvalidArgument, match="corrupt"):
            copy_entry(archive, first, tmp_path / "out.jpg")
        assert read_entry(archive, second) == jpeg_bytes()


# -- stream_zip --------------------------------------------------------------------------------------------


def unzip(chunks: list[bytes]) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def test_stream_zip_output_is_a_valid_zip_with_identical_contents(tmp_path: Path) -> None:
    photo = jpeg_bytes(64, 48, noise_seed=1)
    (tmp_path / "photo.jpg").write_bytes(photo)
    (tmp_path / "notes.txt").write_text("hello\n" * 1000)
    members = [
        ("data.yaml", b"nc: 1\nnames:\n  0: cat\n"),
        ("images/train/photo.jpg", tmp_path / "photo.jpg"),
        ("labels/train/photo.txt", tmp_path / "notes.txt"),
        ("empty.txt", b""),
    ]
    chunks = list(stream_zip(members))
    assert all(chunks)
    assert unzip(chunks) == {
        "data.yaml": b"nc: 1\nnames:\n  0: cat\n",
        "images/train/photo.jpg": photo,
        "labels/train/photo.txt": b"hello\n" * 1000,
        "empty.txt": b"",
    }
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
    # Already-compressed formats are stored, text is deflated.
    assert kinds["images/train/photo.jpg"] == zipfile.ZIP_STORED
    assert kinds["labels/train/photo.txt"] == zipfile.ZIP_DEFLATED
    assert kinds["data.yaml"] == zipfile.ZIP_DEFLATED


def test_stream_zip_of_nothing_is_an_empty_zip() -> None:
    chunks = list(stream_zip([]))
    assert unzip(chunks) == {}


def test_stream_zip_is_lazy_and_reads_members_as_it_goes() -> None:
    consumed: list[str] = []

    def members() -> Iterator[ZipMember]:
        for index in range(3):
            consumed.append(f"m{index}")
            # Incompressible and stored: each member alone fills more than one chunk.
            yield f"m{index}.jpg", random.Random(index).randbytes(2 * MIB)

    stream = stream_zip(members(), chunk_bytes=MIB)
    assert consumed == []
    next(stream)
    assert consumed == ["m0"]
    rest = list(stream)
    assert consumed == ["m0", "m1", "m2"]
    assert len(rest) >= 2


def test_stream_zip_streams_a_large_file_member_in_bounded_chunks(tmp_path: Path) -> None:
    size = 5 * MIB
    big = tmp_path / "big.jpg"  # stored: the archive holds all 5 MiB
    big.write_bytes(bytes(range(251)) * (size // 251) + b"x" * (size % 251))
    chunks = list(stream_zip([("images/big.jpg", big)]))
    assert len(chunks) >= 4
    # Never more than chunk_bytes pending plus one 1 MiB copy step (and some header bytes).
    assert max(len(chunk) for chunk in chunks) <= 2 * MIB + 4096
    assert unzip(chunks) == {"images/big.jpg": big.read_bytes()}


def test_stream_zip_respects_a_smaller_chunk_size(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\x01" * (3 * MIB))
    small = tmp_path / "a.txt"
    small.write_bytes(b"a" * 100)
    members = [(f"files/{i}.txt", small) for i in range(50)] + [("model.onnx", big)]
    chunks = list(stream_zip(members, chunk_bytes=256 * 1024))
    assert len(chunks) >= 3
    assert max(len(chunk) for chunk in chunks) <= 256 * 1024 + MIB + 4096
    contents = unzip(chunks)
    assert contents["model.onnx"] == b"\x01" * (3 * MIB)
    assert len(contents) == 51


def test_stream_zip_accepts_files_older_than_1980(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    old.write_bytes(b"from the seventies")
    os.utime(old, (0, 0))  # 1970: before the earliest time a ZIP header can hold
    archive = zipfile.ZipFile(io.BytesIO(b"".join(stream_zip([("old.txt", old)]))))
    assert archive.read("old.txt") == b"from the seventies"
