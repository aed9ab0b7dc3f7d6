"""Checkpoint files in, ready models out: safe reading, container unwrapping, architecture detection.

    sd = read_state_dict("NAFNet-GoPro-width64.pth")      # {key: tensor}, containers unwrapped
    arch, config = detect(sd)                              # ("NAFNet", {"width": 64, ...})
    model = load_model("NAFNet-GoPro-width64.pth")        # built, loaded strictly, in eval mode
    model = load_model("nafnet-gopro-width64", weights="NAFNet-GoPro-width64.pth")  # registry entry

Files are read with ``torch.load(weights_only=True)`` or safetensors only: a checkpoint is data and
is never allowed to run code. Every failure raises :class:`CheckpointError` with a short message
that says what to do.

Container keys are tried in the order of :data:`CONTAINER_KEYS`. ``params_ema`` comes before
``params``: BasicSR saves both when a model is trained with an EMA copy (``param_key=['params',
'params_ema']``), the EMA weights are the ones its authors evaluate and release, and spandrel and
Real-ESRGAN's inference code pick ``params_ema`` first too. (NAFNet/HINet/Restormer releases hold
``params`` only, MPRNet's ``state_dict``, so the order only matters for files holding both.)
A registry entry's own ``checkpoint_key`` is tried before all of them.
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import models
from ._util import one_line
from .archs import ARCHITECTURES, build

#: Keys under which checkpoint files keep their state_dict, most preferred first (see module doc).
CONTAINER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")

#: Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: Constructor arguments that do not shape any weight, so detect() cannot see them; they keep their
#: defaults unless given to load_model.
NOT_IN_WEIGHTS = {"HINet": ("relu_slope", "padder_size", "padding_mode"), "MPRNet": ("padder_size",), "UNet": ("padding_mode",)}

_EXAMPLES = 8  # how many keys an error message lists before "and N more"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTO = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode

StateDict = dict[str, torch.Tensor]
Shapes = dict[str, tuple[int, ...]]


class CheckpointError(ValueError):
    """A checkpoint could not be read, recognised or loaded; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> StateDict:
    """The state_dict held by the checkpoint file at ``path``.

    ``.safetensors`` files are read with safetensors, everything else with
    ``torch.load(weights_only=True)``. Containers (``{"params": sd}``, ``{"state_dict": sd}``...,
    also nested) are unwrapped in the order of :data:`CONTAINER_KEYS`, or through ``key`` when given;
    ``module.``/``_orig_mod.`` prefixes shared by every key are removed. Tensors are on the CPU.
    """
    return _unwrap(_read_file(Path(path)), Path(path), key=key)


