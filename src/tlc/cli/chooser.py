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
