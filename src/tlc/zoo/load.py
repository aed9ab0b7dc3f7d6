"""Ready models from the registry or a checkpoint file: built, loaded strictly, in eval mode.

    model = load_model("NAFNet-GoPro-width64.pth")        # built, loaded strictly, in eval mode
    model = load_model("nafnet-gopro-width64")            # registry entry: weights downloaded once
    model = load_model("nafnet-gopro-width64", weights="NAFNet-GoPro-width64.pth")  # a file at hand

A registry entry's own ``checkpoint_key`` is tried before the usual container keys.
"""

from __future__ import annotations

import os
import re
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from .._util import Hint, hinted
from . import registry
from .checkpoints import (
    CheckpointError,
    StateDict,
    build_checked,
    describe_call,
    read_state_dict,
    shape_differences,
    state_shapes,
)
from .detect import detect
from .download import ensure_weights

def load_model(
    source: str | os.PathLike,
    arch: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    strict: bool = True,
    download: bool = True,
    key: str | None = None,
    **config: object,
) -> nn.Module:
    """A network with its checkpoint loaded, in eval mode, float32, on the CPU.

    ``source`` is a registry name (:func:`tlc.models.get`) or the path of a checkpoint file. For a
    registry name, ``weights`` is a file at hand; without it the entry's bundled or cached weights
    are used, downloaded into the cache first where needed (:func:`tlc.zoo.download.ensure_weights`:
    progress bar, resume, checked before it is kept); with ``download=False`` (or ``TLC_OFFLINE=1``)
    a missing file raises :class:`DownloadError` naming the addresses and the cache path.

    For a path, ``arch`` and ``config`` build the network as :func:`tlc.archs.build` does; without ``arch`` it is detected (:func:`detect`) and ``config``
    overrides the detected values (e.g. ``padder_size``). For a registry name, ``config`` overrides
    the entry's config.

    ``key`` names the checkpoint's entry holding the state_dict (default: found, as
    :func:`read_state_dict` does).

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
        return _load_entry(entry, Path(weights), arch, strict, key, config)
    if Path(source).exists():
        return _load_path(Path(source), arch, strict, key, config)
    if entry is None:
        problem = f"{str(source)!r} is neither an existing checkpoint file nor a registry name"
        if unknown != _LIST_THEM:
            raise CheckpointError(f"{problem}{unknown}")
        raise hinted(CheckpointError, Hint("load_model", "tlc.models.list()", f"{problem} (see ", ")"))
    return _load_entry(entry, ensure_weights(entry, download=download), arch, strict, key, config)


_LIST_THEM = " (see tlc.models.list())"


def _lookup(name: str) -> tuple[registry.ModelEntry | None, str]:
    """The registry entry called ``name``, or None and a hint naming close registry names."""
    try:
        return registry.get(name), ""
    except KeyError as e:
        close = re.search(r"did you mean [^?]*\?", str(e.args[0]))
        return None, f"; {close.group(0)}" if close else _LIST_THEM


def _load_entry(
    entry: registry.ModelEntry, weights: Path, arch: str | None, strict: bool, key: str | None, config: dict
) -> nn.Module:
    if arch is not None and arch.lower() != entry.arch.lower():
        raise CheckpointError(f"{entry.name} is a {entry.arch}, not a {arch}; leave arch out for registry names")
    state_dict = read_state_dict(weights, key=key, prefer=(entry.checkpoint_key,))
    return _instantiate(entry.arch, {**entry.config, **config}, state_dict, strict, weights)


def _load_path(path: Path, arch: str | None, strict: bool, key: str | None, config: dict) -> nn.Module:
    state_dict = read_state_dict(path, key=key)
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
        model = build_checked(arch, config)
    found, expected = state_shapes(state_dict), state_shapes(model.state_dict())
    problems = shape_differences(found, expected, shapes_only=not strict)
    if problems:
        problem = f"{path} does not fit {describe_call(arch, config)}{hint}"
        if strict and not shape_differences(found, expected, shapes_only=True):
            # Only keys differ: a non-strict load would take it.
            raise hinted(CheckpointError, Hint(
                "load_model", "strict=False", f"{problem} (pass ",
                " to load it anyway: missing weights keep their initial values, unexpected ones are "
                f"ignored):\n{problems}"))
        raise CheckpointError(f"{problem}:\n{problems}")
    # Fresh copies, like a normally built model's: safetensors hands out unaligned views into one
    # buffer, on which CPU convolutions pick other kernels and results differ in the last bits.
    dtype = torch.get_default_dtype()
    state_dict = {k: v.to(dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state_dict.items()}
    if strict:
        model.load_state_dict(state_dict, strict=True, assign=True)
        if not any(t.is_meta for t in chain(model.parameters(), model.buffers())):
            return model.eval()
    # Some values are not in the checkpoint: start from a normally initialised model.
    model = build_checked(arch, config)
    model.load_state_dict(state_dict, strict=strict)
    return model.eval()
