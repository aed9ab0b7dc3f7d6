"""Running a restoration model on whole images: full image, overlapping tiles, or TLC.

The three modes users compare:

- ``full``: the model as trained, on the whole image (global ops see the whole frame).
- ``tiles``: the model on overlapping tiles about the training size, blended back (the usual
  workaround; costs extra compute in the overlaps and shows no long-range context).
- ``tlc``: the model converted by :func:`tlc.convert`, on the whole image.

Tiles are blended with weights that ramp linearly from 1/(overlap+1) to 1 across each overlap
(a feathered average), so every pixel's value is a convex combination of the tiles covering it
and the seams have no step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .ops._common import Pair, as_pair

MODES = ("full", "tiles", "tlc")


def final_output(output: object) -> torch.Tensor:
    """The restored image from a model's output: the tensor itself, or the last of a list/tuple
    (HINet returns [stage 1, final], MPRNet [final])."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[-1], torch.Tensor):
        return output[-1]
    raise TypeError(f"the model returned {type(output).__name__}, not an image tensor or a list ending in one")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``[0, size)`` with at least ``overlap``
    pixels shared between neighbours; the last tile ends at the border."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1-D blending weights of one tile: a linear ramp over ``overlap`` pixels on the sides that
    meet another tile, flat 1 elsewhere (and at the image border)."""
    weight = torch.ones(length, dtype=dtype, device=device)
    ramp = torch.arange(1, overlap + 1, dtype=dtype, device=device) / (overlap + 1)
    n = min(overlap, length)
    if not at_start and n:
        weight[:n] = torch.minimum(weight[:n], ramp[:n])
    if not at_end and n:
        weight[-n:] = torch.minimum(weight[-n:], ramp[:n].flip(0))
    return weight


def run_tiled(
    model: Callable[[torch.Tensor], object], image: torch.Tensor, tile: int | Pair = 256, overlap: int = 32
) -> torch.Tensor:
    """Restore ``image`` (N, C, H, W) tile by tile and blend the tiles (see the module docstring).

    Args:
        model: called on (N, C, th, tw) tiles; its :func:`final_output` is used.
        image: (N, C, H, W) input.
        tile: tile size (th, tw) in pixels, clamped to the image.
        overlap: pixels shared by neighbouring tiles, < tile.

    Returns:
        (N, C_out, H, W) tensor in float32 (or the input's dtype if float64).
    """
    th, tw = as_pair(tile, "tile")
    if overlap < 0 or overlap >= min(th, tw):
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap} for tile {(th, tw)}")
    n, _, h, w = image.shape
    th, tw = min(th, h), min(w, tw)
    rows, cols = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    acc_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    total = weight_sum = None
    for i in rows:
        wy = _ramp(th, overlap, i == 0, i + th == h, acc_dtype, image.device)
        for j in cols:
            wx = _ramp(tw, overlap, j == 0, j + tw == w, acc_dtype, image.device)
            out = final_output(model(image[:, :, i : i + th, j : j + tw])).to(acc_dtype)
            if total is None:
                total = image.new_zeros((n, out.shape[1], h, w), dtype=acc_dtype)
                weight_sum = image.new_zeros((1, 1, h, w), dtype=acc_dtype)
            weight = wy[:, None] * wx[None, :]
            total[:, :, i : i + th, j : j + tw] += out * weight
            weight_sum[:, :, i : i + th, j : j + tw] += weight
    return total / weight_sum


@dataclass(frozen=True)
class RunSettings:
    """How to run a model: mode, tiles, device and dtype (one CLI flag each).

    Attributes:
        mode: "full", "tiles" or "tlc".
        tile, overlap: tile size and overlap in pixels for mode "tiles".
        device: torch device string.
        dtype: "float32", "float16" or "bfloat16" for the model and input.
    """

    mode: str = "tlc"
    tile: int = 256
    overlap: int = 32
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def restore(model: nn.Module, image: torch.Tensor, settings: RunSettings = RunSettings()) -> torch.Tensor:
    """Run ``model`` (already converted for mode "tlc") on ``image`` under ``settings``.

    Args:
        model: a restoration network on ``settings.device`` in ``settings.dtype``.
        image: (N, C, H, W) float tensor in [0, 1], any device.

    Returns:
        (N, C_out, H, W) float32 tensor on the CPU, not clamped.
    """
    x = image.to(device=settings.device, dtype=settings.torch_dtype)
    with torch.inference_mode():
        if settings.mode == "tiles":
            out = run_tiled(model, x, settings.tile, settings.overlap)
        else:
            out = final_output(model(x))
    return out.float().cpu()
