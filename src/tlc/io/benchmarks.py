"""The published test sets of the paper's tasks, each in the folder layout it is distributed in.

One :class:`Benchmark` per test set says how its pairs are found, which scoring protocol its
published tables use (a name in :data:`tlc.eval.metrics.PROTOCOLS`), its subsets and how many
input channels its model takes. :func:`find_benchmark` finds the pairs of a named benchmark;
:func:`identify` names the benchmark a folder is laid out as, when only one fits.

Layouts (DATASET is the folder given on the command line):

- gopro: ``GOPRO_Large/`` or ``GOPRO_Large/test/``: scene folders ``GOPR0384_11_00/blur/`` +
  ``sharp/`` (``blur_gamma/`` is not used); pairs "scene/stem". Or NAFNet's LMDB copy:
  ``GoPro/test/input.lmdb`` + ``target.lmdb`` (see :mod:`tlc.io.lmdbimages`); pairs named by key.
- hide: ``HIDE_dataset/``: ``test/test-close-ups/``, ``test/test-long-shot/`` and ``GT/`` (which
  also holds the training targets); subsets close-ups and long-shot.
- realblur-j, realblur-r: the folder of ``RealBlur_J_test_list.txt`` / ``RealBlur_R_test_list.txt``,
  whose lines are "GT_PATH BLUR_PATH" relative to it (``RealBlur-J_ECC_IMCORR_centroid_itensity_ref/
  scene230/gt/gt_1.png ...blur/blur_1.png``); without a list, every scene folder's
  ``blur/blur_N.png`` + ``gt/gt_N.png``.
- reds, reds-300: ``val/`` or its parent: ``val_blur_jpeg/NNN/XXXXXXXX.jpg`` (or ``val_blur/``) +
  ``val_sharp/NNN/XXXXXXXX.png``; reds-300 is the 300-frame subset HINet and NAFNet report (frames
  whose number ends in 9), also found flattened as ``blur_300/NNN_XXXXXXXX.jpg`` + ``sharp_300/``.
- dpdd (single image): ``inputC/`` + ``target/``; dpdd-dual: ``inputL/`` + ``inputR/`` concatenated
  to 6 channels + ``target/``; 16-bit PNGs; indoor/outdoor subsets from ``indoor_labels.npy`` /
  ``outdoor_labels.npy`` (or ``.txt``): 1-based positions in the naturally sorted file list.
- sidd: ``ValidationNoisyBlocksSrgb.mat`` + ``ValidationGtBlocksSrgb.mat`` (uint8 40 x 32 x 256 x 256
  x 3 under keys of the same names; MATLAB v5 or v7.3); pairs "II_BB" (image, block). Or NAFNet's
  LMDB copy: ``SIDD/val/input_crops.lmdb`` + ``gt_crops.lmdb``; pairs named by key.

An LMDB copy is found in DATASET, in its ``test/`` (GoPro) or ``val/`` (SIDD), or given as one of
the two ``.lmdb`` folders; keys on one side only are unmatched files.
- rain (Rain100L/H, Test100, Test1200, Test2800): ``input/`` + ``target/``, or the original naming
  ``rain-NNN.png`` + ``norain-NNN.png`` in the folder or its subfolders.

GoPro, HIDE, RealBlur and REDS named with ``--benchmark`` are also read from ``input/`` + ``target/``,
as the Restormer and MPRNet repositories distribute their copies (without HIDE's subsets).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image import ImageError, PathLike
from .lmdbimages import LmdbPairs, is_lmdb, lmdb_keys
from .matblocks import MatBlocks
from .pairs import PairedSet, images_by_stem, images_in, find_pairs

_MAX_LISTED = 10
HIDE_SUBSETS = ("test-close-ups", "test-long-shot")
DPDD_LABELS = ("indoor", "outdoor")
SIDD_KEYS = ("ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb")
REALBLUR_FOLDERS = {"realblur-j": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",
                    "realblur-r": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref"}
REALBLUR_LISTS = {"realblur-j": "RealBlur_J_test_list.txt", "realblur-r": "RealBlur_R_test_list.txt"}
# NAFNet's LMDB copies: (input database, target database, the subfolder they are in under the dataset).
GOPRO_LMDB = ("input.lmdb", "target.lmdb", "test")
SIDD_LMDB = ("input_crops.lmdb", "gt_crops.lmdb", "val")


class LayoutNotFound(ImageError):
    """The folder is not laid out as the benchmark asked for (the message says what was expected)."""


@dataclass(frozen=True)
class Benchmark:
    """A published test set.

    Attributes:
        name: what ``--benchmark`` takes, e.g. "hide".
        title: as papers name it, e.g. "HIDE".
        task: what its models restore.
        layout: the folder layout, in words (for help and docs).
        protocol: the scoring protocol of the published tables, a name in
            :data:`tlc.eval.metrics.PROTOCOLS`.
        fallback: the preset used where ``protocol`` is not defined.
        channels: input channels its model takes (6 for dual-pixel: left and right views).
        subsets: names of the subsets reported beside the overall means.
        find: ``find(root, strict)`` -> the pairs under ``root`` (:class:`ImageError` when the
            layout is not there).
        recognise: whether ``root`` is laid out as this benchmark (for :func:`identify`).
        copies: also read from ``input/`` + ``target/``, the layout the Restormer and MPRNet
            repositories distribute their copies of the test set in (subsets are then unknown).
    """

    name: str
    title: str
    task: str
    layout: str
    protocol: str
    fallback: str
    find: Callable[[Path, bool], PairedSet] = field(repr=False, compare=False)
    recognise: Callable[[Path], bool] = field(repr=False, compare=False)
    channels: int = 3
    subsets: tuple[str, ...] = ()
    copies: bool = False


def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers ("img2" < "img10"), as natsort orders file lists."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


def _subdirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _finish(root: Path, pairs: list[tuple[str, Path, Path]], layout: str, unmatched_inputs: list[Path],
            unmatched_targets: list[Path], strict: bool, benchmark: str, **extra) -> PairedSet:
    """The PairedSet, or (strict) an ImageError listing files without a counterpart."""
    unmatched = unmatched_inputs + unmatched_targets
    if strict and unmatched:
        listed = ", ".join(_relative(p, root) for p in unmatched[:_MAX_LISTED])
        more = f" and {len(unmatched) - _MAX_LISTED} more" if len(unmatched) > _MAX_LISTED else ""
        raise ImageError(f"{root}: {len(unmatched)} file(s) of the {benchmark} layout ({layout}) have no counterpart: "
                         f"{listed}{more}")
    if not pairs:
        raise ImageError(f"{root}: {benchmark} layout {layout} found but no pair in it")
    pairs.sort(key=lambda pair: natural_key(pair[0]))
    return PairedSet(pairs, layout, unmatched_inputs, unmatched_targets, benchmark=benchmark, **extra)


def _relative(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _match(prefix: str, inputs: dict[str, Path], targets: dict[str, Path], extra_targets_ok: bool = False
           ) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pairs of ``inputs`` and ``targets`` sharing a key, named prefix + the input's stem."""
    pairs = [(prefix + p.stem, p, targets[key]) for key, p in inputs.items() if key in targets]
    lone_inputs = [p for key, p in inputs.items() if key not in targets]
    lone_targets = [] if extra_targets_ok else [p for key, p in targets.items() if key not in inputs]
    return pairs, lone_inputs, lone_targets


