"""Finding inputs (files, folders, glob patterns) and input/target pairs of a dataset folder."""

from __future__ import annotations

import glob
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._util import Hint, hinted
from .image import Image, ImageError, PathLike
from .read import read_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"})
# (input folder, target folder) names of paired datasets, in the order they are tried.
LAYOUTS: tuple[tuple[str, str], ...] = (("input", "target"), ("blur", "sharp"), ("lq", "gt"))
_MAX_LISTED = 10


class BlockSource(Protocol):
    """Pairs stored as arrays of blocks rather than image files (SIDD's .mat files)."""

    def load(self, name: str) -> tuple[Image, Image]:
        """(degraded, target) of the block called ``name``."""
        ...


@dataclass
class PairedSet:
    """Input/target pairs found by :func:`find_pairs` or :func:`tlc.io.benchmarks.find_benchmark`.

    Attributes:
        pairs: (name, input path, target path), sorted by name; the name is the file stem, or
            "scene/stem" in the nested layout.
        layout: the folder layout found, e.g. "input/target" or "*/blur/sharp" (nested scenes).
        unmatched_inputs: input files with no target of the same stem.
        unmatched_targets: target files with no input of the same stem.
        benchmark: the benchmark whose published layout this is (e.g. "hide"), or None.
        subsets: subset name -> names of its pairs (HIDE's close-ups and long shots, DPDD's
            indoor and outdoor scenes), reported beside the overall means.
        views: pair name -> the input files whose RGB channels are concatenated into the model
            input, in order (dual-pixel: left, right); pairs not listed take their input path.
        channels: channels of the model input: 3 per view.
        blocks: where the pairs' pixels come from when they are blocks of arrays (the paths are
            then the array files); None for image files.
    """

    pairs: list[tuple[str, Path, Path]]
    layout: str
    unmatched_inputs: list[Path] = field(default_factory=list)
    unmatched_targets: list[Path] = field(default_factory=list)
    benchmark: str | None = None
    subsets: dict[str, list[str]] = field(default_factory=dict)
    views: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    channels: int = 3
    blocks: BlockSource | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def unmatched_names(self) -> list[str]:
        """The unmatched files relative to the dataset folder ("input/x.png", or
        "scene/blur/x.png" in the nested layout): inputs first, then targets."""
        depth = self.layout.count("/") + 1  # folders from the dataset down to a file, and the file
        return ["/".join(p.parts[-depth:]) for p in self.unmatched_inputs + self.unmatched_targets]

    def load(
        self, index: int, read: Callable[[Path], Image] = read_image
    ) -> tuple[tuple[Image, ...], Image]:
        """The input views and the target of pair ``index`` (one view unless dual-pixel), image
        files read with ``read`` (e.g. one with a pixel limit).

        Raises:
            ImageError: a file cannot be read, or the views differ in size.
        """
        name, input_path, target_path = self.pairs[index]
        if self.blocks is not None:
            degraded, target = self.blocks.load(name)
            return (degraded,), target
        views = tuple(read(p) for p in self.views.get(name, (input_path,)))
        if len({v.pixels.shape[:2] for v in views}) > 1:
            sizes = ", ".join(f"{v.width} x {v.height}" for v in views)
            raise ImageError(f"{name}: its input views differ in size ({sizes})")
        return views, read(target_path)



def _is_image_file(p: Path, suffixes: Collection[str] = IMAGE_SUFFIXES) -> bool:
    # Hidden names are skipped: macOS "._x.png" resource forks and our own temporary files.
    return p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()


def images_in(folder: Path, suffixes: Collection[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files (or files with one of ``suffixes``) directly in ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p, suffixes)), key=lambda p: p.name)


