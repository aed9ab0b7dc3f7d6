"""Checkpoint files in, state_dicts out: safe reading and container unwrapping.

    sd = read_state_dict("NAFNet-GoPro-width64.pth")      # {key: tensor}, containers unwrapped

Files are read with ``torch.load(weights_only=True)`` or safetensors only: a checkpoint is data and
is never allowed to run code. Every failure raises :class:`CheckpointError` with a short message
that says what to do.

Container keys are tried in the order of :data:`CONTAINER_KEYS`. ``params_ema`` comes before
``params``: BasicSR saves both when a model is trained with an EMA copy (``param_key=['params',
'params_ema']``), the EMA weights are the ones its authors evaluate and release, and spandrel and
Real-ESRGAN's inference code pick ``params_ema`` first too. (NAFNet/HINet/Restormer releases hold
``params`` only, MPRNet's ``state_dict``, so the order only matters for files holding both.)
A registry entry's own ``checkpoint_key`` (``prefer``) is tried before all of them.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .._util import Hint, hinted, one_line
from ..archs import build

#: Keys under which checkpoint files keep their state_dict, most preferred first (see module doc).
CONTAINER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")

#: Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

EXAMPLES = 8  # how many keys an error message lists before "and N more"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTO = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode

StateDict = dict[str, torch.Tensor]
Shapes = dict[str, tuple[int, ...]]


class CheckpointError(ValueError):
    """A checkpoint could not be read, recognised or loaded; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | os.PathLike, key: str | None = None, *, prefer: Iterable[str] = ()) -> StateDict:
    """The state_dict held by the checkpoint file at ``path``.

    ``.safetensors`` files are read with safetensors, everything else with
    ``torch.load(weights_only=True)``. Containers (``{"params": sd}``, ``{"state_dict": sd}``...,
    also nested) are unwrapped in the order of :data:`CONTAINER_KEYS` (after the keys in ``prefer``),
    or through ``key`` when given;
    ``module.``/``_orig_mod.`` prefixes shared by every key are removed. Tensors are on the CPU.
    """
    return _unwrap(_read_file(Path(path)), Path(path), key=key, prefer=prefer)


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
    raise hinted(CheckpointError, Hint("read_state_dict", "key=NAME", f"no state_dict found in {path}: it holds "
                                       f"{_describe(top)}; pass ", " to name the entry holding the weights"))


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
        shown = [f"{k!r} ({_short_type(v)})" for k, v in list(obj.items())[:EXAMPLES]]
        more = f", ... ({len(obj)} in all)" if len(obj) > EXAMPLES else ""
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
# Comparing a checkpoint's keys and shapes with a model's (used by detection and loading)


def state_shapes(state_dict: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def build_checked(arch: str, config: dict) -> nn.Module:
    try:
        return build(arch, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(e)) from None


def model_shapes(arch: str, config: dict) -> Shapes:
    with torch.device("meta"):
        return state_shapes(build_checked(arch, config).state_dict())


def shape_differences(checkpoint: Shapes, model: Shapes, shapes_only: bool = False) -> str:
    """A few lines listing missing keys, unexpected keys and shape differences ('' if none)."""
    lines = []
    if not shapes_only:
        missing = [k for k in model if k not in checkpoint]
        unexpected = [k for k in checkpoint if k not in model]
        if missing:
            lines.append(f"  {len(missing)} missing (in the model, not the checkpoint): {listing(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected (in the checkpoint, not the model): {listing(unexpected)}")
    resized = [f"{k}: {checkpoint[k]} vs {model[k]}" for k in model if k in checkpoint and checkpoint[k] != model[k]]
    if resized:
        lines.append(f"  {len(resized)} with another shape (checkpoint vs model): {listing(resized)}")
    return "\n".join(lines)


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return f"{shown} and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else shown


def describe_call(arch: str, config: dict) -> str:
    return f"{arch}({', '.join(f'{k}={v!r}' for k, v in config.items())})"