def _keyed(folder: Path, pattern: str) -> dict[str, Path]:
    """Image files of ``folder`` whose stem fully matches ``pattern``, keyed by its first group."""
    found = {}
    if folder.is_dir():
        for p in images_in(folder):
            m = re.fullmatch(pattern, p.stem, flags=re.IGNORECASE)
            if m:
                found[m.group(1)] = p
    return found


# LMDB copies ------------------------------------------------------------------------------------

def _lmdb_base(root: Path, names: tuple[str, str, str]) -> Path | None:
    """The folder holding both databases ``names``: ``root``, its subfolder, or its parent when
    ``root`` is one of the two."""
    first, second, subfolder = names
    candidates = [root, root / subfolder]
    if root.name in (first, second):
        candidates.insert(0, root.parent)
    return next((base for base in candidates if is_lmdb(base / first) and is_lmdb(base / second)), None)


def _find_lmdb(root: Path, base: Path, names: tuple[str, str, str], strict: bool, benchmark: str) -> PairedSet:
    """Pairs of two databases sharing keys, named by key; a key on one side only is unmatched."""
    inputs, targets = base / names[0], base / names[1]
    input_keys, target_keys = lmdb_keys(inputs), lmdb_keys(targets)
    have_input, have_target = set(input_keys), set(target_keys)
    pairs = [(key, inputs / key, targets / key) for key in input_keys if key in have_target]
    lone_in = [inputs / key for key in input_keys if key not in have_target]
    lone_out = [targets / key for key in target_keys if key not in have_input]
    where = f"{names[2]}/" if base == root / names[2] else ""
    # One "/" between the databases, so unmatched_names() gives "input.lmdb/KEY" (with "test/" before it).
    return _finish(root, pairs, f"{where}{names[0]}/{names[1]}", lone_in, lone_out, strict, benchmark,
                   blocks=LmdbPairs(inputs, targets))


