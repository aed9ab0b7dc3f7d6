"""The model a command's flags name, loaded and converted for each mode (restore, eval, inspect,
export share it). The choice itself is :func:`tlc.zoo.choose_model`."""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from ..convert import convert
from ..zoo import ChosenModel, choose_model
from .common import UsageError


def chosen_model(args: argparse.Namespace, need_weights: bool = True) -> ChosenModel:
    """Load the model --model / --weights name, with TLC sizes from the flags or the registry."""
    if not args.model and args.weights is None:
        raise UsageError("say which model: --model NAME (with --weights PATH) or --weights PATH")
    try:
        return choose_model(args.model, args.weights, train_size=args.train_size, base_size=args.base_size,
                            need_weights=need_weights, strict=args.strict, key=args.checkpoint_key)
    except KeyError as err:
        raise UsageError(err.args[0]) from None


def models_for(
    chosen: ChosenModel, modes: list[str], device: str, dtype: str, fast: bool, functional: bool = True
) -> tuple[dict[str, nn.Module], str]:
    """mode -> model on the device in the dtype (the TLC one converted), and the report line."""
    model = chosen.model.to(device=device, dtype=getattr(torch, dtype))
    per_mode: dict[str, nn.Module] = {m: model for m in modes if m != "tlc"}
    report = ""
    if "tlc" in modes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a model without global ops: the report says so
            per_mode["tlc"], conversion = convert(
                model, chosen.train_size, chosen.base_size, fast=fast, functional=functional
            )
        sites = sum(1 for site in conversion.call_sites if site.window is not None) if functional else 0
        report = (f"TLC: {len(conversion.converted) + sites} global ops made local "
                  f"(train {chosen.train_size[0]}x{chosen.train_size[1]}, base {chosen.base_size[0]}x{chosen.base_size[1]})")
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
