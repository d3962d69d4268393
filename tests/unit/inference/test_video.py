"""services.inference.domain.video: probing, lazy decoding and MP4 writing of videos made here with OpenCV and
PyAV, and refusals of what is not a (readable) video."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.inference.domain import video
from services.inference.domain.video import (
    Mp4Writer,
    VideoInfo,
    VideoLimits,
    frame_rate_for_encoding,
    probe_video,
    read_frames,
)

LIMITS = VideoLimits(max_pixels=3840 * 2160, max_frames=10_000)


def moving_rectangle_frames(count: int, width: int, height: int, *, noise_seed: int | None = None) -> list[np.ndarray]:
    """BGR frames: a horizontal gradient with a white rectangle moving right, so consecutive frames differ.
    With `noise_seed`, per-frame noise makes every frame expensive to encode (big frames for truncation)."""
    rng = np.random.default_rng(noise_seed)
    gradient = np.linspace(30, 200, width, dtype=np.float32)
    frames = []
    for index in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = gradient[None, :, None].astype(np.uint8)
        left = (index * 3) % max(width - width // 4, 1)
        frame[height // 4 : height // 2, left : left + width // 4] = 255
        if noise_seed is not None:
            frame = cv2.add(frame, rng.integers(0, 60, frame.shape, dtype=np.uint8))
        frames.append(frame)
    return frames


def write_with_opencv(path: Path, fourcc: str, frames: list[np.ndarray], fps: float) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_h264_with_pyav(path: Path, frames: list[np.ndarray], rate: Fraction, rotation: int = 0) -> Path:
    """H.264 in an MP4 as a plain muxer writes it (index at the end), independently of Mp4Writer."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="bgr24")
            video_frame.pts, video_frame.time_base = index, 1 / rate
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


def write_with_mp4_writer(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    with Mp4Writer(path, width, height, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def write_audio_with_pyav(path: Path, codec: str, sample_format: str) -> Path:
    """One second of a 440 Hz sine wave (mono), no video. `sample_format` is "flt" or "s16"."""
    sample_rate = 44_100
    wave = np.sin(2 * np.pi * 440 * np.arange(sample_rate) / sample_rate) * 0.3
    samples = wave.astype(np.float32) if sample_format == "flt" else (wave * 32767).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=sample_format, layout="mono")
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def mean_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def descriptors_open_on(path: Path) -> int:
    """How many of this process's file descriptors point at `path`."""
    target = str(path.resolve())
    count = 0
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{descriptor}") == target
        except OSError:  # closed between listing and reading (e.g. the listing's own descriptor)
            continue
    return count


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    small = moving_rectangle_frames(30, 64, 48)
    return {
        "mp4v": write_with_opencv(directory / "opencv.mp4", "mp4v", small, 25),
        "mjpg": write_with_opencv(directory / "opencv.avi", "MJPG", small, 10),
        "h264": write_h264_with_pyav(
            directory / "pyav.mp4", moving_rectangle_frames(40, 320, 240), Fraction(30000, 1001)
        ),
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mp4v", VideoInfo(64, 48, 25.0, 30, "mpeg4", 1.2)),
        ("mjpg", VideoInfo(64, 48, 10.0, 30, "mjpeg", 3.0)),
        ("h264", VideoInfo(320, 240, pytest.approx(30000 / 1001), 40, "h264", pytest.approx(40 * 1001 / 30000))),
    ],
)
def test_probe(videos: dict[str, Path], name: str, expected: VideoInfo) -> None:
    assert probe_video(videos[name], LIMITS) == expected


@pytest.mark.parametrize(
    ("name", "count", "width", "height"), [("mp4v", 30, 64, 48), ("mjpg", 30, 64, 48), ("h264", 40, 320, 240)]
)
def test_read_frames_decodes_every_frame_in_order(
    videos: dict[str, Path], name: str, count: int, width: int, height: int
) -> None:
    decoded = list(read_frames(videos[name], LIMITS))
    originals = moving_rectangle_frames(count, width, height)
    assert len(decoded) == count
    assert all(frame.shape == (height, width, 3) and frame.dtype == np.uint8 for frame in decoded)
    assert max(mean_abs_diff(frame, original) for frame, original in zip(decoded, originals, strict=True)) < 4
    assert mean_abs_diff(decoded[0], decoded[5]) > 4  # the rectangle moved: frames are not all the same


def test_read_frames_is_lazy_and_closes_the_file(videos: dict[str, Path]) -> None:
    path = videos["h264"]
    # 40 frames against a limit of 5: decoding everything up front would raise.
    frames = read_frames(path, VideoLimits(LIMITS.max_pixels, max_frames=5))
    assert descriptors_open_on(path) == 0  # nothing is opened before the first next()
    assert len(list(itertools.islice(frames, 3))) == 3
    assert descriptors_open_on(path) == 1
    frames.close()
    assert descriptors_open_on(path) == 0

    assert len(list(read_frames(path, LIMITS))) == 40
    assert descriptors_open_on(path) == 0  # exhausted: closed too