# GoPro ------------------------------------------------------------------------------------------

def _gopro_root(root: Path) -> Path | None:
    for candidate in (root, root / "test"):
        if candidate.is_dir() and any((d / "blur").is_dir() and (d / "sharp").is_dir() for d in _subdirs(candidate)):
            return candidate
    return None


def _find_gopro(root: Path, strict: bool) -> PairedSet:
    base = _gopro_root(root)
    if base is None:
        lmdb_base = _lmdb_base(root, GOPRO_LMDB)
        if lmdb_base is not None:
            return _find_lmdb(root, lmdb_base, GOPRO_LMDB, strict, "gopro")
        raise LayoutNotFound(f"{root}: not the GoPro layout: expected scene folders with blur/ and sharp/ "
                             "(e.g. test/GOPR0384_11_00/blur), or NAFNet's input.lmdb + target.lmdb, here or in test/")
    pairs, lone_in, lone_out = [], [], []
    for scene in _subdirs(base):
        if (scene / "blur").is_dir() or (scene / "sharp").is_dir():
            found = _match(f"{scene.name}/", images_by_stem(scene / "blur"), images_by_stem(scene / "sharp"))
            pairs += found[0]
            lone_in += found[1]
            lone_out += found[2]
    where = "test/" if base != root else ""
    return _finish(root, pairs, f"{where}*/blur/sharp", lone_in, lone_out, strict, "gopro")


# HIDE -------------------------------------------------------------------------------------------

def _is_hide(root: Path) -> bool:
    return (root / "GT").is_dir() and any((root / "test" / s).is_dir() for s in HIDE_SUBSETS)


def _find_hide(root: Path, strict: bool) -> PairedSet:
    if not _is_hide(root):
        raise LayoutNotFound(f"{root}: not the HIDE layout: expected test/test-close-ups/, test/test-long-shot/ "
                             "and GT/")
    targets = images_by_stem(root / "GT")
    pairs, lone_in, subsets = [], [], {}
    for subset in HIDE_SUBSETS:
        found = _match(f"{subset}/", images_by_stem(root / "test" / subset), targets, extra_targets_ok=True)
        pairs += found[0]
        lone_in += found[1]
        subsets[subset] = [name for name, _, _ in found[0]]
    # GT/ holds the training set's targets as well: only test inputs without a target count.
    return _finish(root, pairs, "test/test-*/ + GT/", lone_in, [], strict, "hide", subsets=subsets)


# RealBlur ---------------------------------------------------------------------------------------

def _realblur_scenes(root: Path, name: str) -> Path | None:
    """The folder of scene folders (sceneNNN/blur, sceneNNN/gt) for ``name``, if recognisable."""
    folder = REALBLUR_FOLDERS[name]
    for candidate in (root / folder, root):
        if candidate.is_dir() and (candidate.name == folder or candidate == root / folder):
            return candidate
    return None


def _has_scenes(folder: Path) -> bool:
    return folder.is_dir() and any((d / "blur").is_dir() and (d / "gt").is_dir() for d in _subdirs(folder))