def _read_file(path: Path) -> object:
    """Whatever the file holds (tensors, dicts, lists, numbers), read without running any code."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it{_files_in(path)}")
    if not path.exists():
        raise CheckpointError(f"no such checkpoint file: {path}")
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); download or save it again")
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(head, path.stat().st_size):
        return _read_safetensors(path)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        html = "; it looks like a web page: download the file itself" if head.lstrip().startswith(b"<") else ""
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint or a safetensors file (it starts with {head[:12]!r}){html}"
        )
    return _torch_load(path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors files start with the JSON header's length (u64, little-endian), then ``{``."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return header_len < size and head[8:9] == b"{"


def _read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(path, device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); download it again") from None


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e) and "Unsupported" not in str(e):
            raise CheckpointError(f"{path} is truncated or corrupt ({one_line(e, limit=120)}); download it again") from None
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it refers to {blocked.group(1)})" if blocked else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects besides tensors{what}. Loading it would let the file run "
            "arbitrary code, so tlc refuses. If you trust its source, re-save only the weights there: "
            "torch.save(model.state_dict(), path), or safetensors.torch.save_file(state_dict, path)."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({one_line(e, limit=120)}); download it again") from None


def _files_in(folder: Path) -> str:
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".pth", ".pt", ".ckpt", ".safetensors"))
    return f" (it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found else ""


# --------------------------------------------------------------------------------------------
# Unwrapping containers


def _unwrap(obj: object, path: Path, key: str | None = None, prefer: Iterable[str] = ()) -> StateDict:
    """The flat state_dict inside ``obj``: ``obj[key]`` when ``key`` is given, else the first
    container key found (``prefer`` first, then :data:`CONTAINER_KEYS`), repeatedly for nested
    containers; wrapper prefixes removed."""
    if key is not None:
        if not (isinstance(obj, Mapping) and key in obj):
            raise CheckpointError(f"{path} has no {key!r} entry; it holds {_describe(obj)}")
        obj = obj[key]
    top = obj
    order = (*prefer, *CONTAINER_KEYS)
    for _ in range(8):  # nesting depth; real files use one or two levels
        if _is_state_dict(obj):
            return _strip_wrapper_prefixes(dict(obj))
        if not isinstance(obj, Mapping):
            break
        inner = [k for k in order if isinstance(obj.get(k), Mapping)]
        if not inner and len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
            inner = list(obj)  # a single dict under an unknown name (spandrel does the same)
        if not inner:
            break
        obj = obj[inner[0]]
    if not _has_tensor(top):
        raise CheckpointError(f"{path} contains no tensors: it holds {_describe(top)}")
    raise CheckpointError(
        f"no state_dict found in {path}: it holds {_describe(top)}; pass key= to name the entry holding the weights"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _has_tensor(obj: object, depth: int = 4) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth == 0:
        return False
    if isinstance(obj, Mapping):
        return any(_has_tensor(v, depth - 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v, depth - 1) for v in obj)
    return False


def _describe(obj: object) -> str:
    """A one-line description of a loaded object: type and, for dicts, the first keys and value types."""
    if isinstance(obj, Mapping):
        shown = [f"{k!r} ({_short_type(v)})" for k, v in list(obj.items())[:_EXAMPLES]]
        more = f", ... ({len(obj)} in all)" if len(obj) > _EXAMPLES else ""
        return f"a dict with keys {', '.join(shown)}{more}" if obj else "an empty dict"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def _short_type(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"dict of {len(value)}"
    return type(value).__name__


def _strip_wrapper_prefixes(state_dict: StateDict) -> StateDict:
    for prefix in WRAPPER_PREFIXES:
        while all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


# --------------------------------------------------------------------------------------------
# Detecting the architecture


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """The architecture name (a key of :data:`tlc.archs.ARCHITECTURES`) and constructor config
    (the reference's keyword names) that ``state_dict`` was saved from, from keys and shapes alone.

    Works on meta tensors too. The result is checked: building it gives exactly the same keys and
    shapes, or CheckpointError says what differs. Arguments that shape no weight
    (:data:`NOT_IN_WEIGHTS`) are left out and keep their defaults.
    """
    shapes = _shapes(state_dict)
    for arch, recognise, infer in _DETECTORS:
        if recognise(shapes):
            try:
                config = infer(shapes)
            except (KeyError, IndexError, ZeroDivisionError) as e:
                raise CheckpointError(f"this looks like a {arch} state_dict but lacks what it needs ({e})") from None
            problems = _differences(shapes, _model_shapes(arch, config))
            if problems:
                raise CheckpointError(
                    f"this looks like a {arch} state_dict, but no {arch} config reproduces it; the closest, "
                    f"{_call(arch, config)}, differs:\n{problems}"
                )
            return arch, config
    raise CheckpointError(_unrecognised(shapes))


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1``... hold keys (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _default(arch: str, name: str) -> object:
    return inspect.signature(ARCHITECTURES[arch].__init__).parameters[name].default


def _unet_of_blocks(shapes: Shapes) -> dict:
    """NAFNet / Baseline: width and image channels from ``intro``, block counts from the indices."""
    return {
        "img_channel": shapes["intro.weight"][1],
        "width": shapes["intro.weight"][0],
        "middle_blk_num": _count(shapes, "middle_blks"),
        "enc_blk_nums": [_count(shapes, f"encoders.{i}") for i in range(_count(shapes, "downs"))],
        "dec_blk_nums": [_count(shapes, f"decoders.{i}") for i in range(_count(shapes, "ups"))],
    }


def _baseline(shapes: Shapes) -> dict:
    # Any block tells the expansions: conv1 is c -> c*dw_expand, conv4 is c -> c*ffn_expand.
    block = next(k[: -len(".se.1.weight")] for k in shapes if k.endswith(".se.1.weight"))
    channels = shapes[f"{block}.conv1.weight"][1]
    return {
        **_unet_of_blocks(shapes),
        "dw_expand": shapes[f"{block}.conv1.weight"][0] // channels,
        "ffn_expand": shapes[f"{block}.conv4.weight"][0] // channels,
    }


def _hinet(shapes: Shapes) -> dict:
    """Width from ``conv_01``, depth from the encoder levels, HIN range from the levels with norms."""
    depth = _count(shapes, "down_path_1")
    with_norm = [i for i in range(depth) if f"down_path_1.{i}.norm.weight" in shapes]
    if with_norm and with_norm != list(range(with_norm[0], with_norm[-1] + 1)):
        raise CheckpointError(f"HINet with instance norm in levels {with_norm}: not one range, so not buildable")
    left, right = (with_norm[0], with_norm[-1]) if with_norm else (0, -1)  # (0, -1): no level
    return {
        "in_chn": shapes["conv_01.weight"][1],
        "wf": shapes["conv_01.weight"][0],
        "depth": depth,
        "hin_position_left": left,
        "hin_position_right": right,
    }


def _mprnet(shapes: Shapes) -> dict:
    """Widths from the first conv, the level-2 encoder and the tail; num_cab from ORB 1's length
    (its CABs, then one conv); reduction from the channel-attention squeeze sizes."""
    first = shapes["shallow_feat1.0.weight"]
    n_feat = first[0]
    squeezes = [(s[1], s[0]) for k, s in shapes.items() if k.endswith("CA.conv_du.0.weight")]
    return {
        "in_c": first[1],
        "out_c": shapes["tail.weight"][0],
        "n_feat": n_feat,
        "scale_unetfeats": shapes["stage1_encoder.encoder_level2.0.body.0.weight"][0] - n_feat,
        "scale_orsnetfeats": shapes["tail.weight"][1] - n_feat,
        "num_cab": _count(shapes, "stage3_orsnet.orb1.body") - 1,
        "kernel_size": first[-1],
        "reduction": _reduction(squeezes, _default("MPRNet", "reduction")),
        "bias": "shallow_feat1.0.bias" in shapes,
    }


def _reduction(squeezes: list[tuple[int, int]], preferred: int) -> int:
    """A ``reduction`` r with ``channels // r == squeezed`` for every (channels, squeezed) pair."""
    candidates = [preferred, *range(1, max(c for c, _ in squeezes) + 1)]
    for r in candidates:
        if all(c // r == s for c, s in squeezes):
            return r
    raise CheckpointError(f"MPRNet channel-attention sizes {sorted(set(squeezes))} fit no single reduction")


def _restormer(shapes: Shapes) -> dict:
    """Channels from ``patch_embed``/``output``, block counts from the indices, heads from the
    attention temperatures (num_heads, 1, 1), norm type and bias from which biases exist."""
    embed = shapes["patch_embed.proj.weight"]
    levels = (("encoder_level1", "decoder_level1", "refinement"), ("encoder_level2", "decoder_level2"),
              ("encoder_level3", "decoder_level3"), ("latent",))
    default_heads = _default("Restormer", "heads")
    heads = []
    for level, default in zip(levels, default_heads):
        found = [shapes[f"{g}.0.attn.temperature"][0] for g in level if f"{g}.0.attn.temperature" in shapes]
        heads.append(found[0] if found else default)  # a level without blocks has no heads to see
    has_blocks = any(k.endswith(".norm1.body.weight") for k in shapes)
    with_bias = any(k.endswith(".norm1.body.bias") for k in shapes)
    hidden = [(s[0], s[1]) for k, s in shapes.items() if k.endswith(".ffn.project_out.weight")]
    return {
        "inp_channels": embed[1],
        "out_channels": shapes["output.weight"][0],
        "dim": embed[0],
        "num_blocks": [_count(shapes, g) for g in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")],
        "num_refinement_blocks": _count(shapes, "refinement"),
        "heads": heads,
        "ffn_expansion_factor": _ffn_factor(hidden, _default("Restormer", "ffn_expansion_factor")),
        "bias": "output.bias" in shapes,
        "LayerNorm_type": "WithBias" if with_bias or not has_blocks else "BiasFree",
        "dual_pixel_task": "skip_conv.weight" in shapes,
    }


def _ffn_factor(hidden: list[tuple[int, int]], preferred: float) -> float:
    """A factor v with ``int(dim * v) == hidden`` for every (dim, hidden) pair, as the constructor
    computes it: ``preferred`` when it fits, else the shortest decimal that does."""

    def fits(v: float) -> bool:
        return all(int(dim * v) == h for dim, h in hidden)

    if not hidden or fits(preferred):
        return preferred
    low = max(h / dim for dim, h in hidden)  # every fitting v lies in [low, high)
    for decimals in range(7):
        step = 10.0**-decimals
        start = math.floor(low / step) * step
        for v in (round(start + i * step, decimals) for i in range(3)):
            if fits(v):
                return v
    raise CheckpointError(f"Restormer feed-forward sizes {sorted(set(hidden))} fit no ffn_expansion_factor")


def _is_baseline(shapes: Shapes) -> bool:
    return "intro.weight" in shapes and any(k.endswith(".se.1.weight") for k in shapes)


#: (architecture, how to recognise its state_dicts, config inference), tried in order.
_DETECTORS: tuple[tuple[str, Callable[[Shapes], bool], Callable[[Shapes], dict]], ...] = (
    ("Baseline", _is_baseline, _baseline),
    ("NAFNet", lambda shapes: "intro.weight" in shapes, _unet_of_blocks),  # also the block-less Baseline
    ("HINet", lambda shapes: "conv_01.weight" in shapes, _hinet),
    ("MPRNet", lambda shapes: "shallow_feat1.0.weight" in shapes, _mprnet),
    ("Restormer", lambda shapes: "patch_embed.proj.weight" in shapes, _restormer),
)


def _unrecognised(shapes: Shapes) -> str:
    prefixes = list(dict.fromkeys(k.split(".")[0] for k in shapes))
    examples = ", ".join(f"{k} {s}" for k, s in list(shapes.items())[:4])
    return (
        f"not a state_dict of a known architecture ({', '.join(ARCHITECTURES)}): {len(shapes)} tensors under "
        f"{_listing(prefixes)}; e.g. {examples}. If it is one of them, pass arch= and its config."
    )


# --------------------------------------------------------------------------------------------
# Building and loading


def load_model(
    source: str | os.PathLike,
    arch: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    strict: bool = True,
    **config: object,
) -> nn.Module:
    """A network with its checkpoint loaded, in eval mode, float32, on the CPU.

    ``source`` is a registry name (:func:`tlc.models.get`) with ``weights`` the downloaded file,
    or the path of a checkpoint file. For a path, ``arch`` and ``config`` build the network as
    :func:`tlc.archs.build` does; without ``arch`` it is detected (:func:`detect`) and ``config``
    overrides the detected values (e.g. ``padder_size``). For a registry name, ``config`` overrides
    the entry's config.

    With ``strict`` (the default) every key and shape must match; with ``strict=False`` missing and
    unexpected keys are allowed (missing weights keep their initial values), different shapes never.
    """
    entry, unknown = _lookup(str(source))
    if weights is not None:
        if entry is None:
            raise CheckpointError(
                f"weights= goes with a registry name, and {str(source)!r} is not one{unknown}; "
                "to load a checkpoint file, pass its path as the first argument"
            )
        return _load_entry(entry, Path(weights), arch, strict, config)
    if Path(source).exists():
        return _load_path(Path(source), arch, strict, config)
    if entry is not None and entry.bundled_weights is not None:
        return _load_entry(entry, entry.bundled_weights, arch, strict, config)
    if entry is None:
        raise CheckpointError(f"{str(source)!r} is neither an existing checkpoint file nor a registry name{unknown}")
    raise CheckpointError(_download_hint(entry))


def _lookup(name: str) -> tuple[models.ModelEntry | None, str]:
    """The registry entry called ``name``, or None and a hint naming close registry names."""
    try:
        return models.get(name), ""
    except KeyError as e:
        close = re.search(r"did you mean [^?]*\?", str(e.args[0]))
        return None, f"; {close.group(0)}" if close else " (see tlc.models.list())"


def _download_hint(entry: models.ModelEntry) -> str:
    licence = f" Licence: {entry.licence}." if entry.non_commercial else ""
    return (
        f"{entry.name} needs its weights file: download it from {entry.url} and pass "
        f"weights='path/to/file.pth'.{licence}"
    )


def _load_entry(entry: models.ModelEntry, weights: Path, arch: str | None, strict: bool, config: dict) -> nn.Module:
    if arch is not None and arch.lower() != entry.arch.lower():
        raise CheckpointError(f"{entry.name} is a {entry.arch}, not a {arch}; leave arch out for registry names")
    state_dict = _unwrap(_read_file(weights), weights, prefer=(entry.checkpoint_key,))
    return _instantiate(entry.arch, {**entry.config, **config}, state_dict, strict, weights)


def _load_path(path: Path, arch: str | None, strict: bool, config: dict) -> nn.Module:
    state_dict = read_state_dict(path)
    if arch is None:
        arch, detected = detect(state_dict)
        return _instantiate(arch, {**detected, **config}, state_dict, strict, path)
    hint = " (leave arch and its config out to detect them from the checkpoint)"
    return _instantiate(arch, config, state_dict, strict, path, hint)


def _instantiate(
    arch: str, config: dict, state_dict: StateDict, strict: bool, path: Path, hint: str = ""
) -> nn.Module:
    """Build ``arch(**config)`` and load ``state_dict`` into it, after checking keys and shapes."""
    with torch.device("meta"):  # no memory and no random init: the checkpoint supplies every value
        model = _build(arch, config)
    problems = _differences(_shapes(state_dict), _shapes(model.state_dict()), shapes_only=not strict)
    if problems:
        raise CheckpointError(f"{path} does not fit {_call(arch, config)}{hint}:\n{problems}")
    # Fresh copies, like a normally built model's: safetensors hands out unaligned views into one
    # buffer, on which CPU convolutions pick other kernels and results differ in the last bits.
    dtype = torch.get_default_dtype()
    state_dict = {k: v.to(dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state_dict.items()}
    if strict:
        model.load_state_dict(state_dict, strict=True, assign=True)
        if not any(t.is_meta for t in chain(model.parameters(), model.buffers())):
            return model.eval()
    # Some values are not in the checkpoint: start from a normally initialised model.
    model = _build(arch, config)
    model.load_state_dict(state_dict, strict=strict)
    return model.eval()


def _build(arch: str, config: dict) -> nn.Module:
    try:
        return build(arch, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(e)) from None


def _model_shapes(arch: str, config: dict) -> Shapes:
    with torch.device("meta"):
        return _shapes(_build(arch, config).state_dict())


def _differences(checkpoint: Shapes, model: Shapes, shapes_only: bool = False) -> str:
    """A few lines listing missing keys, unexpected keys and shape differences ('' if none)."""
    lines = []
    if not shapes_only:
        missing = [k for k in model if k not in checkpoint]
        unexpected = [k for k in checkpoint if k not in model]
        if missing:
            lines.append(f"  {len(missing)} missing (in the model, not the checkpoint): {_listing(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected (in the checkpoint, not the model): {_listing(unexpected)}")
    resized = [f"{k}: {checkpoint[k]} vs {model[k]}" for k in model if k in checkpoint and checkpoint[k] != model[k]]
    if resized:
        lines.append(f"  {len(resized)} with another shape (checkpoint vs model): {_listing(resized)}")
    return "\n".join(lines)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    return f"{shown} and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else shown


def _call(arch: str, config: dict) -> str:
    return f"{arch}({', '.join(f'{k}={v!r}' for k, v in config.items())})"


__all__ = ["CONTAINER_KEYS", "CheckpointError", "detect", "load_model", "read_state_dict"]
