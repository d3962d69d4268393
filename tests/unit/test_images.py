"""services.dataset.domain.images.inspect_image: real decodes of real (and broken) image bytes."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFile

from services.dataset.domain.images import ImageInfo, InvalidImage, inspect_image
from tests.unit.zips import image_bytes, jpeg_bytes, png_bytes, png_declaring

LIMIT = 64_000_000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(64, 48), ImageInfo("JPEG", 64, 48)),
        (png_bytes(30, 20), ImageInfo("PNG", 30, 20)),
        (image_bytes("BMP", 7, 5), ImageInfo("BMP", 7, 5)),
        (image_bytes("WEBP", 9, 11), ImageInfo("WEBP", 9, 11)),
        (jpeg_bytes(1, 1), ImageInfo("JPEG", 1, 1)),
    ],
)
def test_valid_images(data: bytes, expected: ImageInfo) -> None:
    assert inspect_image(data, LIMIT) == expected


def test_grayscale_and_alpha_images() -> None:
    buffer = io.BytesIO()
    Image.new("LA", (12, 8)).save(buffer, "PNG")
    assert inspect_image(buffer.getvalue(), LIMIT) == ImageInfo("PNG", 12, 8)
    buffer = io.BytesIO()
    Image.new("L", (12, 8)).save(buffer, "JPEG")
    assert inspect_image(buffer.getvalue(), LIMIT) == ImageInfo("JPEG", 12, 8)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_rotation_swaps_width_and_height(orientation: int) -> None:
    data = jpeg_bytes(40, 20, orientation=orientation)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 20)  # stored landscape...
        assert image.getexif()[0x0112] == orientation
    assert inspect_image(data, LIMIT) == ImageInfo("JPEG", 20, 40)  # ...displayed portrait


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_exif_orientations_without_rotation_keep_the_size(orientation: int) -> None:
    assert inspect_image(jpeg_bytes(40, 20, orientation=orientation), LIMIT) == ImageInfo("JPEG", 40, 20)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg_is_refused(keep: float) -> None:
    data = jpeg_bytes(128, 96, noise_seed=5)
    assert inspect_image(data, LIMIT).width == 128
    with pytest.raises(InvalidImage, match="not a readable image"):
        inspect_image(data[: int(len(data) * keep)], LIMIT)


def test_truncated_png_is_refused() -> None:
    data = png_bytes(64, 64)
    with pytest.raises(InvalidImage, match="not a readable image"):
        inspect_image(data[: len(data) // 2], LIMIT)


def test_jpeg_with_only_its_header_is_refused() -> None:
    with pytest.raises(InvalidImage, match="not a readable image"):
        inspect_image(jpeg_bytes()[:200], LIMIT)


def test_corrupt_jpeg_data_is_refused() -> None:
    data = bytearray(jpeg_bytes(64, 64, noise_seed=9))
    start = len(data) // 3
    data[start : start + 200] = b"\xff" * 200  # garbage inside the entropy-coded segment
    with pytest.raises(InvalidImage, match="not a readable image"):
        inspect_image(bytes(data), LIMIT)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n", "not a readable image"),
        (b"\xff\xd8\xff", "not a readable image"),
    ],
)
def test_not_an_image(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImage, match=reason):
        inspect_image(data, LIMIT)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO", "PPM"])
def test_formats_outside_the_allowed_set_are_refused(fmt: str) -> None:
    with pytest.raises(InvalidImage, match=f"unsupported image format {fmt}"):
        inspect_image(image_bytes(fmt), LIMIT)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (100_000, 100_000)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidImage, match=r"100000x100000 pixels exceeds the 64000000 pixel limit"):
        inspect_image(bomb, LIMIT)


def test_pixel_limit_is_inclusive() -> None:
    assert inspect_image(png_bytes(100, 50), 5000) == ImageInfo("PNG", 100, 50)
    with pytest.raises(InvalidImage, match="exceeds the 4999 pixel limit"):
        inspect_image(png_bytes(100, 50), 4999)


def test_pixel_limit_zero_means_no_limit() -> None:
    assert inspect_image(png_bytes(300, 200), 0) == ImageInfo("PNG", 300, 200)
