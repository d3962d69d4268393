"""services.common.images, the one decoder of every route: real image bytes in every accepted format (and
broken ones), EXIF orientation, the pixel limit checked before decoding, and the same verdict from
verify_image (dataset prepare) and decode_image (everything else)."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from services.common.errors import InvalidArgument
from services.common.images import (
    ImageHeader,
    decode_image,
    decode_image_rgb,
    read_header,
    verify_image,
)
from tests.unit.zips import image_bytes, jpeg_bytes, png_bytes, png_declaring

LIMIT = 64_000_000
# Both ways in: every refusal below must come from each of them, in the same words.
DECODERS: list[Callable[[bytes, int], object]] = [verify_image, decode_image]


def random_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb_image(bgr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))


def mpo_bytes(width: int, height: int) -> bytes:
    first = rgb_image(random_bgr(height, width, seed=1))
    return encoded(first, "MPO", save_all=True, append_images=[rgb_image(random_bgr(height, width, seed=2))])


# --- accepted formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt", "size"),
    [
        (jpeg_bytes(64, 48), "JPEG", (64, 48)),
        (mpo_bytes(20, 10), "MPO", (20, 10)),
        (png_bytes(30, 20), "PNG", (30, 20)),
        (image_bytes("BMP", 7, 5), "BMP", (7, 5)),
        (image_bytes("WEBP", 9, 11), "WEBP", (9, 11)),
        (jpeg_bytes(1, 1), "JPEG", (1, 1)),
    ],
    ids=["jpeg", "mpo", "png", "bmp", "webp", "one-pixel"],
)
def test_every_accepted_format(data: bytes, fmt: str, size: tuple[int, int]) -> None:
    assert verify_image(data, LIMIT) == ImageHeader(fmt, *size, 1)
    image = decode_image(data, LIMIT)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8


def test_jpeg_decodes_to_bgr() -> None:
    image = decode_image(jpeg_bytes(64, 48, color=(200, 40, 40)), LIMIT)  # red
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.abs(image[24, 32].astype(int) - (40, 40, 200)).max() <= 3


def test_mpo_gives_its_first_picture() -> None:
    expected = np.asarray(Image.open(io.BytesIO(encoded(rgb_image(random_bgr(10, 20, seed=1)), "JPEG"))))
    assert np.abs(decode_image_rgb(mpo_bytes(20, 10), LIMIT).astype(int) - expected).max() <= 2


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True})])
def test_lossless_formats_decode_exactly(fmt: str, options: dict[str, object]) -> None:
    pixels = random_bgr(37, 53)
    assert np.array_equal(decode_image(encoded(rgb_image(pixels), fmt, **options), LIMIT), pixels)


def test_rgb_is_the_bgr_image_reversed_and_writable() -> None:
    data = encoded(rgb_image(random_bgr(20, 30)), "PNG")
    rgb = decode_image_rgb(data, LIMIT)
    assert np.array_equal(rgb, decode_image(data, LIMIT)[:, :, ::-1])
    assert rgb.flags.writeable and rgb.flags.c_contiguous
    assert decode_image(data, LIMIT).flags.writeable


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = random_bgr(20, 30)[:, :, 0]
    for fmt in ("PNG", "JPEG"):
        image = decode_image(encoded(Image.fromarray(gray), fmt), LIMIT)
        assert image.shape == (20, 30, 3)
        assert all(np.array_equal(image[:, :, channel], image[:, :, 0]) for channel in range(3))
    assert np.array_equal(decode_image(encoded(Image.fromarray(gray), "PNG"), LIMIT)[:, :, 0], gray)


def test_alpha_is_dropped() -> None:
    pixels = random_bgr(20, 30)
    rgba = rgb_image(pixels).convert("RGBA")
    rgba.putalpha(10)
    assert np.array_equal(decode_image(encoded(rgba, "PNG"), LIMIT), pixels)
    assert verify_image(encoded(Image.new("LA", (12, 8)), "PNG"), LIMIT) == ImageHeader("PNG", 12, 8, 1)


def test_palette_image_keeps_its_colours() -> None:
    palette_image = rgb_image(random_bgr(20, 30)).convert("P")
    expected = np.asarray(palette_image.convert("RGB"))[:, :, ::-1]
    assert np.array_equal(decode_image(encoded(palette_image, "PNG"), LIMIT), expected)


def test_16_bit_png_is_scaled_to_8_bits() -> None:
    samples = np.random.default_rng(1).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    ok, png = cv2.imencode(".png", samples)
    assert ok
    assert np.array_equal(decode_image(png.tobytes(), LIMIT), (samples >> 8).astype(np.uint8))


def test_16_bit_grayscale_png_is_scaled_to_8_bits() -> None:
    samples = np.random.default_rng(2).integers(0, 65536, (20, 30), dtype=np.uint16)
    ok, png = cv2.imencode(".png", samples)
    assert ok
    image = decode_image(png.tobytes(), LIMIT)
    assert all(np.array_equal(image[:, :, channel], (samples >> 8).astype(np.uint8)) for channel in range(3))


# --- EXIF orientation ---------------------------------------------------------------------------------------


def exif_image(fmt: str, orientation: int) -> bytes:
    """A 30x50 image of random pixels (any flip or turn shows), tagged with an EXIF orientation."""
    pixels = random_bgr(30, 50, seed=3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(rgb_image(pixels), fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_is_applied_like_pillow(fmt: str, orientation: int) -> None:
    data = exif_image(fmt, orientation)
    with Image.open(io.BytesIO(data)) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))[:, :, ::-1]
    image = decode_image(data, LIMIT)
    assert np.array_equal(image, expected)
    assert image.flags.c_contiguous
    assert read_header(data).size == verify_image(data, LIMIT).size == (image.shape[1], image.shape[0])


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_rotated_jpeg_comes_out_rotated(orientation: int) -> None:
    data = jpeg_bytes(40, 20, orientation=orientation)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 20)  # stored landscape...
        assert image.getexif()[0x0112] == orientation
    assert verify_image(data, LIMIT).size == (20, 40)  # ...displayed portrait
    assert decode_image(data, LIMIT).shape == (40, 20, 3)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_exif_orientations_without_rotation_keep_the_size(orientation: int) -> None:
    data = jpeg_bytes(40, 20, orientation=orientation)
    assert verify_image(data, LIMIT) == ImageHeader("JPEG", 40, 20, orientation)
    assert decode_image(data, LIMIT).shape == (20, 40, 3)


def test_exif_rotated_jpeg_pixels_are_turned() -> None:
    # Left half dark, right half bright; orientation 6 turns it a quarter clockwise: the top is dark, then.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encoded(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95), LIMIT)
    assert image[5, 10].max() < 30 and image[35, 10].min() > 220


# --- broken data: the same refusal from both ways in -----------------------------------------------------------

TRUNCATED_JPEG = jpeg_bytes(128, 96, noise_seed=5)


def corrupt_jpeg() -> bytes:
    data = bytearray(jpeg_bytes(64, 64, noise_seed=9))
    start = len(data) // 3
    data[start : start + 200] = b"\xff" * 200  # garbage inside the entropy-coded segment
    return bytes(data)


BROKEN = {
    "empty": (b"", "^empty file$"),
    "text": (b"hello, not an image", "not a readable image: not an image in JPEG, PNG, BMP or WebP format"),
    "random-bytes": (np.random.default_rng(4).bytes(5000), "not a readable image"),
    "csv": (b"name,width,height\nbus.jpg,810,1080\n" * 20, "not a readable image"),
    "png-signature-only": (b"\x89PNG\r\n\x1a\n", "not a readable image"),
    "jpeg-marker-only": (b"\xff\xd8\xff", "not a readable image"),
    "jpeg-half": (TRUNCATED_JPEG[: len(TRUNCATED_JPEG) // 2], "not a readable image: corrupt or truncated"),
    "jpeg-90%": (TRUNCATED_JPEG[: len(TRUNCATED_JPEG) * 9 // 10], "corrupt or truncated"),
    "jpeg-no-eoi": (TRUNCATED_JPEG[:-2], "corrupt or truncated"),  # only the end-of-image marker is missing
    "jpeg-headers-only": (TRUNCATED_JPEG[:200], "corrupt or truncated"),
    "jpeg-corrupt-data": (corrupt_jpeg(), "corrupt or truncated"),
    "png-half": (png_bytes(64, 64)[: len(png_bytes(64, 64)) // 2], "corrupt or truncated"),
    "png-cut": (encoded(rgb_image(random_bgr(40, 40)), "PNG")[:-300], "corrupt or truncated"),
    "webp-cut": (encoded(rgb_image(random_bgr(40, 40)), "WEBP")[:-100], "not a readable image"),
    "bmp-cut": (encoded(rgb_image(random_bgr(40, 40)), "BMP")[:-100], "corrupt or truncated"),
}


@pytest.mark.parametrize("decoder", DECODERS, ids=["verify", "decode"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_data_is_refused_with_the_reason(decoder: Callable[[bytes, int], object], kind: str) -> None:
    data, reason = BROKEN[kind]
    with pytest.raises(InvalidArgument, match=reason):
        decoder(data, LIMIT)


@pytest.mark.parametrize("decoder", DECODERS, ids=["verify", "decode"])
@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO", "PPM"])
def test_formats_outside_the_accepted_set_are_refused(decoder: Callable[[bytes, int], object], fmt: str) -> None:
    with pytest.raises(InvalidArgument, match=f"unsupported image format {fmt}: send JPEG, PNG, BMP or WebP"):
        decoder(image_bytes(fmt), LIMIT)


def test_the_whole_jpeg_is_checked_before_the_cut() -> None:
    assert verify_image(TRUNCATED_JPEG, LIMIT).width == 128  # the uncut file is fine


# --- pixel limit: checked from the header, before decoding ----------------------------------------------------


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("decoder", DECODERS, ids=["verify", "decode"])
def test_decompression_bomb_is_refused_from_its_header(decoder: Callable[[bytes, int], object]) -> None:
    bomb = png_declaring(100_000, 100_000)  # 30 GB of pixels in 100 bytes
    assert len(bomb) < 200
    assert read_header(bomb).size == (100_000, 100_000)
    with pytest.raises(
        InvalidArgument, match=r"^image is 100000x100000 \(10000000000 pixels\), more than the 64000000 pixel limit$"
    ):
        decoder(bomb, LIMIT)


SOLID_2000X1500 = encoded(Image.new("RGB", (2000, 1500), (9, 9, 9)), "PNG")


def test_image_at_the_pixel_limit_is_decoded() -> None:
    assert decode_image(SOLID_2000X1500, 3_000_000).shape == (1500, 2000, 3)
    assert verify_image(SOLID_2000X1500, 3_000_000).size == (2000, 1500)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("decoder", DECODERS, ids=["verify", "decode"])
def test_real_image_over_the_pixel_limit_is_refused_before_decoding(decoder: Callable[[bytes, int], object]) -> None:
    with pytest.raises(InvalidArgument, match="more than the 2999999 pixel limit"):
        decoder(SOLID_2000X1500, 2_999_999)


def test_pixel_limit_zero_means_no_limit() -> None:
    assert verify_image(png_bytes(300, 200), 0).size == (300, 200)
    assert decode_image(png_bytes(300, 200), 0).shape == (200, 300, 3)
