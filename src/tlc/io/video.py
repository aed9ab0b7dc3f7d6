"""Video files in and out: inspect, decode to RGB frames, encode frames with the input's timing and
audio, atomically.

Decoding and encoding are FFmpeg's, through PyAV (``av``, which bundles FFmpeg's libraries). Around
it this module adds what a restoration run needs:

- :func:`probe_video` says what a file holds (frame count, exact frame rate, size, audio) or raises
  a :class:`VideoError` with one line naming the file; only MP4/MOV, Matroska/WebM and AVI
  containers are taken, so an image or a text file named ``.mp4`` is refused rather than read as a
  one-frame "video".
  A truncated file (fewer frames than the container's header declares, or its frames ending before
  the duration it declares) is refused here, before anything is decoded.
- :func:`read_frames` yields every frame as (H, W, 3) uint8 RGB with its presentation time, in the
  colour matrix and range the stream is tagged with, and raises a :class:`VideoError` when a frame
  cannot be decoded instead of stopping short.
- :class:`VideoWriter` encodes RGB frames with the input's time stamps and time base (so frame rate
  and frame count are kept, variable frame rate included), copies the input's audio packets
  unchanged (no re-encode), and writes to a temporary file in the output's folder that is renamed
  into place only when everything succeeded; on any exception, KeyboardInterrupt included, the
  temporary file is removed.

Encoding (:func:`video_encoding`): H.264 (libx264) yuv420p CRF 18 in MP4/MOV/MKV/AVI and VP9
(libvpx-vp9) yuv420p CRF 24 in WebM. yuv420p halves the chroma resolution, so odd sizes cannot be
stored; those are encoded yuv444p (H.264 High 4:4:4), which keeps the exact size and every pixel's
colour but is not played by some hardware players (the returned note says so). The lossless option,
for evaluation, stores RGB exactly: libx264rgb at QP 0 (MP4/MOV/MKV/AVI) or lossless VP9 in planar
RGB (WebM); decoding it gives back the written uint8 frames bit for bit.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch

from .._util import atomic_write, exists_error, one_line
from .image import Image, PathLike, from_model_output, to_model_input

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})
DEFAULT_CRF = {"libx264": 18, "libvpx-vp9": 24}

# FFmpeg muxer name per output suffix (the temporary file's name does not tell FFmpeg the format).
_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# FFmpeg demuxers taken as video containers: images and raw streams FFmpeg would also open are not.
_DEMUXERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})


class VideoError(ValueError):
    """A video file that cannot be read or written as asked; the message is one line naming it."""


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a video file.

    Attributes:
        codec: FFmpeg codec name, e.g. "aac", "opus".
        sample_rate: samples per second.
        channels: channel count.
        duration: seconds, or None when the container does not say.
    """

    codec: str
    sample_rate: int
    channels: int
    duration: float | None


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found in a video file.

    Attributes:
        path: the file.
        container: FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
        codec: the video codec's FFmpeg name, e.g. "h264".
        frames: frame count (the video packets in the file, one per frame; checked against the
            count or duration the container declares, so a truncated file is refused).
        fps: average frame rate in frames per second, an exact fraction (e.g. 30000/1001).
        time_base: seconds per unit of the frames' time stamps, exact.
        width, height: frame size in pixels.
        duration: seconds, or None when the container does not say.
        colorspace, color_range: FFmpeg's AVColorSpace and AVColorRange of the stream (2 and 0
            mean unspecified); decoding honours them and the writer tags its output alike.
        audio: the first audio stream, or None.
    """

    path: Path
    container: str
    codec: str
    frames: int
    fps: Fraction
    time_base: Fraction
    width: int
    height: int
    duration: float | None
    colorspace: int
    color_range: int
    audio: AudioInfo | None


class Frame(NamedTuple):
    """One decoded frame: ``rgb`` (H, W, 3) uint8, its 0-based ``index`` and its presentation time
    stamp ``pts`` in the stream's time base (None where the container gives none)."""

    index: int
    pts: int | None
    rgb: np.ndarray


def _open(path: Path) -> av.container.InputContainer:
    """Open ``path`` for reading, as a video container, with every failure a :class:`VideoError`."""
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), "r")
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: not a readable video ({_ffmpeg_message(err)})") from None
    except (OSError, ValueError) as err:
        raise VideoError(f"{path}: cannot open it ({one_line(err)})") from None
    if container.format.name not in _DEMUXERS:
        kind = container.format.long_name or container.format.name
        container.close()
        raise VideoError(f"{path}: not an MP4, MOV, MKV, WebM or AVI video (FFmpeg reads it as {kind})")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def _ffmpeg_message(err: BaseException) -> str:
    """FFmpeg's reason without the file name PyAV appends."""
    strerror = getattr(err, "strerror", None)
    return one_line(Exception(strerror)) if strerror else one_line(err)