def _is_realblur(name: str) -> Callable[[Path], bool]:
    def recognise(root: Path) -> bool:
        if (root / REALBLUR_LISTS[name]).is_file():
            return True
        scenes = _realblur_scenes(root, name)
        return scenes is not None and _has_scenes(scenes)
    return recognise


def _find_realblur(name: str) -> Callable[[Path, bool], PairedSet]:
    def find(root: Path, strict: bool) -> PairedSet:
        listing = root / REALBLUR_LISTS[name]
        if listing.is_file():
            return _realblur_from_list(root, listing, name, strict)
        scenes = _realblur_scenes(root, name)
        if scenes is None and _has_scenes(root):
            scenes = root  # scene folders named by the user: --benchmark says which set
        if scenes is None or not _has_scenes(scenes):
            raise LayoutNotFound(f"{root}: not the {name} layout: expected {REALBLUR_LISTS[name]} (lines "
                             f"'GT_PATH BLUR_PATH') or scene folders {REALBLUR_FOLDERS[name]}/sceneNNN/blur + gt")
        pairs, lone_in, lone_out = [], [], []
        for scene in _subdirs(scenes):
            if (scene / "blur").is_dir() or (scene / "gt").is_dir():
                found = _match(f"{scene.name}/", _keyed(scene / "blur", r"blur_(\d+)"),
                               _keyed(scene / "gt", r"gt_(\d+)"))
                pairs += found[0]
                lone_in += found[1]
                lone_out += found[2]
        # Without the test list every scene counts, training scenes included.
        return _finish(root, pairs, "sceneNNN/blur/blur_N + gt/gt_N (all scenes, no test list)", lone_in, lone_out,
                       strict, name)
    return find


def _realblur_from_list(root: Path, listing: Path, name: str, strict: bool) -> PairedSet:
    pairs, missing = [], []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ImageError(f"{listing}:{number}: expected 'GT_PATH BLUR_PATH', got {line.strip()!r}")
        gt, blur = root / fields[0], root / fields[1]
        lost = [p for p in (blur, gt) if not p.is_file()]
        if lost:
            missing += lost
            continue
        pairs.append((f"{blur.parent.parent.name}/{blur.stem}", blur, gt))
    if len({n for n, _, _ in pairs}) != len(pairs):
        raise ImageError(f"{listing}: lists one blurred image twice")
    return _finish(root, pairs, f"{listing.name} (GT_PATH BLUR_PATH)", missing, [], strict, name)


# REDS -------------------------------------------------------------------------------------------

REDS_INPUTS = ("val_blur_jpeg", "val_blur")


def _reds_base(root: Path) -> tuple[Path, str] | None:
    for base in (root, root / "val"):
        if (base / "val_sharp").is_dir():
            for folder in REDS_INPUTS:
                if (base / folder).is_dir():
                    return base, folder
    return None


def _in_val_300(name: str) -> bool:
    """The frames of the 300-frame validation subset: those whose number ends in 9 (10 per clip)."""
    return name.endswith("9")


def _find_reds(subset_300: bool) -> Callable[[Path, bool], PairedSet]:
    benchmark = "reds-300" if subset_300 else "reds"

    def find(root: Path, strict: bool) -> PairedSet:
        flat = next((b for b in (root, root / "val") if (b / "blur_300").is_dir() and (b / "sharp_300").is_dir()), None)
        found = _reds_base(root)
        if subset_300 and flat is not None and found is None:
            pairs, lone_in, lone_out = _match("", images_by_stem(flat / "blur_300"), images_by_stem(flat / "sharp_300"))
            pairs = [(n.replace("_", "/", 1), a, b) for n, a, b in pairs]
            return _finish(root, pairs, "blur_300/ + sharp_300/", lone_in, lone_out, strict, benchmark)
        if found is None:
            raise LayoutNotFound(f"{root}: not the REDS layout: expected val_blur_jpeg/ (or val_blur/) and val_sharp/ "
                             "with clip folders NNN/XXXXXXXX.png, here or in val/")
        base, input_folder = found
        pairs, lone_in, lone_out = [], [], []
        clips = sorted({d.name for d in _subdirs(base / input_folder)} | {d.name for d in _subdirs(base / "val_sharp")})
        for clip in clips:
            inputs, targets = images_by_stem(base / input_folder / clip), images_by_stem(base / "val_sharp" / clip)
            if subset_300:
                inputs = {k: v for k, v in inputs.items() if _in_val_300(k)}
                targets = {k: v for k, v in targets.items() if _in_val_300(k)}
            got = _match(f"{clip}/", inputs, targets)
            pairs += got[0]
            lone_in += got[1]
            lone_out += got[2]
        frames = " (frames ending in 9)" if subset_300 else ""
        layout = f"{input_folder}/NNN/ + val_sharp/NNN/{frames}"
        return _finish(root, pairs, layout, lone_in, lone_out, strict, benchmark)
    return find