def test_rotation_metadata_is_not_applied(tmp_path: Path) -> None:
    path = write_h264_with_pyav(tmp_path / "rotated.mp4", moving_rectangle_frames(5, 64, 48), Fraction(25), 90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90  # the metadata is there...
    info = probe_video(path, LIMITS)
    assert (info.width, info.height) == (64, 48)
    assert next(read_frames(path, LIMITS)).shape == (48, 64, 3)  # ...and the frames stay as stored


def test_mp4_writer_round_trip(tmp_path: Path) -> None:
    originals = moving_rectangle_frames(30, 320, 240)
    path = write_with_mp4_writer(tmp_path / "out.mp4", originals, fps=29.97)

    info = probe_video(path, LIMITS)
    assert (info.width, info.height, info.codec, info.frame_count) == (320, 240, "h264", 30)
    assert info.fps == pytest.approx(30000 / 1001)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"  # what browsers decode
    decoded = list(read_frames(path, LIMITS))
    assert len(decoded) == 30
    assert max(mean_abs_diff(frame, original) for frame, original in zip(decoded, originals, strict=True)) < 3
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes first
    # x264 records its settings in the stream: the defaults are preset veryfast (subme=2), crf 23, one thread.
    assert all(setting in data for setting in (b" subme=2 ", b" crf=23.0 ", b" threads=1 "))


def test_mp4_writer_pads_odd_sizes_to_even(tmp_path: Path) -> None:
    originals = moving_rectangle_frames(10, 63, 47)
    path = write_with_mp4_writer(tmp_path / "odd.mp4", originals)

    info = probe_video(path, LIMITS)
    assert (info.width, info.height, info.frame_count) == (64, 48, 10)
    decoded = list(read_frames(path, LIMITS))
    for frame, original in zip(decoded, originals, strict=True):
        assert mean_abs_diff(frame[:47, :63], original) < 4
        # The padding repeats the last column and row.
        assert mean_abs_diff(frame[:47, 63], original[:, 62]) < 8
        assert mean_abs_diff(frame[47, :63], original[46]) < 8


def test_mp4_writer_misuse_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    writer = Mp4Writer(path, 64, 48, 25)
    with pytest.raises(ValueError, match="48x64x3 uint8"):
        writer.write(np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="48x64x3 uint8"):
        writer.write(np.zeros((48, 64, 3), np.float32))
    writer.write(moving_rectangle_frames(1, 64, 48)[0])
    writer.close()
    writer.close()  # idempotent
    assert probe_video(path, LIMITS).frame_count == 1
    with pytest.raises(ValueError, match="already closed"):
        writer.write(np.zeros((48, 64, 3), np.uint8))

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError), Mp4Writer(failed, 64, 48, 25) as writer:
        for frame in moving_rectangle_frames(5, 64, 48):
            writer.write(frame)
        raise RuntimeError("the model server went away")
    assert not failed.exists()

    empty = tmp_path / "empty.mp4"
    with pytest.raises(ValueError, match="no frames"), Mp4Writer(empty, 64, 48, 25):
        pass
    assert not empty.exists()


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (29.97, Fraction(30000, 1001)),
        (30000 / 1001, Fraction(30000, 1001)),
        (23.976, Fraction(24000, 1001)),
        (59.94, Fraction(60000, 1001)),
        (25.0, Fraction(25)),
        (30.0004, Fraction(30)),
        (12.5, Fraction(25, 2)),
        (0.5, Fraction(1, 2)),
        (0.0, Fraction(25)),
        (-30.0, Fraction(25)),
        (float("nan"), Fraction(25)),
        (float("inf"), Fraction(25)),
    ],
)
def test_frame_rate_for_encoding(fps: float, expected: Fraction) -> None:
    assert frame_rate_for_encoding(fps) == expected


def empty_file(path: Path) -> Path:
    path.touch()
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path


def text_file(path: Path) -> Path:
    path.write_text("a text file, not a video\n" * 40)
    return path