def probe_video(path: PathLike) -> VideoInfo:
    """Inspect a video file without decoding its frames.

    Args:
        path: an MP4, MOV, MKV, WebM or AVI file (the container is taken from the content).

    Returns:
        A :class:`VideoInfo`.

    Raises:
        VideoError: missing, empty, not one of those containers, no video stream, no frame rate, or
            unreadable (one line naming the file).
    """
    p = Path(path)
    with _open(p) as container:
        try:
            return _info(p, container)
        except av.error.FFmpegError as err:
            raise VideoError(f"{p}: truncated or corrupt video ({_ffmpeg_message(err)})") from None


def _info(path: Path, container: av.container.InputContainer) -> VideoInfo:
    stream = container.streams.video[0]
    context = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not fps or fps <= 0:
        raise VideoError(f"{path}: the video stream has no frame rate")
    if not context.width or not context.height:
        raise VideoError(f"{path}: the video stream has no frame size (corrupt header)")
    frames, end = _scan_packets(container, stream)
    if frames == 0:
        raise VideoError(f"{path}: the video stream holds no frames (truncated or empty)")
    declared = _declared_length(container, stream)
    # FFmpeg's AVI muxer counts one empty chunk in the header when the first decode time stamp was
    # shifted, so an AVI may declare one frame more than it holds.
    slack = 1 if container.format.name == "avi" else 0
    if isinstance(declared, int) and frames < declared - slack:
        raise VideoError(f"{path}: truncated or corrupt video: {frames} of the {declared} frames it declares are there")
    if isinstance(declared, float) and end is not None and end < declared - 1.5 / fps:
        raise VideoError(f"{path}: truncated or corrupt video: its frames end at {end:.2f} s of the "
                         f"{declared:.2f} s it declares")
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif isinstance(declared, float):
        duration = declared
    elif container.duration is not None:
        duration = container.duration / av.time_base
    audio = None
    if container.streams.audio:
        a = container.streams.audio[0]
        a_duration = float(a.duration * a.time_base) if a.duration is not None and a.time_base else \
            _tagged_duration(a) or duration
        audio = AudioInfo(codec=a.codec_context.name, sample_rate=a.codec_context.sample_rate or 0,
                          channels=a.codec_context.channels or 0, duration=a_duration)
    return VideoInfo(
        path=path, container=container.format.name, codec=context.name, frames=frames, fps=Fraction(fps),
        time_base=Fraction(stream.time_base or 1 / Fraction(fps)), width=context.width, height=context.height,
        duration=duration, colorspace=int(context.colorspace), color_range=int(context.color_range), audio=audio,
    )


def _scan_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, float | None]:
    """The video packets in the file (one per frame) and when the last one ends in seconds (None
    without time stamps), read without decoding; rewinds afterwards."""
    count, end = 0, None
    for packet in container.demux(stream):
        if not packet.size:
            continue
        count += 1
        if packet.pts is not None and packet.time_base:
            stop = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = stop if end is None else max(end, stop)
    container.seek(0)
    return count, end


def _declared_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | float | None:
    """What the container says the video stream holds, to find a truncated file: a frame count
    (MP4/MOV sample tables, the AVI header, which counts empty "dropped frame" chunks too, so an
    AVI with many of those is refused as truncated), or a duration in seconds (the DURATION tag
    FFmpeg and MKVToolNix write to Matroska tracks), or None."""
    if container.format.name != "matroska,webm":
        return stream.frames or None
    tag = _tagged_duration(stream)
    return tag if tag else None


def _tagged_duration(stream: av.stream.Stream) -> float | None:
    """A Matroska track's DURATION tag ("HH:MM:SS.nnnnnnnnn") in seconds, or None."""
    text = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    try:
        h, m, sec = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (AttributeError, ValueError):
        return None


