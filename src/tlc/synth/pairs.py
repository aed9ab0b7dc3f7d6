"""A paired set in the GoPro layout from a folder of sharp photos (what ``tlc synth`` writes).

Writes OUT/target/<name>.png (the sharp image), OUT/input/<name>.png (degraded, same bit depth)
and OUT/degradations.json (per image: the seed and the concrete values drawn, enough to reproduce
it with :func:`tlc.synth.degrade_from_record`). Each image's seed derives from ``seed`` and its
file name, so adding photos to the folder does not change the others.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import io
from .._util import write_atomically
from .degrade import Degradation, degrade


@dataclass(frozen=True)
class SynthReport:
    """What :func:`write_pairs` did: pairs written, pairs already there (kept), files that failed."""

    written: int
    skipped: int
    failed: int


def _image_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def _no_progress(items: Iterable, total: int | None = None, desc: str = "") -> Iterable:
    return items


def write_pairs(
    sharp: str | os.PathLike,
    out: str | os.PathLike,
    degradation: Degradation,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[..., Iterable] = _no_progress,
    log: Callable[[str], None] = print,
) -> SynthReport:
    """Degrade every image in the folder ``sharp`` into a paired set in ``out``.

    Args:
        sharp: folder of sharp images.
        out: output folder (gets input/, target/ and degradations.json).
        degradation: what to draw for each image.
        seed: base seed; each image's is derived from it and the image's file name.
        overwrite: replace pairs already in ``out`` (otherwise they are kept and counted as skipped).
        progress: wraps the iteration over images (e.g. tqdm), called as ``progress(paths, total=, desc=)``.
        log: receives one line per failed file.

    Raises:
        ValueError: ``sharp`` is not a folder, holds no images, or is ``out`` or one of its halves.
    """
    sharp, out = Path(sharp), Path(out)
    if not sharp.is_dir():
        raise ValueError(f"{sharp} is not a folder of sharp images")
    paths, _ = io.collect_inputs([str(sharp)])
    if not paths:
        raise ValueError(f"no images in {sharp}")
    out_input, out_target = out / "input", out / "target"
    if sharp.resolve() in (out_input.resolve(), out_target.resolve(), out.resolve()):
        raise ValueError("OUT_DIR must not be the sharp folder or hold it as input/ or target/")
    records_path = out / "degradations.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else {}
    failed = written = skipped = 0
    for path in progress(paths, total=len(paths), desc="degrading"):
        name = f"{path.stem}.png"
        if (out_input / name).exists() and (out_target / name).exists() and not overwrite:
            skipped += 1
            continue
        try:
            record = _write_pair(path, out_target / name, out_input / name, degradation, _image_seed(seed, path.name))
        except io.ImageError as err:  # its message names the file
            log(f"tlc: error: {err}")
            failed += 1
            continue
        except (ValueError, OSError) as err:
            log(f"tlc: error: {path}: {err}")
            failed += 1
            continue
        records[name] = {"source": str(path), **record}
        written += 1
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(records_path, json.dumps(records, indent=1))
    return SynthReport(written, skipped, failed)


def _write_pair(source: Path, target: Path, degraded_path: Path, degradation: Degradation, seed: int) -> dict:
    """Write one sharp image and its degraded copy; returns the degradation's record."""
    image = io.read_image(source)
    pixels = image.pixels[..., 0] if image.pixels.shape[2] == 1 else image.pixels
    degraded, record = degrade(pixels, degradation, seed)
    degraded = degraded.reshape(image.pixels.shape)
    io.write_image(target, image.pixels, bit_depth=image.bit_depth, overwrite=True)
    io.write_image(degraded_path, degraded, bit_depth=image.bit_depth, overwrite=True)
    return record
