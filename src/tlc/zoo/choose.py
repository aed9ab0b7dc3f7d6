"""Choosing a model and its TLC sizes from what a user names: a registry entry, a checkpoint file,
or both (the command line's --model / --weights / --train-size / --base-size)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from .._util import Pair, default_base_size
from ..archs import build
from . import registry
from .download import cached_weights
from .load import load_model

DEFAULT_TRAIN_SIZE: Pair = (256, 256)  # for a bare checkpoint file, which does not say its crop


@dataclass(frozen=True)
class ChosenModel:
    """A loaded model (eval mode, float32, CPU) with what TLC needs to convert it.

    Attributes:
        model: the network.
        description: the registry name or the weights path, for reports.
        train_size: (H, W) of the training crop in pixels.
        base_size: (H, W) of the local window in image pixels.
    """

    model: nn.Module
    description: str
    train_size: Pair
    base_size: Pair


def choose_model(
    name: str | None = None,
    weights: str | os.PathLike | None = None,
    *,
    train_size: Pair | None = None,
    base_size: Pair | None = None,
    need_weights: bool = True,
    strict: bool = True,
    key: str | None = None,
) -> ChosenModel:
    """Load the model a registry ``name`` and/or a ``weights`` file name, with its TLC sizes.

    Sizes: ``train_size`` if given, else the registry entry's, else :data:`DEFAULT_TRAIN_SIZE`;
    ``base_size`` if given, else the entry's paper setting (only when the training size is the
    entry's own), else 1.5x the training size. A registry model's weights that are not at hand
    are downloaded into the cache (:func:`load_model`); without ``need_weights`` such a model is
    built with random weights instead (enough to inspect its structure). ``strict`` is
    :func:`load_model`'s: False allows missing and unexpected checkpoint keys; ``key``, also
    :func:`load_model`'s, names the checkpoint's entry holding the state_dict.

    Raises:
        KeyError: ``name`` is not in the registry (the message suggests close names).
        ValueError: neither ``name`` nor ``weights`` given.
        CheckpointError: the weights cannot be read or do not fit, or (DownloadError) cannot be
            downloaded.
    """
    if name:
        entry = registry.get(name)
        if weights is None and cached_weights(entry) is None and not need_weights:
            model, description = build(entry.arch, **entry.config).eval(), f"{entry.name} (random weights)"
        else:
            model, description = load_model(entry.name, weights=weights, strict=strict, key=key), entry.name
        train = train_size or entry.train_size
        base = base_size or (entry.base_size if train_size is None else None)
    elif weights is not None:
        model, description = load_model(weights, strict=strict, key=key), str(weights)
        train, base = train_size or DEFAULT_TRAIN_SIZE, base_size
    else:
        raise ValueError("say which model: a registry name, a weights file, or both")
    return ChosenModel(model, description, train, base or default_base_size(train))
