"""Video files: inspecting, decoding, the atomic writer (timing, size and audio kept; lossless mode
exact) and ``tlc restore`` on videos. Clips are made here with PyAV directly (tiny: a few frames of
48 x 64 with an AAC or Opus track) and checked with PyAV directly, not with the code under test."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tlc import io as tlc_io
from tlc.cli import main
from tlc.io import VideoError, VideoWriter, probe_video, read_frames, video_encoding

CONTAINERS = {".mp4": ("mp4", "libx264", "aac"), ".mov": ("mov", "libx264", "aac"),
              ".mkv": ("matroska", "libx264", "aac"), ".avi": ("avi", "libx264", "aac"),
              ".webm": ("webm", "libvpx-vp9", "libopus")}


def smooth_frames(rng: np.random.Generator, count: int, height: int, width: int) -> list[np.ndarray]:
    """Frames a lossy codec keeps close: a random colour ramp with a square moving across it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-1.5, 1.5, size=(3, 2))
    for i in range(count):
        rgb = np.stack([base[c] + slope[c, 0] * y + slope[c, 1] * x for c in range(3)], axis=-1)
        top, left = (3 * i) % (height - 12), (5 * i) % (width - 12)
        rgb[top : top + 12, left : left + 12] = rng.uniform(0, 255, size=3)
        frames.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return frames


def make_clip(path: Path, frames: list[np.ndarray], fps: Fraction, audio: bool = True, options=None) -> None:
    """Encode ``frames`` at ``fps`` (frame i at i / fps) with a 440 Hz stereo tone as long as the video."""
    fmt, vcodec, acodec = CONTAINERS[path.suffix]
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        video = container.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if path.suffix == ".avi":
            video.options = {"bf": "0"}
        sound = container.add_stream(acodec, rate=48000) if audio else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            ctx = sound.codec_context
            resampler = av.AudioResampler(format=ctx.format, layout=ctx.layout, rate=ctx.sample_rate)
            samples = int(48000 * len(frames) / fps)
            t = np.arange(samples) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            block = ctx.frame_size or 960
            for start in range(0, samples, block):
                chunk = np.ascontiguousarray(np.stack([tone[start : start + block]] * 2))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                for converted in resampler.resample(frame):
                    container.mux(sound.encode(converted))
            container.mux(sound.encode(None))


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB, straight from PyAV."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stream_facts(path: Path) -> dict:
    """Frame rate, size, pixel format and audio packets of ``path``, straight from PyAV."""
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        facts = {"fps": v.average_rate, "size": (v.codec_context.height, v.codec_context.width),
                 "pix_fmt": v.codec_context.pix_fmt, "audio": None}
        if container.streams.audio:
            a = container.streams.audio[0]
            packets = [p for p in container.demux(a) if p.size]
            samples = sum(f.samples for p in packets for f in a.codec_context.decode(p))
            facts["audio"] = {"codec": a.codec_context.name, "payload": [bytes(p) for p in packets],
                              "seconds": samples / a.codec_context.sample_rate}
    return facts