def read_frames(path: PathLike, info: VideoInfo | None = None) -> Iterator[Frame]:
    """Decode every frame of a video as RGB.

    Args:
        path: the video file.
        info: its :func:`probe_video` result, if already known (saves opening it twice).

    Yields:
        :class:`Frame` (index, pts, rgb (H, W, 3) uint8) in presentation order. Colour is converted
        with the matrix and range the stream is tagged with (FFmpeg's BT.601 limited range when
        untagged).

    Raises:
        VideoError: the file cannot be opened, a packet cannot be decoded, or fewer frames decode
            than the file has packets (corrupt); raised when reached, so a caller
            writing as it goes must discard what it wrote (:class:`VideoWriter` does).
    """
    p = Path(path)
    info = probe_video(p) if info is None else info
    index = 0
    with _open(p) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if (frame.width, frame.height) != (info.width, info.height):
                    raise VideoError(f"{p}: frame {index + 1} is {frame.width} x {frame.height}, not "
                                     f"{info.width} x {info.height} as the stream begins (size changes are not "
                                     "supported)")
                yield Frame(index, frame.pts, frame.to_ndarray(format="rgb24"))
                index += 1
        except av.error.FFmpegError as err:
            raise VideoError(f"{p}: truncated or corrupt video at frame {index + 1} "
                             f"({_ffmpeg_message(err)})") from None
    if index == 0:
        raise VideoError(f"{p}: no frame could be decoded (truncated or corrupt video)")
    if index < info.frames:
        raise VideoError(f"{p}: truncated or corrupt video: {index} of its {info.frames} frames could be decoded")