def _is_reds(root: Path) -> bool:
    return _reds_base(root) is not None


def _is_reds_300(root: Path) -> bool:
    return any((b / "blur_300").is_dir() and (b / "sharp_300").is_dir() for b in (root, root / "val"))


# DPDD -------------------------------------------------------------------------------------------

def _read_labels(path: Path) -> list[int]:
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ImageError(f"{path}: cannot read it as a numpy array ({err})") from None
        return [int(v) for v in np.asarray(values).ravel()]
    text = path.read_text()
    numbers = re.findall(r"-?\d+", text)
    if not numbers or re.sub(r"[\s,;\[\]]|-?\d+", "", text):
        raise ImageError(f"{path}: expected 1-based image numbers separated by spaces, commas or new lines")
    return [int(n) for n in numbers]


def _dpdd_subsets(root: Path, names: list[str]) -> dict[str, list[str]]:
    """indoor/outdoor -> pair names, from the label files' 1-based positions in the sorted list."""
    subsets = {}
    for label in DPDD_LABELS:
        path = next((p for p in (root / f"{label}_labels.npy", root / f"{label}_labels.txt") if p.is_file()), None)
        if path is None:
            continue
        positions = _read_labels(path)
        bad = [n for n in positions if not 1 <= n <= len(names)]
        if bad:
            raise ImageError(f"{path}: position(s) {bad[:5]} outside 1..{len(names)} (the number of test images)")
        subsets[label] = [names[n - 1] for n in positions]
    return subsets


def _find_dpdd(dual: bool) -> Callable[[Path, bool], PairedSet]:
    benchmark = "dpdd-dual" if dual else "dpdd"
    folders = ("inputL", "inputR") if dual else ("inputC",)

    def find(root: Path, strict: bool) -> PairedSet:
        if not all((root / f).is_dir() for f in (*folders, "target")):
            raise LayoutNotFound(f"{root}: not the {benchmark} layout: expected {'/, '.join(folders)}/ and target/")
        views = [images_by_stem(root / f) for f in folders]
        pairs, lone_in, lone_out = _match("", views[0], images_by_stem(root / "target"))
        if dual:
            right = views[1]
            lone_in += [p for stem, p in right.items() if stem not in views[0]]
            kept = []
            for name, left, target in pairs:
                if name in right:
                    kept.append((name, left, target))
                else:
                    lone_in.append(left)
            pairs = kept
        result = _finish(root, pairs, " + ".join(f"{f}/" for f in folders) + " -> target/", lone_in, lone_out,
                         strict, benchmark, channels=3 * len(folders))
        # The labels count the input files in natural order, whether paired or not.
        present = {name for name, _, _ in result.pairs}
        subsets = _dpdd_subsets(root, sorted(views[0], key=natural_key))
        result.subsets = {label: [n for n in names if n in present] for label, names in subsets.items()}
        if dual:
            result.views = {name: (left, right[name]) for name, left, _ in result.pairs}
        return result
    return find


# SIDD -------------------------------------------------------------------------------------------

def _sidd_files(root: Path) -> tuple[Path, Path] | None:
    folder = root.parent if root.is_file() else root
    noisy, gt = (folder / f"{key}.mat" for key in SIDD_KEYS)
    return (noisy, gt) if noisy.is_file() and gt.is_file() else None


