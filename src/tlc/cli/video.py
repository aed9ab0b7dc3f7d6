"""``tlc restore`` on video files: frame by frame through the same :func:`tlc.run.restore` as images,
into a video with the input's timing, size and audio (:class:`tlc.io.VideoWriter`), or into PNG
frames (``--frames-out``). Either way nothing is left behind when a run stops part way."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import nn

from .. import io
from ..run import RunSettings, TileContext, restore
from .common import progress, say

FRAME_NAME = "frame_{:06d}.png"  # numbered from 1


def frame_path(folder: Path, number: int) -> Path:
    """Where ``--frames-out`` puts frame ``number`` (1-based)."""
    return folder / FRAME_NAME.format(number)


def restored_frames(
    model: nn.Module, path: Path, info: io.VideoInfo, settings: RunSettings, context: TileContext | None
) -> Iterator[io.Frame]:
    """The video's frames restored one by one (progress bar by frames), as uint8 RGB with their
    time stamps: each is ``uint8 / 255`` -> :func:`tlc.run.restore` -> round(clamp(y, 0, 1) * 255),
    exactly what restoring the frame saved as an 8-bit PNG gives."""
    frames = io.read_frames(path, info)
    for frame in progress(frames, total=info.frames, desc=path.name, unit="frame"):
        restored = restore(model, io.frame_to_tensor(frame.rgb), settings, context)
        yield io.Frame(frame.index, frame.pts, io.tensor_to_frame(restored))


def restore_video(
    model: nn.Module,
    path: Path,
    target: Path,
    settings: RunSettings,
    context: TileContext | None,
    *,
    lossless: bool,
    overwrite: bool,
) -> int:
    """Restore ``path`` into the video file ``target``; returns the frame count.

    Frame rate, time stamps, frame count and size are the input's and its first audio stream is
    copied unchanged; the file appears only when every frame has been written.
    """
    info = io.probe_video(path)
    encoding = io.video_encoding(target, info.width, info.height, lossless=lossless)
    if encoding.note:
        say(f"tlc: note: {path.name}: {encoding.note}")
    with io.VideoWriter(
        target, fps=info.fps, width=info.width, height=info.height, time_base=info.time_base,
        audio_from=path if info.audio else None, encoding=encoding, colorspace=info.colorspace,
        color_range=info.color_range, overwrite=overwrite,
    ) as writer:
        last = None
        for frame in restored_frames(model, path, info, settings, context):
            # A frame without a time stamp, or out of order (a damaged file), follows the previous one.
            pts = frame.pts if frame.pts is not None and (last is None or frame.pts > last) else None
            writer.write(frame.rgb, pts)
            last = writer.last_pts
    return writer.frames_written


def restore_video_frames(
    model: nn.Module,
    path: Path,
    folder: Path,
    settings: RunSettings,
    context: TileContext | None,
    *,
    overwrite: bool,
) -> int:
    """Restore ``path`` into 8-bit PNG frames ``folder/frame_000001.png``, ...; returns the count.

    The frames are written into a hidden folder beside ``folder`` and moved in when all are done,
    so a run that stops part way leaves no frames. Without ``overwrite`` a frame file already there
    raises FileExistsError before anything is moved.
    """
    info = io.probe_video(path)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir(parents=True)
    try:
        count = 0
        for frame in restored_frames(model, path, info, settings, context):
            count += 1
            pixels = frame.rgb.astype(np.float32) / np.float32(255)
            io.write_image(frame_path(staging, count), pixels)
        targets = [frame_path(folder, n) for n in range(1, count + 1)]
        if not overwrite:
            existing = [t for t in targets if t.exists()]
            if existing:
                raise FileExistsError(f"{existing[0]}: already exists (use --overwrite to replace it)")
        folder.mkdir(parents=True, exist_ok=True)
        for n, target in enumerate(targets, start=1):
            os.replace(frame_path(staging, n), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count