def collect_inputs(
    specs: Sequence[str], suffixes: Collection[str] = IMAGE_SUFFIXES
) -> tuple[list[Path], list[str]]:
    """Image files named by command-line specs: files, folders and glob patterns.

    A file is taken as given (its content is checked when read); a folder gives its image files
    (non-recursive, by suffix, sorted); a pattern (``*``, ``?``, ``[``; ``**`` recurses) gives the
    image files it matches, sorted. A path that exists is never taken as a pattern.

    Args:
        specs: the command line's input arguments.
        suffixes: lower-case suffixes a folder or pattern picks (default: the image formats'; add
            :data:`tlc.io.VIDEO_SUFFIXES` to take videos as well).

    Returns:
        (paths, problems): the paths in spec order, each file once (by resolved path); one
        message per spec that is missing or found no image.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    problems: list[str] = []
    kind = "image" if set(suffixes) <= IMAGE_SUFFIXES else "image or video"
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = images_in(p, suffixes)
            if not found:
                problems.append(f"{spec}: folder has no {kind} files ({', '.join(sorted(suffixes))})")
        elif p.exists():
            found = [p]
        elif any(c in spec for c in "*?["):
            found = sorted((Path(m) for m in glob.glob(spec, recursive=True)), key=str)
            found = [m for m in found if _is_image_file(m, suffixes)]
            if not found:
                problems.append(f"{spec}: matched no {kind} files")
        else:
            found = []
            problems.append(f"{spec}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(f)
    return paths, problems


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files with one stem cannot be paired."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in images_in(folder):
        if p.stem in found:
            raise ImageError(f"{folder}: {found[p.stem].name} and {p.name} have the same name; "
                             "cannot tell which one to pair")
        found[p.stem] = p
    return found


def _layout_folders(root: Path) -> tuple[str, list[tuple[str, Path, Path]]] | None:
    """The first layout found: its name and (scene prefix, input folder, target folder) per scene."""
    for a, b in LAYOUTS:
        if (root / a).is_dir() and (root / b).is_dir():
            return f"{a}/{b}", [("", root / a, root / b)]
    scenes = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    for a, b in LAYOUTS:
        if any((d / a).is_dir() and (d / b).is_dir() for d in scenes):
            # A scene with one side only still counts: its files are all unmatched.
            chosen = [d for d in scenes if (d / a).is_dir() or (d / b).is_dir()]
            return f"*/{a}/{b}", [(f"{d.name}/", d / a, d / b) for d in chosen]
    return None


def find_pairs(root: PathLike, *, strict: bool = True) -> PairedSet:
    """Input/target pairs of a paired dataset, matched by file stem (suffixes may differ).

    Layouts, tried in order, the first found wins: ``root/input`` + ``root/target``,
    ``root/blur`` + ``root/sharp``, ``root/lq`` + ``root/gt``; then the same names one level down,
    one folder per scene as in GoPro's test set (``root/GOPR0384_11_00/blur`` +
    ``root/GOPR0384_11_00/sharp``), where pairs are named "scene/stem". Only image files directly
    in those folders count.

    Args:
        root: the dataset folder.
        strict: raise when a file has no counterpart (default); otherwise record it in
            ``unmatched_inputs``/``unmatched_targets`` and go on.

    Raises:
        ImageError: ``root`` is not a folder, no layout is found, no pair matches, two files of
            one folder share a stem, or (``strict``) some files are unmatched.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: no such folder")
    found = _layout_folders(root)
    if found is None:
        tried = ", ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
        raise ImageError(f"{root}: no paired layout found; tried {tried}, directly or in scene folders "
                         "(e.g. GOPR0384_11_00/blur + GOPR0384_11_00/sharp)")
    layout, scenes = found
    pairs: list[tuple[str, Path, Path]] = []
    unmatched_inputs: list[Path] = []
    unmatched_targets: list[Path] = []
    for prefix, input_dir, target_dir in scenes:
        inputs, targets = images_by_stem(input_dir), images_by_stem(target_dir)
        pairs += [(prefix + stem, inputs[stem], targets[stem]) for stem in inputs if stem in targets]
        unmatched_inputs += [p for stem, p in inputs.items() if stem not in targets]
        unmatched_targets += [p for stem, p in targets.items() if stem not in inputs]
    pairs.sort(key=lambda pair: pair[0])
    result = PairedSet(pairs, layout, unmatched_inputs, unmatched_targets)
    unmatched = unmatched_inputs + unmatched_targets
    a, b = layout.split("/")[-2:]
    if strict and unmatched:
        names = result.unmatched_names()
        listed = ", ".join(names[:_MAX_LISTED])
        more = f" and {len(unmatched) - _MAX_LISTED} more" if len(unmatched) > _MAX_LISTED else ""
        raise hinted(ImageError, Hint(
            "find_pairs", "strict=False",
            f"{root}: {len(unmatched)} unmatched file(s) ({len(unmatched_inputs)} in {a}/ with no {b}/ file of the "
            f"same name, {len(unmatched_targets)} in {b}/ with no {a}/ one): {listed}{more}; pass ",
            " to skip them",
        ))
    if not pairs:
        raise ImageError(f"{root}: layout {layout} found but no {a}/ and {b}/ files share a name")
    return result
