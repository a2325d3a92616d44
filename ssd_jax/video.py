"""Reading and writing video files and cameras, for detection on video (``detect_stream``).

Decoding and encoding go through PyAV (FFmpeg's libraries in one wheel for every platform, no
``ffmpeg`` program needed, frames decoded in this process): ``pip install -e '.[video]'``. It is
imported only when a video is opened, so ``import ssd_jax`` and image detection never need it.

``read_frames(path)`` yields ``Frame(index, time, pixels)`` with RGB uint8 pixels [H, W, 3];
frames that fail to decode in the middle are skipped and counted in ``VideoReader.skipped``.
``VideoWriter`` writes under a temporary name and renames on ``close``, so an interrupted run
leaves a playable file of the frames it finished, never a broken one under the final name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from ssd_jax import files

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CAMERA_PREFIX = "camera:"


class VideoError(ValueError):
    """A video or camera that cannot be read or written; the message says which and why."""


class Frame(NamedTuple):
    """One decoded frame: its position among the frames given (0, 1, ...), its time in the video
    in seconds, RGB uint8 pixels [H, W, 3]."""

    index: int
    time: float
    pixels: np.ndarray


def _av():
    try:
        import av
    except ImportError as error:
        raise VideoError("video needs PyAV: pip install -e '.[video]' (or pip install av)") from error
    return av


def is_video(path: str) -> bool:
    """Whether ``path`` names a video file (by its suffix) or a camera (``camera:N``)."""
    return path.startswith(CAMERA_PREFIX) or os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def camera_device(source: str) -> str:
    """``camera:N`` -> the device PyAV opens (``/dev/videoN`` through v4l2 on Linux)."""
    number = source[len(CAMERA_PREFIX):]
    if not number.isdigit():
        raise VideoError(f"{source!r}: a camera is camera:N with N its number (camera:0 for the first)")
    return f"/dev/video{number}"


@dataclasses.dataclass
class VideoReader:
    """An open video (or camera): ``fps``, ``width``, ``height``, ``frame_count`` (0 when unknown);
    iterate ``frames()``; ``skipped`` counts the packets (a frame each, for video codecs) that
    failed to decode."""

    source: str
    container: object
    stream: object
    fps: float
    width: int
    height: int
    frame_count: int
    skipped: int = 0

    def frames(self, *, start: float = 0.0, max_frames: int | None = None) -> Iterator[Frame]:
        """Decoded frames from ``start`` seconds on, at most ``max_frames`` of them."""
        av = _av()
        if start > 0:
            try:
                self.container.seek(int(start / self.stream.time_base), stream=self.stream, backward=True)
            except av.error.FFmpegError as error:
                raise VideoError(f"{self.source}: cannot seek to {start} s ({error})") from error
        given = 0
        for index, frame in enumerate(self._decoded()):
            time = float(frame.time) if frame.time is not None else index / self.fps
            if time + 1e-6 < start:
                continue
            yield Frame(given, time, frame.to_ndarray(format="rgb24"))
            given += 1
            if max_frames is not None and given >= max_frames:
                return

    def _decoded(self):
        """PyAV frames; a packet that fails to decode is skipped and counted, a demuxer that fails
        (a truncated or damaged file) ends the stream, and the decoder gives back what it holds."""
        av = _av()
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:
                self.skipped += 1
                break
            try:
                yield from packet.decode()
            except av.error.FFmpegError:
                self.skipped += 1
        try:
            yield from self.stream.codec_context.decode(None)  # the frames still in the decoder
        except av.error.FFmpegError:
            pass

    def close(self) -> None:
        self.container.close()


def open_video(source: str) -> VideoReader:
    """A video file or ``camera:N`` -> ``VideoReader``; ``VideoError`` (one line, naming the
    source) when it is missing, not a video, has no video stream, or the camera does not exist."""
    av = _av()
    camera = source.startswith(CAMERA_PREFIX)
    if camera:
        device = camera_device(source)
        if not os.path.exists(device):
            raise VideoError(f"{source}: no such camera ({device} does not exist)")
        target, options = device, {"format": "v4l2"}
    else:
        if not os.path.isfile(source):
            raise VideoError(f"{source}: no such file")
        target, options = source, {}
    try:
        container = av.open(target, **options)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoError(f"{source}: not a readable video ({error})") from error
    streams = container.streams.video
    if not streams:
        container.close()
        raise VideoError(f"{source}: the file has no video stream")
    stream = streams[0]
    stream.thread_type = "AUTO"  # FFmpeg decodes on its own threads, beside the device's work
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        container.close()
        raise VideoError(f"{source}: the video stream has no frame size; the file is damaged")
    return VideoReader(source, container, stream, float(rate), width, height, int(stream.frames or 0))


def is_our_video(path: str) -> bool:
    """Whether ``path`` is a video that ssd_jax wrote (its container's comment)."""
    av = _av()
    try:
        with av.open(path) as container:
            tags = {key.lower(): value for key, value in container.metadata.items()}  # Matroska's are upper case
            return tags.get("comment") == files.PRODUCER
    except (av.error.FFmpegError, OSError):
        return False


class VideoWriter:
    """Writes RGB uint8 frames [H, W, 3] of one size to ``path`` (H.264 in .mp4/.mkv/.mov,
    MPEG-4 Part 2 in .avi, VP9 in .webm), under a temporary name until ``close()``."""

    CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}

    def __init__(self, path: str, *, fps: float, width: int, height: int):
        av = _av()
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in self.CODECS:
            raise VideoError(f"{path}: write a video as one of {', '.join(sorted(self.CODECS))}")
        try:
            files.check_writable(os.path.dirname(os.path.abspath(path)))
        except OSError as error:
            raise VideoError(f"{path}: cannot write the video ({error})") from error
        self.path = path
        self.partial = files.temporary_name(path)
        try:
            self.container = av.open(self.partial, mode="w", format={".mkv": "matroska"}.get(suffix, suffix[1:]))
        except (av.error.FFmpegError, OSError) as error:
            raise VideoError(f"{path}: cannot write the video ({error})") from error
        self.container.metadata["comment"] = files.PRODUCER  # so that --overwrite knows it for ours
        codec = {".mkv": "libx264"}.get(suffix, self.CODECS[suffix])
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        # Even sizes: H.264's 4:2:0 sampling needs them; an odd last row or column is repeated.
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.size = (height, width)
        self.frames = 0

    def write(self, pixels: np.ndarray) -> None:
        av = _av()
        if pixels.shape[:2] != self.size:
            raise VideoError(f"{self.path}: frame {self.frames} is {pixels.shape[1]}x{pixels.shape[0]}, the "
                             f"video {self.size[1]}x{self.size[0]}")
        height, width = self.size
        pixels = np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flushes the encoder and gives the file its name (also after an interruption: a video of
        the frames written so far)."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.partial, self.path)