def png_renamed(path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(path, "PNG")
    return path


def aac_audio(path: Path) -> Path:
    return write_audio_with_pyav(path.with_suffix(".m4a"), "aac", "flt")


def wav_audio(path: Path) -> Path:
    return write_audio_with_pyav(path.with_suffix(".wav"), "pcm_s16le", "s16")


def hls_playlist_of_another_video(path: Path) -> Path:
    """A playlist naming a video beside it: FFmpeg's hls demuxer, if allowed, would read that other file."""
    write_with_opencv(path.parent / "other_upload.mp4", "mp4v", moving_rectangle_frames(5, 64, 48), 25)
    playlist = path.with_suffix(".m3u8")
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nother_upload.mp4\n#EXT-X-ENDLIST\n")
    return playlist


def unknown_codec(path: Path) -> Path:
    """An AVI whose video FourCC no decoder knows."""
    path = write_with_opencv(path.with_suffix(".avi"), "MJPG", moving_rectangle_frames(5, 64, 48), 25)
    path.write_bytes(path.read_bytes().replace(b"MJPG", b"QQQQ"))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (empty_file, "empty file"),
        (random_bytes, "not a readable video file"),
        (text_file, "not a readable video file"),
        (png_renamed, "not a video in a supported container"),
        (aac_audio, r"no video stream \(only audio\)"),
        (wav_audio, "not a video in a supported container"),
        (hls_playlist_of_another_video, "not a video in a supported container"),
        (unknown_codec, "unsupported codec"),
    ],
)
def test_not_a_readable_video_is_refused(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    path = make(tmp_path / "upload.mp4")
    with pytest.raises(InvalidArgument, match=message):
        probe_video(path, LIMITS)
    with pytest.raises(InvalidArgument, match=message):
        next(read_frames(path, LIMITS))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("source", ["opencv-mp4v", "mp4-writer", "opencv-mjpg"])
def test_truncated_video_is_refused_or_shorter(tmp_path: Path, source: str, keep: float) -> None:
    frames = moving_rectangle_frames(30, 64, 48, noise_seed=1)
    if source == "opencv-mp4v":  # index at the end: lost with the tail
        path = write_with_opencv(tmp_path / "full.mp4", "mp4v", frames, 25)
    elif source == "mp4-writer":  # index at the front: the media data is what is lost
        path = write_with_mp4_writer(tmp_path / "full.mp4", frames)
    else:
        path = write_with_opencv(tmp_path / "full.avi", "MJPG", frames, 25)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    try:
        probe_video(path, LIMITS)
        decoded = sum(1 for _ in read_frames(path, LIMITS))
    except InvalidArgument:
        return  # refused as a bad upload (400): one of the two acceptable outcomes
    assert decoded < 30


def test_corrupt_frame_in_the_middle_is_skipped(tmp_path: Path) -> None:
    originals = moving_rectangle_frames(30, 64, 48)
    path = write_with_opencv(tmp_path / "corrupt.avi", "MJPG", originals, 25)
    data = bytearray(path.read_bytes())
    jpeg_starts = [index for index in range(len(data)) if data[index : index + 3] == b"\xff\xd8\xff"]
    start = jpeg_starts[15]
    size = int.from_bytes(data[start - 4 : start], "little")  # the AVI chunk's size precedes its data
    data[start : start + size] = bytes(size)
    path.write_bytes(bytes(data))

    decoded = list(read_frames(path, LIMITS))
    assert len(decoded) == 29
    assert mean_abs_diff(decoded[-1], originals[-1]) < 4  # decoding went on after the bad frame


class _Packet:
    def __init__(self, frames: list[str]) -> None:
        self.frames = frames

    def decode(self) -> list[str]:
        return self.frames


class _ContainerFailingAfterTwoPackets:
    def demux(self, stream: object) -> Iterator[_Packet]:
        yield _Packet(["frame 1"])
        yield _Packet(["frame 2"])
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")


def test_container_unreadable_midway_stops_with_the_frame_reached() -> None:
    # No real file found makes FFmpeg's demuxers fail midway (they resynchronise or end early): a stand-in.
    frames = video._decoded_frames(_ContainerFailingAfterTwoPackets(), stream=None)  # type: ignore[arg-type]
    assert [next(frames), next(frames)] == ["frame 1", "frame 2"]
    with pytest.raises(InvalidArgument, match="corrupt after frame 2"):
        next(frames)


def test_frames_over_the_pixel_limit_are_refused(videos: dict[str, Path]) -> None:
    assert probe_video(videos["mp4v"], VideoLimits(64 * 48, 100)).width == 64
    too_small = VideoLimits(64 * 48 - 1, 100)
    with pytest.raises(InvalidArgument, match="64x48 frames exceed the 3071 pixel limit"):
        probe_video(videos["mp4v"], too_small)
    with pytest.raises(InvalidArgument, match="pixel limit"):
        next(read_frames(videos["mp4v"], too_small))


def test_videos_over_the_frame_limit_are_refused(videos: dict[str, Path]) -> None:
    assert probe_video(videos["mjpg"], VideoLimits(LIMITS.max_pixels, 30)).frame_count == 30
    assert len(list(read_frames(videos["mjpg"], VideoLimits(LIMITS.max_pixels, 30)))) == 30

    ten = VideoLimits(LIMITS.max_pixels, 10)
    with pytest.raises(InvalidArgument, match="30 frames; the limit is 10"):
        probe_video(videos["mjpg"], ten)  # the container says how many
    frames = read_frames(videos["mjpg"], ten)
    assert len(list(itertools.islice(frames, 10))) == 10
    with pytest.raises(InvalidArgument, match="more than 10 frames"):
        next(frames)  # the eleventh