def _find_sidd(root: Path, strict: bool) -> PairedSet:
    files = _sidd_files(root)
    if files is None:
        lmdb_base = _lmdb_base(root, SIDD_LMDB)
        if lmdb_base is not None:
            return _find_lmdb(root, lmdb_base, SIDD_LMDB, strict, "sidd")
        raise LayoutNotFound(f"{root}: not the SIDD layout: expected {SIDD_KEYS[0]}.mat and {SIDD_KEYS[1]}.mat, "
                             f"or NAFNet's {SIDD_LMDB[0]} + {SIDD_LMDB[1]}, here or in {SIDD_LMDB[2]}/")
    blocks = MatBlocks(files[0], files[1], *SIDD_KEYS)
    pairs = [(name, files[0], files[1]) for name in blocks.names()]
    return PairedSet(pairs, f"{files[0].name} + {files[1].name} (blocks)", benchmark="sidd", blocks=blocks)


# Rain -------------------------------------------------------------------------------------------

_RAIN = r"rain-(\d+)(?:x\d)?"
_NORAIN = r"norain-(\d+)(?:x\d)?"


def _rain_named(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """rain-NNN and norain-NNN files in ``root`` and its subfolders, keyed by NNN."""
    inputs, targets = {}, {}
    for folder in (root, *_subdirs(root)):
        for found, pattern in ((inputs, _RAIN), (targets, _NORAIN)):
            for key, p in _keyed(folder, pattern).items():
                if key in found:
                    raise ImageError(f"{root}: {_relative(found[key], root)} and {_relative(p, root)} have the same "
                                     "number; cannot tell which one to pair")
                found[key] = p
    return inputs, targets


def _is_rain(root: Path) -> bool:
    return bool(_rain_named(root)[1])


def _find_rain(root: Path, strict: bool) -> PairedSet:
    inputs, targets = _rain_named(root)
    if targets:
        pairs, lone_in, lone_out = _match("", inputs, targets)
        return _finish(root, pairs, "rain-NNN + norain-NNN", lone_in, lone_out, strict, "rain")
    if (root / "input").is_dir() and (root / "target").is_dir():
        pairs, lone_in, lone_out = _match("", images_by_stem(root / "input"), images_by_stem(root / "target"))
        return _finish(root, pairs, "input/target", lone_in, lone_out, strict, "rain")
    raise LayoutNotFound(f"{root}: not a Rain layout: expected input/ + target/ or rain-NNN.png + norain-NNN.png")


# The table --------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gopro", "GoPro", "motion deblurring",
              "test/SCENE/blur/ + SCENE/sharp/ (root or test/), or NAFNet's test/input.lmdb + target.lmdb",
              "gopro", "gopro", _find_gopro,
              lambda root: _gopro_root(root) is not None or _lmdb_base(root, GOPRO_LMDB) is not None, copies=True),
    Benchmark("hide", "HIDE", "motion deblurring", "test/test-close-ups/ + test/test-long-shot/ + GT/",
              "gopro", "gopro", _find_hide, _is_hide, subsets=HIDE_SUBSETS, copies=True),
    Benchmark("realblur-j", "RealBlur-J", "real motion deblurring",
              f"{REALBLUR_LISTS['realblur-j']} or {REALBLUR_FOLDERS['realblur-j']}/sceneNNN/blur + gt",
              "realblur", "gopro", _find_realblur("realblur-j"), _is_realblur("realblur-j"), copies=True),
    Benchmark("realblur-r", "RealBlur-R", "real motion deblurring",
              f"{REALBLUR_LISTS['realblur-r']} or {REALBLUR_FOLDERS['realblur-r']}/sceneNNN/blur + gt",
              "realblur", "gopro", _find_realblur("realblur-r"), _is_realblur("realblur-r"), copies=True),
    Benchmark("reds", "REDS", "deblurring with JPEG artifacts", "val_blur_jpeg/NNN/ (or val_blur/) + val_sharp/NNN/",
              "gopro", "gopro", _find_reds(False), _is_reds, copies=True),
    Benchmark("reds-300", "REDS val-300", "deblurring with JPEG artifacts",
              "as reds, frames ending in 9; or blur_300/ + sharp_300/", "gopro", "gopro", _find_reds(True),
              _is_reds_300),
    Benchmark("dpdd", "DPDD", "single-image defocus deblurring", "inputC/ + target/ (16-bit), *_labels.npy",
              "dpdd", "float", _find_dpdd(False),
              lambda root: (root / "inputC").is_dir() and (root / "target").is_dir(),
              subsets=DPDD_LABELS),
    Benchmark("dpdd-dual", "DPDD (dual-pixel)", "dual-pixel defocus deblurring",
              "inputL/ + inputR/ (6 channels) + target/ (16-bit), *_labels.npy", "dpdd", "float", _find_dpdd(True),
              lambda root: all((root / f).is_dir() for f in ("inputL", "inputR", "target")),
              channels=6, subsets=DPDD_LABELS),
    Benchmark("sidd", "SIDD", "real denoising",
              f"{SIDD_KEYS[0]}.mat + {SIDD_KEYS[1]}.mat, or NAFNet's val/input_crops.lmdb + gt_crops.lmdb",
              "sidd", "float", _find_sidd,
              lambda root: _sidd_files(root) is not None or _lmdb_base(root, SIDD_LMDB) is not None),
    Benchmark("rain", "Rain13k test sets", "deraining (Rain100L/H, Test100, Test1200, Test2800)",
              "input/ + target/, or rain-NNN + norain-NNN", "rain", "y", _find_rain, _is_rain),
)}
"""Every benchmark by name. A plain input/ + target/ folder identifies none of them (it is every
paired set's layout, rain's included): it is a benchmark only when ``--benchmark`` names one."""