def frame_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB frame -> (1, 3, H, W) float32 tensor in [0, 1] (``uint8 / 255``), the
    same tensor :func:`~tlc.io.to_model_input` gives for the frame saved as an 8-bit image."""
    pixels = np.asarray(rgb)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {pixels.dtype} {pixels.shape}")
    return to_model_input(_as_image(pixels))


def tensor_to_frame(tensor: torch.Tensor) -> np.ndarray:
    """A model's (1, 3, H, W) or (3, H, W) RGB output -> (H, W, 3) uint8 frame:
    round-half-to-even(clamp(x, 0, 1) * 255), exactly as :func:`~tlc.io.write_image` stores 8-bit."""
    h, w = tensor.shape[-2:]
    like = Image(pixels=np.empty((h, w, 3), dtype=np.float32), alpha=None, bit_depth=8, mode="rgb")
    pixels, _ = from_model_output(tensor, like)
    if np.isnan(pixels).any():
        raise ValueError("the model's output contains NaN")
    return np.rint(pixels.astype(np.float64) * 255.0).astype(np.uint8)


def _as_image(rgb: np.ndarray) -> Image:
    pixels = rgb.astype(np.float32)
    pixels /= np.float32(255.0)
    return Image(pixels=pixels, alpha=None, bit_depth=8, mode="rgb")


@dataclass(frozen=True)
class VideoEncoding:
    """How :class:`VideoWriter` encodes: FFmpeg encoder, pixel format and options, and a note for
    the user when the choice departs from the default (odd size), else ""."""

    codec: str
    pix_fmt: str
    options: dict[str, str]
    note: str = ""


def video_encoding(path: PathLike, width: int, height: int, *, lossless: bool = False,
                   crf: int | None = None) -> VideoEncoding:
    """The encoding :class:`VideoWriter` uses for ``path`` (by suffix) at ``width`` x ``height``.

    Args:
        path: the output file; its suffix (.mp4, .mov, .mkv, .avi, .webm) picks the container.
        width, height: frame size in pixels.
        lossless: store RGB exactly (libx264rgb QP 0, or lossless VP9 RGB for .webm), for evaluation.
        crf: quality (lower is better; 0..51 for H.264, 0..63 for VP9); default :data:`DEFAULT_CRF`.
            Not allowed with ``lossless``.

    Raises:
        VideoError: unknown suffix, or a crf out of range or given with lossless.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _MUXERS:
        raise VideoError(f"{p}: cannot tell the video format from the suffix {p.suffix!r}; "
                         f"use one of {', '.join(sorted(_MUXERS))}")
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width} x {height}")
    vp9 = suffix == ".webm"
    # AVI stores no presentation times, so H.264 there gets no B-frames (frames stay in order).
    no_b_frames = {"bf": "0"} if suffix == ".avi" else {}
    if lossless:
        if crf is not None:
            raise VideoError(f"{p}: a CRF and lossless exclude each other")
        if vp9:
            return VideoEncoding("libvpx-vp9", "gbrp", {"lossless": "1", "deadline": "good", "cpu-used": "4"})
        return VideoEncoding("libx264rgb", "rgb24", {"qp": "0", "preset": "medium", **no_b_frames})
    codec = "libvpx-vp9" if vp9 else "libx264"
    crf = DEFAULT_CRF[codec] if crf is None else crf
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= (63 if vp9 else 51):
        raise VideoError(f"{p}: crf must be a whole number in 0..{63 if vp9 else 51}, got {crf!r}")
    if vp9:  # VP9 stores odd sizes in 4:2:0 (the chroma planes round up)
        return VideoEncoding(codec, "yuv420p", {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4"})
    options = {"crf": str(crf), "preset": "medium", **no_b_frames}
    if width % 2 or height % 2:
        return VideoEncoding(codec, "yuv444p", options,
                             note=f"{width} x {height} is odd-sized and yuv420p needs even sizes, so it is encoded "
                                  "yuv444p (H.264 High 4:4:4: exact size, full colour; some hardware players cannot "
                                  "play it)")
    return VideoEncoding(codec, "yuv420p", options)


class VideoWriter:
    """Encode RGB frames to a video file, copying another file's audio, atomically.

    Use as a context manager::

        info = probe_video("in.mp4")
        with VideoWriter("out.mp4", fps=info.fps, width=info.width, height=info.height,
                         time_base=info.time_base, audio_from="in.mp4") as writer:
            for frame in read_frames("in.mp4", info):
                writer.write(frame.rgb, frame.pts)

    The file is written to a hidden temporary file in the output's folder and renamed into place
    when the ``with`` block ends without an exception; on any exception (KeyboardInterrupt
    included) the temporary file is removed and nothing is left. Parent folders are created.

    Args:
        path: the output file; the suffix (.mp4, .mov, .mkv, .avi, .webm) picks the container.
        fps: frame rate, exact (e.g. ``Fraction(30000, 1001)``); stored as the stream's rate.
        width, height: frame size in pixels; every frame must have it.
        time_base: seconds per time-stamp unit of the ``pts`` given to :meth:`write` (default
            1 / fps). Pass the input's to keep its time stamps, variable frame rate included
            (not in AVI, which is constant-rate: there it is 1 / fps).
        audio_from: a video or audio file whose first audio stream is copied packet by packet (no
            re-encode), or None.
        encoding: from :func:`video_encoding` (default: its choice for ``path`` and the size).
        colorspace, color_range: FFmpeg AVColorSpace / AVColorRange to convert RGB with and tag the
            stream with (the input's, from :class:`VideoInfo`, so players show both alike);
            None: unspecified (BT.601 limited range, FFmpeg's default).
        overwrite: replace an existing file; otherwise an existing file raises FileExistsError.

    Raises:
        VideoError: unknown suffix, or the audio codec cannot be stored in this container.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        fps: Fraction | int,
        width: int,
        height: int,
        time_base: Fraction | None = None,
        audio_from: PathLike | None = None,
        encoding: VideoEncoding | None = None,
        colorspace: int | None = None,
        color_range: int | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.encoding = video_encoding(self.path, width, height) if encoding is None else encoding
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.time_base = 1 / self.fps if time_base is None else Fraction(time_base)
        # AVI has no presentation times: frame i is shown at i / fps whatever pts is given.
        self._constant_rate = self.path.suffix.lower() == ".avi"
        if self._constant_rate:
            self.time_base = 1 / self.fps
        self.width, self.height = width, height
        self.audio_from = None if audio_from is None else Path(audio_from)
        self.colorspace, self.color_range = colorspace, color_range
        self.overwrite = overwrite
        self.frames_written = 0
        self.last_pts: int | None = None  # the time stamp of the last frame written
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> VideoWriter:
        if self.path.is_dir():
            raise VideoError(f"{self.path}: is a folder")
        if self.path.exists() and not self.overwrite:
            raise exists_error(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        try:
            temporary = stack.enter_context(atomic_write(self.path, overwrite=self.overwrite))
            with _ffmpeg_errors(self.path, "cannot start writing"):
                self._out = av.open(str(temporary), "w", format=_MUXERS[self.path.suffix.lower()])
                stack.callback(_close_quietly, self._out)
                self._video = self._add_video_stream()
            self._audio_in = self._audio_out = self._audio_packets = None
            if self.audio_from is not None:
                with _ffmpeg_errors(self.audio_from, "cannot read its audio"):
                    self._audio_in = stack.enter_context(av.open(str(self.audio_from), "r"))
                self._add_audio_stream()
            # The header now, so that a container refusing the streams fails before any frame is made.
            hint = "" if self._audio_out is None else \
                f"; it may not hold {self._audio_out.codec_context.name} audio unchanged, .mkv holds any"
            with _ffmpeg_errors(self.path, f"cannot start a {self.path.suffix} file", hint):
                self._out.start_encoding()
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):
                raise
        self._stack = stack
        return self

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        enc = self.encoding
        stream = self._out.add_stream(enc.codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, enc.pix_fmt
        stream.time_base = self.time_base
        stream.codec_context.time_base = self.time_base
        stream.options = dict(enc.options)
        if self.colorspace is not None and enc.pix_fmt.startswith("yuv"):
            stream.codec_context.colorspace = self.colorspace
        if self.color_range is not None and enc.pix_fmt.startswith("yuv"):
            stream.codec_context.color_range = self.color_range
        return stream

    def _add_audio_stream(self) -> None:
        if not self._audio_in.streams.audio:
            return
        source = self._audio_in.streams.audio[0]
        try:
            self._audio_out = self._out.add_stream_from_template(source)
        except ValueError:
            raise VideoError(f"{self.path}: a {self.path.suffix} file cannot hold the input's "
                             f"{source.codec_context.name} audio unchanged; write .mkv, which holds any") from None
        self._audio_packets = iter(self._audio_in.demux(source))

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one (H, W, 3) uint8 RGB frame.

        Args:
            rgb: the frame, ``height`` x ``width``.
            pts: its presentation time in ``time_base`` units; None: one frame after the previous
                one (frame index / fps). Time stamps must increase. Ignored in AVI, which has no
                presentation times (frame i is at i / fps).
        """
        if self._stack is None:
            raise RuntimeError("VideoWriter.write outside its with block")
        frame_array = np.asarray(rgb)
        if frame_array.dtype != np.uint8 or frame_array.shape != (self.height, self.width, 3):
            raise ValueError(f"expected a ({self.height}, {self.width}, 3) uint8 frame, got "
                             f"{frame_array.dtype} {frame_array.shape}")
        if self._constant_rate:
            pts = self.frames_written
        if pts is None:
            step = 1 / (self.fps * self.time_base)
            pts = 0 if self.last_pts is None else self.last_pts + max(1, round(step))
        if self.last_pts is not None and pts <= self.last_pts:
            raise ValueError(f"frame time stamps must increase: {pts} after {self.last_pts}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_array), format="rgb24")
        if self.encoding.pix_fmt != "rgb24":
            frame = frame.reformat(format=self.encoding.pix_fmt, dst_colorspace=_sws_colorspace(self.colorspace),
                                   dst_color_range=self.color_range or None)
        frame.pts, frame.time_base = pts, self.time_base
        self.last_pts = pts
        with _ffmpeg_errors(self.path, f"cannot encode frame {self.frames_written + 1}"):
            self._mux_audio_until(pts * self.time_base)
            for packet in self._video.encode(frame):
                self._out.mux(packet)
        self.frames_written += 1

    def _mux_audio_until(self, seconds: Fraction | None) -> None:
        """Copy audio packets up to ``seconds`` (None: all the rest), keeping the file interleaved."""
        if self._audio_packets is None:
            return
        for packet in self._audio_packets:
            if packet.dts is None or not packet.size:  # the demuxer's end-of-stream marker
                continue
            packet.stream = self._audio_out
            self._out.mux(packet)
            if seconds is not None and packet.pts is not None and packet.pts * packet.time_base >= seconds:
                return
        self._audio_packets = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None:
            try:
                if self.frames_written == 0:
                    raise VideoError(f"{self.path}: no frames were written")
                with _ffmpeg_errors(self.path, "cannot finish the file"):
                    for packet in self._video.encode(None):
                        self._out.mux(packet)
                    self._mux_audio_until(None)
                    self._out.close()
            except BaseException:
                if not stack.__exit__(*sys.exc_info()):
                    raise
                return True
        return stack.__exit__(exc_type, exc, tb)


@contextlib.contextmanager
def _ffmpeg_errors(path: Path, doing: str, hint: str = "") -> Iterator[None]:
    """FFmpeg's errors (an encoder that refuses its settings, a full disk, a corrupt audio packet)
    as a :class:`VideoError` naming ``path``: "path: doing (FFmpeg's reason)hint"."""
    try:
        yield
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: {doing} ({_ffmpeg_message(err)}){hint}") from None


def _close_quietly(container: av.container.OutputContainer) -> None:
    """Close an output being abandoned (its file is removed next): a failure to finish it must not
    hide the exception that stopped the writing."""
    with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
        container.close()


def _sws_colorspace(colorspace: int | None) -> int | None:
    """swscale's matrix constant for an AVColorSpace: BT.709 is 1 in both, BT.601 is 5 (SWS_CS_ITU601)
    for AVCOL_SPC_BT470BG (5) and AVCOL_SPC_SMPTE170M (6), BT.2020 is 9 in both; None: the default."""
    return {1: 1, 5: 5, 6: 5, 9: 9, 10: 9}.get(colorspace) if colorspace is not None else None


def is_video_file(path: PathLike) -> bool:
    """True when ``path``'s suffix is a video container's (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES
