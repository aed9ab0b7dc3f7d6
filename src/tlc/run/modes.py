"""Running a restoration model on whole images: full image, overlapping tiles, or TLC.

The three modes users compare:

- ``full``: the model as trained, on the whole image (global ops see the whole frame).
- ``tiles``: the model on overlapping tiles about the training size, blended back (the usual
  workaround; costs extra compute in the overlaps and shows no long-range context).
- ``tlc``: the model converted by :func:`tlc.convert`, on the whole image.

Tiles are blended with weights that ramp linearly from 1/(overlap+1) to 1 across each overlap
(a feathered average), so every pixel's value is a convex combination of the tiles covering it
and the seams have no step.

Images larger than memory: ``RunSettings(mode="tlc", max_megapixels=N)`` runs the *converted*
model tile by tile, each tile with a context margin wide enough that its core matches the
whole-image TLC output (:mod:`tlc.run.reach` finds the margin, :mod:`tlc.run.plan` places and
runs the tiles; docs/huge-images.md has the rule and measured figures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._util import Pair, as_pair, final_output
from .plan import TilePlan, check_megapixels, plan_tiles, run_plan
from .reach import TileContext, tile_context

MODES = ("full", "tiles", "tlc")

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``[0, size)`` with at least ``overlap``
    pixels shared between neighbours; the last tile ends at the border."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def feather_weights(length: int, overlap: int, at_start: bool, at_end: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
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
        wy = feather_weights(th, overlap, i == 0, i + th == h, acc_dtype, image.device)
        for j in cols:
            wx = feather_weights(tw, overlap, j == 0, j + tw == w, acc_dtype, image.device)
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
        max_megapixels: mode "tlc" only: run the converted model tile by tile, no tile (margins
            included) over this many million pixels, reproducing the whole-image output (see
            :func:`plan_tiles`). None: the whole image at once. Modes "full" and "tiles" refuse it:
            "full" means the whole image in one pass, and "tiles" is already bounded by ``tile``.
        tile_margin: with ``max_megapixels``, the context in pixels kept each side of a tile;
            None: the model's own (:attr:`TileContext.margin`).
    """

    mode: str = "tlc"
    tile: int = 256
    overlap: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    max_megapixels: float | None = None
    tile_margin: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.max_megapixels is not None:
            check_megapixels(self.max_megapixels)
            if self.mode != "tlc":
                raise ValueError(
                    f"max_megapixels is for mode 'tlc' (tiles reproducing the whole-image TLC output); mode "
                    f"{self.mode!r} " + ("runs the whole image by definition" if self.mode == "full"
                                         else "is bounded by its tile size already")
                )
        if self.tile_margin is not None:
            if isinstance(self.tile_margin, bool) or not isinstance(self.tile_margin, int) or self.tile_margin < 0:
                raise ValueError(f"tile_margin must be an int >= 0 (pixels), got {self.tile_margin!r}")
            if self.max_megapixels is None:
                raise ValueError("tile_margin goes with max_megapixels (it sets the tiles' context)")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def restore(
    model: nn.Module, image: torch.Tensor, settings: RunSettings = RunSettings(), context: TileContext | None = None
) -> torch.Tensor:
    """Run ``model`` (already converted for mode "tlc") on ``image`` under ``settings``.

    With ``settings.max_megapixels`` the converted model runs tile by tile (:func:`model_tile_plan`,
    :func:`run_plan`); the image stays where it is and one tile at a time goes to the device.

    Args:
        model: a restoration network on ``settings.device`` in ``settings.dtype``.
        image: (N, C, H, W) float tensor in [0, 1], any device.
        context: with ``settings.max_megapixels``, the model's :func:`tile_context`; computing it
            runs probe forwards, so a caller restoring many images computes it once and passes it.
            None: computed for this call.

    Returns:
        (N, C_out, H, W) float32 tensor on the CPU, not clamped.
    """
    if settings.max_megapixels is not None:
        plan = model_tile_plan(
            model, tuple(image.shape[-2:]), settings.max_megapixels, margin=settings.tile_margin, context=context
        )
        with torch.inference_mode():
            out = run_plan(model, image, plan, settings.device, settings.torch_dtype)
        return out.float().cpu()
    x = image.to(device=settings.device, dtype=settings.torch_dtype)
    with torch.inference_mode():
        if settings.mode == "tiles":
            out = run_tiled(model, x, settings.tile, settings.overlap)
        else:
            out = final_output(model(x))
    return out.float().cpu()


def model_tile_plan(
    model: nn.Module,
    image_size: Pair,
    max_megapixels: float,
    *,
    margin: int | Pair | None = None,
    context: TileContext | None = None,
) -> TilePlan:
    """The tile plan :func:`restore` uses for ``model`` on an image of ``image_size`` (H, W).

    ``context`` (from :func:`tile_context`, which runs probe forwards: compute it once per model
    and pass it to every call) gives the tiles' alignment and, unless ``margin`` (pixels each
    side) overrides it, their margin; None measures it now.
    """
    context = tile_context(model) if context is None else context
    return plan_tiles(image_size, max_megapixels, context.margin if margin is None else margin, context.multiple)
