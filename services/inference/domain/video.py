"""Video reading and writing with PyAV (FFmpeg): probing and lazy decoding of uploaded videos, and H.264 MP4
output that browsers play while it is still downloading.

Decoded frames are BGR uint8 arrays (OpenCV's layout) as stored: rotation metadata is not applied.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.container
import av.error
import av.stream
import av.video
import numpy as np

from services.common.errors import InvalidArgument

DEFAULT_FPS = 25.0

# Only these demuxers may open an upload. Playlist and pipeline demuxers (hls, concat, sdp, image2...) would
# otherwise let an uploaded text file make FFmpeg read other local files or open network streams, and image
# demuxers would accept a PNG as a one-frame "video".
_VIDEO_CONTAINERS = (
    "mov",  # mp4, mov, m4v, 3gp
    "matroska",  # mkv, webm
    "avi",
    "mpegts",
    "mpeg",
    "flv",
    "asf",  # wmv
    "ogg",
    "mxf",
    "dv",
    "nut",
    "ivf",
    "yuv4mpegpipe",
    "h264",  # raw elementary streams, as some cameras record them
    "hevc",
    "m4v",
)
_OPEN_OPTIONS = {"format_whitelist": ",".join(_VIDEO_CONTAINERS), "protocol_whitelist": "file"}


@dataclass(frozen=True)
class VideoLimits:
    max_pixels: int  # per frame
    max_frames: int


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # average frame rate; DEFAULT_FPS when the container does not say
    frame_count: int | None  # from the container (an estimate from the duration if it has no count), else None
    codec: str  # FFmpeg's codec name: "h264", "mpeg4", "mjpeg", "av1" (not the decoder library, e.g. libdav1d)
    duration_seconds: float | None


def probe_video(path: Path, limits: VideoLimits) -> VideoInfo:
    """Describe the video at `path`, decoding its first frame to be sure it is one.

    Raises InvalidArgument for anything that is not a decodable video within `limits`, including a container
    that states more than `limits.max_frames` frames (read_frames would refuse it at that frame anyway).
    """
    with _open(path) as container:
        stream = _video_stream(container, limits)
        first_frame = next(_decoded_frames(container, stream), None)
        if first_frame is None:
            raise InvalidArgument("the video has no decodable frames")
        _check_pixels(first_frame.width, first_frame.height, limits)
        fps = _average_fps(stream)
        duration = _duration_seconds(container, stream)
        if stream.frames > 0:
            if stream.frames > limits.max_frames:
                raise InvalidArgument(f"the video has {stream.frames} frames; the limit is {limits.max_frames}")
            frame_count: int | None = stream.frames
        else:
            frame_count = round(duration * fps) if duration is not None else None
        return VideoInfo(
            width=first_frame.width,
            height=first_frame.height,
            fps=fps,
            frame_count=frame_count,
            codec=stream.codec_context.codec.canonical_name,
            duration_seconds=duration,
        )


def read_frames(path: Path, limits: VideoLimits) -> Generator[np.ndarray, None, None]:
    """Decode the video at `path` lazily into BGR uint8 HxWx3 frames, in order.

    Nothing is opened before the first `next()`; the file is closed when the iterator is exhausted or closed.
    Every frame has the first frame's size (a stream that changes resolution midway is rescaled to it).
    Corrupt packets FFmpeg can skip are skipped. InvalidArgument is raised where the input fails: a file
    probe_video would refuse, frame `limits.max_frames + 1`, or a container that cannot be read any further.
    """
    with _open(path) as container:
        stream = _video_stream(container, limits)
        stream.codec_context.thread_type = "AUTO"  # frame and slice threads: decoding is most of the cost
        size: tuple[int, int] | None = None
        for index, frame in enumerate(_decoded_frames(container, stream)):
            if index == limits.max_frames:
                raise InvalidArgument(f"the video has more than {limits.max_frames} frames")
            _check_pixels(frame.width, frame.height, limits)
            if size is None:
                size = (frame.width, frame.height)
            yield frame.to_ndarray(format="bgr24", width=size[0], height=size[1])


class Mp4Writer:
    """Writes BGR frames as H.264 (libx264, yuv420p) in an MP4 with the index ("moov") before the media data,
    so browsers start playing before the download ends.

    yuv420p needs even dimensions: an odd width or height is padded by one pixel, repeating the last column or
    row, so no pixel of the input is lost (a 321x241 input makes a 322x242 video). Use as a context manager:
    an exception inside `with` removes the partial file.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        *,
        preset: str = "veryfast",
        crf: int = 23,
        threads: int = 1,  # libx264 threads; 0 lets x264 choose (one per core)
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"frame size {width}x{height} has no pixels")
        self.path = path
        self.width = width
        self.height = height
        self._frames_written = 0
        self._closed = False
        rate = frame_rate_for_encoding(fps)
        self._container = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width = width + width % 2
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": preset, "crf": str(crf)}
        self._stream.codec_context.thread_count = threads
        self._time_base = 1 / rate  # one tick per frame: the frame index is its timestamp

    def write(self, frame: np.ndarray) -> None:
        """Encode one BGR uint8 frame of the constructor's size."""
        if self._closed:
            raise ValueError(f"{self.path.name} is already closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"expected a {self.height}x{self.width}x3 uint8 frame, got {frame.shape} {frame.dtype}")
        pad_rows, pad_columns = self.height % 2, self.width % 2
        if pad_rows or pad_columns:
            frame = np.pad(frame, ((0, pad_rows), (0, pad_columns), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        video_frame.pts = self._frames_written
        video_frame.time_base = self._time_base
        self._container.mux(self._stream.encode(video_frame))
        self._frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent). If finishing fails, the partial file is removed.

        Raises ValueError if no frame was written: an MP4 without frames is not a video.
        """
        if self._closed:
            return
        self._closed = True
        if self._frames_written == 0:
            self._discard()
            raise ValueError(f"no frames were written to {self.path.name}")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException:
            self._discard()
            raise

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        # The file is deleted anyway; the error that got us here is the one worth reporting.
        with contextlib.suppress(av.error.FFmpegError):
            self._container.close()
        self.path.unlink(missing_ok=True)


def frame_rate_for_encoding(fps: float) -> Fraction:
    """A rational frame rate for the encoder: NTSC rates become n*1000/1001 (29.97 → 30000/1001), rates close
    to a whole number become it, and anything unusable (below 1/1000, NaN) becomes DEFAULT_FPS."""
    if not math.isfinite(fps) or fps < 0.001:
        return Fraction(DEFAULT_FPS)
    whole = round(fps)
    if whole > 0 and abs(fps - whole) < 0.001:
        return Fraction(whole)
    ntsc_whole = round(fps * 1.001)
    if ntsc_whole > 0 and abs(fps - ntsc_whole * 1000 / 1001) < 0.005:
        return Fraction(ntsc_whole * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _open(path: Path) -> av.container.InputContainer:
    if path.stat().st_size == 0:
        raise InvalidArgument("empty file: not a video")
    try:
        return av.open(str(path), container_options=_OPEN_OPTIONS)
    except av.error.FFmpegError as error:
        if not _is_content_error(error):
            raise
        if isinstance(error, av.error.ArgumentError):  # what FFmpeg raises for a demuxer off the list
            raise InvalidArgument(
                "not a video in a supported container (MP4/MOV, MKV/WebM, AVI, MPEG-TS/PS, FLV, WMV, Ogg...)"
            ) from error
        raise InvalidArgument(f"not a readable video file (unknown format, or truncated): {error.strerror}") from error


def _video_stream(container: av.container.InputContainer, limits: VideoLimits) -> av.video.VideoStream:
    """The first video stream that is not an attached picture (cover art of an audio file), with a decoder
    and a declared frame size within the limits (checked before anything is decoded)."""
    videos = [
        stream for stream in container.streams.video if not stream.disposition & av.stream.Disposition.attached_pic
    ]
    if not videos:
        kinds = sorted({stream.type for stream in container.streams} - {"video"})
        found = f" (only {', '.join(kinds)})" if kinds else ""
        raise InvalidArgument(f"the file has no video stream{found}")
    stream = videos[0]
    if stream.codec_context is None:  # PyAV leaves it unset when FFmpeg has no decoder for the codec
        raise InvalidArgument("unsupported codec: FFmpeg cannot decode this video stream")
    _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
    return stream


def _decoded_frames(container: av.container.InputContainer, stream: av.video.VideoStream) -> Iterator[av.VideoFrame]:
    frames_decoded = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as error:
            if not _is_content_error(error):
                raise
            raise InvalidArgument(f"the video is corrupt after frame {frames_decoded} ({error.strerror})") from error
        try:
            frames = packet.decode()
        except av.error.FFmpegError as error:
            if not _is_content_error(error):
                raise
            continue  # a damaged packet: the decoder resynchronises on the next one (at worst, the next keyframe)
        for frame in frames:
            frames_decoded += 1
            yield frame


def _is_content_error(error: av.error.FFmpegError) -> bool:
    """Whether FFmpeg failed on what the file contains rather than on reading it (missing, permissions, disk)
    or on memory: only the former is the client's fault."""
    return not isinstance(error, OSError | MemoryError)


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidArgument(f"{width}x{height} frames exceed the {limits.max_pixels} pixel limit")


def _average_fps(stream: av.video.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return DEFAULT_FPS


def _duration_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None