def copy_through_writer(source: Path, target: Path, **encoding) -> None:
    """Decode ``source`` with read_frames and write every frame with the VideoWriter, audio copied."""
    info = probe_video(source)
    with VideoWriter(target, fps=info.fps, width=info.width, height=info.height, time_base=info.time_base,
                     audio_from=source, encoding=video_encoding(target, info.width, info.height, **encoding),
                     colorspace=info.colorspace, color_range=info.color_range) as writer:
        for frame in read_frames(source, info):
            writer.write(frame.rgb, frame.pts)


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_round_trip_keeps_frames_rate_size_and_audio(suffix, tmp_path):
    rng = np.random.default_rng(len(suffix) + ord(suffix[1]))
    fps = [Fraction(25), Fraction(30000, 1001), Fraction(24)][rng.integers(3)]
    frames = smooth_frames(rng, 8, 48, 64)
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    make_clip(source, frames, fps)
    info = probe_video(source)
    assert (info.frames, info.fps, info.width, info.height) == (8, fps, 64, 48)
    assert info.audio is not None and info.audio.codec == CONTAINERS[suffix][2].removeprefix("lib")
    copy_through_writer(source, target)
    before, after = stream_facts(source), stream_facts(target)
    assert after["fps"] == fps and after["size"] == (48, 64)
    restored = decoded(target)
    assert len(restored) == 8
    errors = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded(source), restored)]
    assert max(errors) < 2.5  # lossy (CRF 18, 4:2:0), but the frames given to the writer
    assert after["audio"]["codec"] == before["audio"]["codec"]
    assert after["audio"]["payload"] == before["audio"]["payload"]  # copied packet for packet, not re-encoded
    assert after["audio"]["seconds"] == pytest.approx(before["audio"]["seconds"], abs=0.03)
    assert before["audio"]["seconds"] == pytest.approx(8 / fps, abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, target.name])


@pytest.mark.parametrize("suffix,size", [(".mp4", (48, 64)), (".mkv", (47, 63)), (".webm", (47, 64)),
                                         (".avi", (48, 63)), (".mov", (48, 64))])
def test_lossless_round_trip_is_bit_exact(suffix, size, tmp_path):
    rng = np.random.default_rng(sum(size))
    frames = [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(4)]  # noise: nothing to hide in
    path = tmp_path / f"noise{suffix}"
    encoding = video_encoding(path, size[1], size[0], lossless=True)
    with VideoWriter(path, fps=Fraction(24000, 1001), width=size[1], height=size[0], encoding=encoding) as writer:
        for rgb in frames:
            writer.write(rgb)
    back = decoded(path)
    assert len(back) == len(frames)
    for original, decoded_frame in zip(frames, back):
        assert np.array_equal(original, decoded_frame)
    assert stream_facts(path)["fps"] == Fraction(24000, 1001)


