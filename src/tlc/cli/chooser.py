"""The model a command's flags name, loaded and converted for each mode (restore, eval, inspect,
export share it). The choice itself is :func:`tlc.zoo.choose_model`."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace

import torch
from torch import nn

from ..convert import convert
from ..eval.ablation import ablation_mode
from ..zoo import ChosenModel, choose_model
from .common import UsageError, resolve_base_size


def chosen_model(args: argparse.Namespace, need_weights: bool = True, several_bases: bool = False) -> ChosenModel:
    """Load the model --model / --weights name, with TLC sizes from the flags or the registry (the
    first --base-size value when ``several_bases``: see :func:`base_sizes`)."""
    if not args.model and args.weights is None:
        raise UsageError("say which model: --model NAME (with --weights PATH) or --weights PATH")
    specs = args.base_size or []
    if len(specs) > 1 and not several_bases:
        raise UsageError("several --base-size values are for `tlc eval`, which scores each (a window ablation)")
    first = specs[0] if specs else None
    try:
        chosen = choose_model(args.model, args.weights, train_size=args.train_size,
                              base_size=first if first is not None and len(first) == 2 else None,
                              need_weights=need_weights, strict=args.strict, key=args.checkpoint_key)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    if first is not None and len(first) == 1:
        chosen = replace(chosen, base_size=resolve_base_size(first, chosen.train_size))
    return chosen


def base_sizes(args: argparse.Namespace, chosen: ChosenModel) -> list[tuple[int, int]]:
    """Every --base-size value in pixels, in order, without repeats (the chosen model's own base
    size when the flag is absent)."""
    if not args.base_size:
        return [chosen.base_size]
    return list(dict.fromkeys(resolve_base_size(spec, chosen.train_size) for spec in args.base_size))


def models_for(
    chosen: ChosenModel, modes: list[str], device: str, dtype: str, fast: bool, functional: bool = True,
    bases: list[tuple[int, int]] | None = None,
) -> tuple[dict[str, nn.Module], str]:
    """mode -> model on the device in the dtype (the TLC one converted), and the report line.

    With several ``bases`` (a window ablation) the TLC mode is one converted model per base size,
    under the modes :func:`tlc.eval.ablation_mode` names ("tlc@384", ...)."""
    model = chosen.model.to(device=device, dtype=getattr(torch, dtype))
    per_mode: dict[str, nn.Module] = {m: model for m in modes if m != "tlc"}
    report = ""
    if "tlc" in modes:
        several = bases is not None and len(bases) > 1
        for base in bases if several else [chosen.base_size]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a model without global ops: the report says so
                local, conversion = convert(model, chosen.train_size, base, fast=fast, functional=functional)
            per_mode[ablation_mode(base) if several else "tlc"] = local
        sites = sum(1 for site in conversion.call_sites if site.window is not None) if functional else 0
        shown = ", ".join(f"{b[0]}x{b[1]}" for b in bases) if several else f"{chosen.base_size[0]}x{chosen.base_size[1]}"
        report = (f"TLC: {len(conversion.converted) + sites} global ops made local "
                  f"(train {chosen.train_size[0]}x{chosen.train_size[1]}, base {shown})")
    return per_mode, report


def model_input_channels(model: nn.Module) -> int | None:
    """Input channels of ``model``: those of its first convolution (the input projection of every
    network in the registry), or None without one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def check_channels(chosen: ChosenModel, channels: int, source: str = "") -> None:
    """A one-line UsageError when the model takes dual-pixel input (6 channels) and the input is
    one RGB image, or the other way round; ``source`` names what feeds ``channels``."""
    expected = model_input_channels(chosen.model)
    if expected is None or expected == channels or 6 not in (expected, channels):
        return
    if expected == 6:
        raise UsageError(f"{chosen.description} takes 6 channels (left and right dual-pixel views), not one RGB image: "
                         "use --benchmark dpdd-dual on a DPDD folder with inputL/ and inputR/, or "
                         "`tlc restore --dual LEFT RIGHT`")
    raise UsageError(f"{chosen.description} takes {expected} channels (one RGB image) but {source or 'the input'} "
                     "feeds 6 (left and right views): use --benchmark dpdd (inputC/), or a dual-pixel model such as "
                     "restormer-dpdd-dual")