class AmbiguousLayout(ImageError):
    """A folder laid out as several benchmarks; ``choices`` names them."""

    def __init__(self, root: Path, choices: list[str]) -> None:
        self.choices = choices
        super().__init__(f"{root}: this layout fits several benchmarks; say which with --benchmark "
                         f"{'|'.join(choices)}")


def identify(root: PathLike) -> str | None:
    """The benchmark ``root`` is laid out as, or None when it is none of them (e.g. a plain
    input/ + target/ folder).

    Raises:
        AmbiguousLayout: several fit (e.g. DPDD with inputC/ and inputL/ + inputR/, or both
            RealBlur test lists); the message names the choices.
    """
    root = Path(root)
    if not root.exists():
        raise ImageError(f"{root}: no such folder")
    if root.is_file():
        return "sidd" if _sidd_files(root) is not None else None
    found = [b.name for b in BENCHMARKS.values() if b.recognise(root)]
    if "reds" in found and "reds-300" in found:
        found.remove("reds-300")  # the full set is there: reds-300 is a choice only when asked for
    if len(found) > 1:
        raise AmbiguousLayout(root, found)
    return found[0] if found else None


def find_benchmark(root: PathLike, name: str | None = None, *, strict: bool = True) -> PairedSet:
    """The pairs of benchmark ``name`` under ``root``; without a name, of the benchmark
    :func:`identify` recognises, else of the generic layouts of :func:`tlc.io.find_pairs`.

    Args:
        root: the dataset folder (for SIDD also one of its two .mat files; for an LMDB copy also
            one of its two .lmdb folders).
        name: a key of :data:`BENCHMARKS`, or None.
        strict: raise when a file has no counterpart; otherwise record it in the unmatched lists.

    Raises:
        ImageError: unknown name, the layout is not there, unmatched files (strict), or
            (:class:`AmbiguousLayout`) no name and several benchmarks fit.
    """
    root = Path(root)
    if name is None:
        name = identify(root)
        if name is None:
            return find_pairs(root, strict=strict)
    if name not in BENCHMARKS:
        raise ImageError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if not root.exists():
        raise ImageError(f"{root}: no such folder")
    benchmark = BENCHMARKS[name]
    try:
        return benchmark.find(root, strict)
    except LayoutNotFound:
        if not (benchmark.copies and (root / "input").is_dir() and (root / "target").is_dir()):
            raise
    pairs = find_pairs(root, strict=strict)
    pairs.benchmark = name
    return pairs