def test_frame_tensor_boundary_is_exact_for_every_value(tmp_path):
    rgb = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    rgb = np.random.default_rng(0).permutation(rgb.reshape(-1)).reshape(16, 16, 3).astype(np.uint8)
    tensor = tlc_io.frame_to_tensor(rgb)
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0].permute(1, 2, 0), torch.from_numpy(rgb.astype(np.float32) / 255))
    assert np.array_equal(tlc_io.tensor_to_frame(tensor), rgb)
    # any float output: round(clamp(y, 0, 1) * 255), and the same bytes as an 8-bit PNG of it
    y = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(1)) * 1.4 - 0.2
    reference = np.rint(np.clip(y[0].permute(1, 2, 0).double().numpy(), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(tlc_io.tensor_to_frame(y), reference)
    tlc_io.write_image(tmp_path / "y.png", y[0].permute(1, 2, 0).numpy())
    assert np.array_equal(np.rint(tlc_io.read_image(tmp_path / "y.png").pixels * 255).astype(np.uint8), reference)


def test_odd_size_is_kept_in_yuv444(tmp_path):
    frames = smooth_frames(np.random.default_rng(5), 5, 47, 63)
    path = tmp_path / "odd.mp4"
    encoding = video_encoding(path, 63, 47)
    assert encoding.pix_fmt == "yuv444p" and "odd" in encoding.note
    assert video_encoding(path, 64, 48).pix_fmt == "yuv420p" and not video_encoding(path, 64, 48).note
    with VideoWriter(path, fps=25, width=63, height=47, encoding=encoding) as writer:
        for rgb in frames:
            writer.write(rgb)
    facts = stream_facts(path)
    assert facts["size"] == (47, 63) and facts["pix_fmt"] == "yuv444p"
    back = decoded(path)
    errors = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, back)]
    assert len(back) == 5 and max(errors) < 2


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_times_are_kept(suffix, tmp_path):
    rng = np.random.default_rng(9)
    gaps = rng.integers(1, 4, size=6)  # frame i at sum(gaps[:i]) / 50 s: a variable rate
    pts = np.concatenate([[0], np.cumsum(gaps)])
    frames = smooth_frames(rng, len(pts), 48, 64)
    path = tmp_path / f"vfr{suffix}"
    with VideoWriter(path, fps=25, width=64, height=48, time_base=Fraction(1, 50)) as writer:
        for rgb, t in zip(frames, pts):
            writer.write(rgb, int(t))
    with av.open(str(path)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert times == pytest.approx((pts / 50).tolist(), abs=1e-3)


@pytest.mark.parametrize("color_range", [1, 2])  # AVCOL_RANGE_MPEG (limited), AVCOL_RANGE_JPEG (full)
def test_colour_tags_are_honoured_and_kept(color_range, tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]])
    tiles = colours[np.random.default_rng(color_range).integers(0, 6, size=(3, 4))]
    rgb = np.repeat(np.repeat(tiles, 16, axis=0), 16, axis=1).astype(np.uint8)  # saturated 16 x 16 blocks
    source = tmp_path / "bt709.mp4"
    with av.open(str(source), "w") as container:  # BT.709, tagged as such
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.colorspace, video.codec_context.color_range = 1, color_range
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range=color_range)
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    inside = np.zeros((48, 64), dtype=bool)  # block interiors: chroma upsampling blurs the edges
    inside[np.ix_(np.arange(48) % 16 // 4 % 3 > 0, np.arange(64) % 16 // 4 % 3 > 0)] = True

    def error(frames):
        return max(np.abs(f.astype(int) - rgb)[inside].mean() for f in frames)

    with av.open(str(source)) as container:  # the same file read as BT.601 limited range: far off
        wrong = [f.to_ndarray(format="rgb24", src_colorspace="ITU601", src_color_range=1)
                 for f in container.decode(video=0)]
    assert error(f.rgb for f in read_frames(source)) < 1.5 and error(wrong) > 5
    target = tmp_path / "out.mp4"
    copy_through_writer(source, target)
    with av.open(str(target)) as container:
        context = container.streams.video[0].codec_context
        assert (int(context.colorspace), int(context.color_range)) == (1, color_range)
    assert error(f.rgb for f in read_frames(target)) < 2


def test_interrupted_writer_leaves_nothing(tmp_path):
    frames = smooth_frames(np.random.default_rng(1), 6, 48, 64)
    source = tmp_path / "in" / "clip.mp4"
    source.parent.mkdir()
    make_clip(source, frames, Fraction(25))
    out = tmp_path / "out"
    out.mkdir()
    for error in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(error), VideoWriter(out / "clip.mp4", fps=25, width=64, height=48, audio_from=source) as w:
            for i, rgb in enumerate(frames):
                if i == 3:
                    raise error("stop")
                w.write(rgb)
        assert list(out.iterdir()) == []
    with pytest.raises(ValueError), VideoWriter(out / "clip.mp4", fps=25, width=64, height=48) as w:
        w.write(frames[0][:, :32])  # wrong size
    assert list(out.iterdir()) == []
    (out / "clip.mp4").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        VideoWriter(out / "clip.mp4", fps=25, width=64, height=48).__enter__()
    assert (out / "clip.mp4").read_bytes() == b"keep me" and len(list(out.iterdir())) == 1


# --- tlc restore on videos ---------------------------------------------------------------------------

MODEL = ("--model", "tiny-nafnet")


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """clip.mp4 (8 frames, 48 x 64, 25 fps, AAC) and a folder with two videos and an image."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(2)
    make_clip(root / "clip.mp4", smooth_frames(rng, 8, 48, 64), Fraction(25))
    folder = root / "folder"
    folder.mkdir()
    make_clip(folder / "a.mkv", smooth_frames(rng, 5, 48, 64), Fraction(30000, 1001))
    make_clip(folder / "b.mp4", smooth_frames(rng, 6, 48, 64), Fraction(24), audio=False)
    tlc_io.write_image(folder / "c.png", smooth_frames(rng, 1, 40, 56)[0].astype(np.float32) / 255)
    return root


def restored_as_images(clip: Path, tmp_path: Path, mode: str) -> list[np.ndarray]:
    """The clip's frames decoded by PyAV, saved as PNG and restored by ``tlc restore`` on images."""
    frames_in = tmp_path / "frames_in"
    for i, rgb in enumerate(decoded(clip)):
        tlc_io.write_image(frames_in / f"{i:03d}.png", rgb.astype(np.float32) / 255)
    assert run("restore", frames_in, "-o", tmp_path / "frames_restored", *MODEL, "--mode", mode,
               "--tile", "32", "--overlap", "8") == 0
    paths = sorted((tmp_path / "frames_restored").iterdir())
    return [np.rint(tlc_io.read_image(p).pixels * 255).astype(np.uint8) for p in paths]


@pytest.mark.parametrize("mode", ["tlc", "full", "tiles"])
def test_restore_video_equals_restoring_its_frames_as_images(clips, tmp_path, mode):
    expected = restored_as_images(clips / "clip.mp4", tmp_path, mode)
    assert len(expected) == 8
    out = tmp_path / "restored.mkv"
    assert run("restore", clips / "clip.mp4", "-o", out, *MODEL, "--mode", mode, "--tile", "32", "--overlap", "8",
               "--lossless") == 0
    frames = decoded(out)
    assert len(frames) == 8 and all(np.array_equal(a, b) for a, b in zip(frames, expected))
    before, after = stream_facts(clips / "clip.mp4"), stream_facts(out)
    assert after["fps"] == Fraction(25) and after["size"] == (48, 64)
    assert after["audio"]["payload"] == before["audio"]["payload"]
    assert any(not np.array_equal(a, b) for a, b in zip(frames, decoded(clips / "clip.mp4")))  # it did something
    if mode == "tlc":
        frames_out = tmp_path / "frames_out"
        assert run("restore", clips / "clip.mp4", "--frames-out", frames_out, *MODEL) == 0
        names = sorted(p.name for p in frames_out.iterdir())
        assert names == [f"frame_{i:06d}.png" for i in range(1, 9)]
        for name, want in zip(names, expected):
            assert np.array_equal(np.rint(tlc_io.read_image(frames_out / name).pixels * 255).astype(np.uint8), want)


def test_restore_folder_of_videos_and_an_image_to_a_folder(clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("restore", clips / "folder", "-o", out, *MODEL) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.mkv", "b.mp4", "c.png"]
    for name, count, fps in (("a.mkv", 5, Fraction(30000, 1001)), ("b.mp4", 6, Fraction(24))):
        facts = stream_facts(out / name)
        assert len(decoded(out / name)) == count and facts["fps"] == fps and facts["size"] == (48, 64)
        assert (facts["audio"] is None) == (name == "b.mp4")
    assert tlc_io.read_image(out / "c.png").pixels.shape == (40, 56, 3)
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run("restore", clips / "folder", "-o", out, *MODEL) == 0
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert "3 skipped" in capsys.readouterr().err
    frames = tmp_path / "frames"
    assert run("restore", clips / "folder" / "a.mkv", clips / "folder" / "b.mp4", "--frames-out", frames, *MODEL) == 0
    assert sorted(p.name for p in frames.iterdir()) == ["a", "b"]
    assert len(list((frames / "a").iterdir())) == 5 and len(list((frames / "b").iterdir())) == 6
    remuxed = tmp_path / "remuxed"  # --ext with a video suffix applies to the videos, images keep theirs
    assert run("restore", clips / "folder", "-o", remuxed, "--ext", "mkv", *MODEL) == 0
    assert sorted(p.name for p in remuxed.iterdir()) == ["a.mkv", "b.mkv", "c.png"]
    assert len(decoded(remuxed / "b.mkv")) == 6 and stream_facts(remuxed / "b.mkv")["fps"] == Fraction(24)
    assert run("restore", clips / "folder", "-o", tmp_path / "x.mp4", *MODEL) == 2  # one file for three inputs
    assert "names a video file" in capsys.readouterr().err


def test_restore_never_replaces_its_input(clips, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((clips / "clip.mp4").read_bytes())
    original = clip.read_bytes()
    assert run("restore", clip, "-o", clip, *MODEL, "--overwrite") == 1
    assert run("restore", clip, "-o", tmp_path, *MODEL, "--overwrite") == 1
    assert clip.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    assert capsys.readouterr().err.count("would overwrite an input") == 2


def _interrupt_on_frame(monkeypatch, number: int) -> None:
    """Make the model run raise KeyboardInterrupt (as Ctrl-C does) on the given frame."""
    import tlc.cli.video as cli_video

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = cli_video.restore
    monkeypatch.setattr(cli_video, "restore", interrupted)


@pytest.mark.parametrize("flag", ["-o", "--frames-out"])
def test_interrupted_restore_leaves_no_output(clips, tmp_path, monkeypatch, capsys, flag):
    _interrupt_on_frame(monkeypatch, 5)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "clip.mp4" if flag == "-o" else out / "frames"
    assert run("restore", clips / "clip.mp4", flag, target, *MODEL) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no output, no temporary file or folder


def test_bad_videos_get_one_line_each(clips, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (clips / "clip.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])  # index (moov) at the end: lost
    make_clip(tmp_path / "fast.mp4", smooth_frames(np.random.default_rng(3), 8, 48, 64), Fraction(25),
              options={"movflags": "faststart"})
    fast = (tmp_path / "fast.mp4").read_bytes()
    (bad / "faststart_truncated.mp4").write_bytes(fast[: len(fast) * 2 // 3])  # index first, frames cut
    make_clip(tmp_path / "m.mkv", smooth_frames(np.random.default_rng(4), 8, 48, 64), Fraction(25))
    mkv = (tmp_path / "m.mkv").read_bytes()
    (bad / "truncated.mkv").write_bytes(mkv[: len(mkv) // 2])
    (bad / "text.mp4").write_text("this is not a video\n" * 50)
    (bad / "picture.mp4").write_bytes((clips / "folder" / "c.png").read_bytes())
    (bad / "empty.mov").write_bytes(b"")
    out = tmp_path / "out"
    assert run("restore", bad, "-o", out, *MODEL) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    for name in ("truncated.mp4", "faststart_truncated.mp4", "truncated.mkv", "text.mp4", "picture.mp4", "empty.mov"):
        lines = [line for line in err.splitlines() if f"/{name}:" in line]
        assert len(lines) == 1 and lines[0].startswith(f"tlc: error: {bad / name}: "), (name, err)
    assert "6 failed" in err
    assert re.search(r"faststart_truncated\.mp4: truncated or corrupt video: \d of the 8 frames", err)
    assert run("restore", bad / "text.mp4", "-o", tmp_path / "one.mp4", *MODEL) == 1
    assert not (tmp_path / "one.mp4").exists()
    with pytest.raises(VideoError, match="not an MP4, MOV, MKV, WebM or AVI video"):
        probe_video(bad / "picture.mp4")


def test_audio_the_output_cannot_hold_is_one_line(clips, tmp_path, capsys):
    out = tmp_path / "x.webm"  # WebM holds Opus and Vorbis, not the clip's AAC
    assert run("restore", clips / "clip.mp4", "-o", out, *MODEL) == 1
    err = capsys.readouterr().err
    assert f"tlc: error: {out}: a .webm file cannot hold the input's aac audio unchanged; write .mkv" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
