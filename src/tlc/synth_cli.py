"""``tlc synth``: a paired set in the GoPro layout from a folder of sharp photos.

Writes OUT_DIR/target/<name>.png (the sharp image), OUT_DIR/input/<name>.png (degraded, same bit
depth) and OUT_DIR/degradations.json (per image: the seed and the concrete values drawn, enough to
reproduce it with :func:`tlc.synth.degrade_from_record`). Each image's seed derives from --seed and
its file name, so adding photos to the folder does not change the others.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable
from pathlib import Path

from . import data, synth
from ._util import write_atomically


def _image_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def synthesize(args: argparse.Namespace, progress: Callable, log: Callable[[str], None]) -> int:
    from .cli import UsageError

    try:
        degradation = synth.Degradation(
            noise_sigma_min=args.noise[0], noise_sigma_max=args.noise[1], noise_pattern=args.noise_pattern,
            blur_length_min=args.blur[0], blur_length_max=args.blur[1], blur_pattern=args.blur_pattern,
            blur_angle_min=args.blur_angle[0], blur_angle_max=args.blur_angle[1],
        )
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if not args.sharp.is_dir():
        raise UsageError(f"{args.sharp} is not a folder of sharp images")
    paths, _ = data.collect_inputs([str(args.sharp)])
    if not paths:
        raise UsageError(f"no images in {args.sharp}")
    out_input, out_target = args.out / "input", args.out / "target"
    if args.sharp.resolve() in (out_input.resolve(), out_target.resolve(), args.out.resolve()):
        raise UsageError("OUT_DIR must not be the sharp folder or hold it as input/ or target/")
    records_path = args.out / "degradations.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else {}
    failed = written = skipped = 0
    for path in progress(paths, total=len(paths), desc="degrading"):
        name = f"{path.stem}.png"
        if (out_input / name).exists() and (out_target / name).exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            image = data.read_image(path)
            pixels = image.pixels[..., 0] if image.pixels.shape[2] == 1 else image.pixels
            degraded, record = synth.degrade(pixels, degradation, _image_seed(args.seed, path.name))
            degraded = degraded.reshape(image.pixels.shape)
            data.write_image(out_target / name, image.pixels, bit_depth=image.bit_depth, overwrite=True)
            data.write_image(out_input / name, degraded, bit_depth=image.bit_depth, overwrite=True)
        except data.ImageError as err:
            log(f"tlc: error: {err}")
            failed += 1
            continue
        except (ValueError, OSError) as err:
            log(f"tlc: error: {path}: {err}")
            failed += 1
            continue
        records[name] = {"source": str(path), **record}
        written += 1
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(records_path, json.dumps(records, indent=1))
    note = f", {skipped} already there (use --overwrite)" if skipped else ""
    log(f"wrote {written} pair(s) to {args.out} (input/, target/, degradations.json){note}"
        + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
