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
whole-image TLC output (:func:`tile_context` measures the margin, :func:`plan_tiles` places the
tiles, :func:`run_plan` runs them; docs/huge-images.md has the rule and measured figures).
"""

from __future__ import annotations

import math
import weakref
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
            _check_megapixels(self.max_megapixels)
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


def restore(model: nn.Module, image: torch.Tensor, settings: RunSettings = RunSettings()) -> torch.Tensor:
    """Run ``model`` (already converted for mode "tlc") on ``image`` under ``settings``.

    With ``settings.max_megapixels`` the converted model runs tile by tile (:func:`model_tile_plan`,
    :func:`run_plan`); the image stays where it is and one tile at a time goes to the device.

    Args:
        model: a restoration network on ``settings.device`` in ``settings.dtype``.
        image: (N, C, H, W) float tensor in [0, 1], any device.

    Returns:
        (N, C_out, H, W) float32 tensor on the CPU, not clamped.
    """
    if settings.max_megapixels is not None:
        plan = model_tile_plan(model, tuple(image.shape[-2:]), settings.max_megapixels, margin=settings.tile_margin)
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


# ----------------------------------------------------------------------------------------------
# Tiled TLC: a converted model run tile by tile, reproducing its whole-image output.
#
# A TLC-converted model's output at a pixel depends on the input within a bounded distance (its
# *reach*): every local window adds about half a window (the window is centred on the pixel), every
# convolution its kernel radius, both scaled by the feature level's stride. A tile that keeps a
# margin of that reach around its core computes the core exactly as the whole-image run does:
# windows near the tile's edge are clamped to the tile, but those pixels lie in the margin and are
# thrown away. Tiles start on the model's downsampling grid so their feature maps line up with the
# whole image's, and the cores partition the image, so no blending is needed.


@dataclass(frozen=True)
class TileContext:
    """How much context a converted model needs around a tile, in image pixels per axis (H, W).

    Attributes:
        margin: the margin :func:`restore` uses each side: the larger of ``rule_margin`` and
            ``measured_margin``, at most ``exact_margin``.
        rule_margin: the largest single window's reach plus all the convolutions' reach.
        measured_margin: where this model's own seam error falls below ``target_psnr``
            (:func:`tile_context`); None when not measured.
        exact_margin: the reach of every window and convolution added up: an upper bound on the
            dependency radius, past which tiles reproduce the whole-image output to float
            rounding. Far larger than needed for deep networks.
        window_reach: the largest single window's reach.
        windows_reach: all windows' reaches added up.
        conv_reach: all convolutions', pools' and resamplings' reaches added up.
        multiple: tiles start at multiples of this (the model's padding factor and downsampling
            factor), so feature grids align with the whole image's. Every margin is rounded up
            to it.
        grid_windows: the model has window ops placed on a grid that depends on the map size
            (Restormer's transposed attention) or approximate ``fast`` pooling: tiles then
            approximate the whole-image output instead of reproducing it.
        target_psnr: the seam error the measurement aimed at, dB (None: not measured).
        converged: False when the seam error was still above the target at the largest margin
            measured (2x ``rule_margin``, at most ``exact_margin``); the margin is then that largest.
    """

    margin: Pair
    rule_margin: Pair
    measured_margin: Pair | None
    exact_margin: Pair
    window_reach: Pair
    windows_reach: Pair
    conv_reach: Pair
    multiple: int
    grid_windows: bool = False
    target_psnr: float | None = None
    converged: bool = True


def _round_up(value: float, multiple: int) -> int:
    return -(-math.ceil(value - 1e-9) // multiple) * multiple


def _int_attr(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)  # type: ignore[call-overload]


def _conv_like_reach(module: nn.Module, s_in: tuple[float, float]) -> tuple[float, float]:
    """Image-pixel reach of one call of a convolution, pooling or resampling layer (per axis).

    The farthest input pixel centre a kernel touches, from the centre of the region its output
    pixel stands for, times the stride of the finer of the two maps. A resampling layer reaches one
    pixel of its coarser map.
    """
    if isinstance(module, nn.PixelUnshuffle):
        return s_in[0] * module.downscale_factor, s_in[1] * module.downscale_factor
    if isinstance(module, (nn.PixelShuffle, nn.Upsample)):
        return s_in
    k, stride = _int_attr(module.kernel_size), _int_attr(module.stride or module.kernel_size)
    dilation = _int_attr(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):
        padding = tuple(0 if padding == "valid" else (kk - 1) * d // 2 for kk, d in zip(k, dilation))
    p = _int_attr(padding)
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    reach = []
    for axis in range(2):
        span, offset = (k[axis] - 1) * dilation[axis], p[axis] + (stride[axis] - 1) / 2
        finer = s_in[axis] / stride[axis] if transposed else s_in[axis]
        reach.append(max(offset, span - offset) * finer)
    return reach[0], reach[1]


def _window_module(module: nn.Module) -> tuple[Pair, bool] | None:
    """(window in feature pixels, centred on each pixel?) of a TLC local op, else None."""
    from .local_attention import LocalTransposedAttention
    from .nn import LocalAvgPool2d, LocalPooledSequential

    if isinstance(module, LocalPooledSequential):
        return module[0].window, not module[0].fast
    if isinstance(module, LocalTransposedAttention):
        return module.local_window, False  # grid windows: a pixel's windows may extend a whole window
    if isinstance(module, LocalAvgPool2d):
        return module.window, not module.fast
    window = getattr(module, "window", None)
    if isinstance(window, tuple) and len(window) == 2 and all(isinstance(v, int) for v in window):
        return window, True  # LocalInstanceNorm2d, LocalGroupNorm and custom local ops
    return None


_CONV_LIKE = (nn.modules.conv._ConvNd, nn.MaxPool2d, nn.AvgPool2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample)


def tile_context(
    model: nn.Module, *, probe_size: int = 64, in_channels: int | None = None, target_psnr: float | None = 70.0
) -> TileContext:
    """Measure how much context a (TLC-converted) model needs around a tile.

    One forward at ``probe_size`` x ``probe_size`` (no grad, eval mode, the model's device and
    dtype; train/eval flags restored) records the feature size at every local window op and every
    convolution, pooling and resampling layer, giving each one's stride s (image pixels per feature
    pixel). A centred window of k feature pixels reaches ``(k // 2 + 1) * s`` image pixels past the
    pixel it serves (a grid-placed one, e.g. Restormer's attention, ``k * s``); a kxk convolution
    with padding p about ``max(p, k - 1 - p) * s``. The rule margin is the largest window's reach
    plus all the convolutions' reach; the exact bound adds up every reach.

    Errors past the rule margin decay at a rate that depends on the weights (instance norms after
    every convolution decay slowest), so with ``target_psnr`` the seam error is also measured:
    two forwards on a photograph-like probe strip (:func:`probe_image`, 64 x 6 rule margins),
    whole and cut, give the error at every distance from the cut; the margin is where it stays
    below the target (measured along the width, and along the height too for models whose
    structure differs by axis).
    See :class:`TileContext` for how they combine.

    Args:
        model: the converted model (a model without local ops gets the convolutions' reach only).
        probe_size: side of the probe input in pixels, a multiple of the model's downsampling
            (64 suits every bundled and released architecture; the probe's cost grows with it).
        in_channels: channels of the probe input; default that of the model's first conv.
        target_psnr: the largest RMS seam error allowed in any line of a tile's core, as a PSNR
            in dB for images on [0, 1] (70: 3.2e-4); None: the rule margin only, no measurement.

    Returns:
        :class:`TileContext` in image pixels.
    """
    from .convert import _calibrate

    windowed: dict[int, tuple[Pair, bool]] = {}
    skip: set[int] = set()
    for module in model.modules():
        if id(module) in skip:
            continue
        found = _window_module(module)
        if found is not None:
            windowed[id(module)] = found
            if module.__class__.__name__ == "LocalPooledSequential":
                skip.update(id(m) for m in module.modules())  # its pool's window is the container's
    targets = [m for m in model.modules() if id(m) in windowed or (isinstance(m, _CONV_LIKE) and id(m) not in skip)]
    x, _, seen, _ = _calibrate(model, targets, (probe_size, probe_size), in_channels)
    multiple = 1
    padder = getattr(model, "padder_size", None)
    if isinstance(padder, int) and padder > 0:
        multiple = padder
    window_reach = [0.0, 0.0]
    windows_reach = [0.0, 0.0]
    conv_reach = [0.0, 0.0]
    grid = False
    for module in targets:
        for shape in seen[id(module)]:
            if len(shape) != 4:
                continue
            s_in = (probe_size / shape[-2], probe_size / shape[-1])
            for s in s_in:  # the downsampling factor: tiles must start on the coarsest grid
                if s > 1 and abs(s - round(s)) < 1e-9:
                    multiple = math.lcm(multiple, round(s))
            if id(module) in windowed:
                window, centred = windowed[id(module)]
                grid = grid or not centred
                for axis in range(2):
                    # Not clamped to the probe's map: on larger tiles the whole window applies.
                    k = window[axis]
                    reach = ((k // 2 + 1) if centred else k) * s_in[axis]
                    window_reach[axis] = max(window_reach[axis], reach)
                    windows_reach[axis] += reach
            else:
                reach = _conv_like_reach(module, s_in)
                conv_reach[0] += reach[0]
                conv_reach[1] += reach[1]

    def pair(values: list[float]) -> Pair:
        return _round_up(values[0], multiple), _round_up(values[1], multiple)

    rule = pair([window_reach[a] + conv_reach[a] for a in range(2)])
    exact = pair([windows_reach[a] + conv_reach[a] for a in range(2)])
    measured, converged = None, True
    if target_psnr is not None and rule != exact:  # rule == exact: nothing left to measure
        # Along the width; along the height too only where the structure differs by axis.
        axes = (1,) if rule[0] == rule[1] and exact[0] == exact[1] else (0, 1)
        found = {axis: _measured_margin(model, x, axis, rule[axis], exact[axis], multiple, target_psnr) for axis in axes}
        measured = (found[axes[0]][0], found[1][0])
        converged = all(ok for _, ok in found.values())
    margin = rule if measured is None else tuple(min(exact[a], max(rule[a], measured[a])) for a in range(2))
    return TileContext(
        margin=margin,  # type: ignore[arg-type]
        rule_margin=rule,
        measured_margin=measured,
        exact_margin=exact,
        window_reach=pair(window_reach),
        windows_reach=pair(windows_reach),
        conv_reach=pair(conv_reach),
        multiple=multiple,
        grid_windows=grid,
        target_psnr=target_psnr if measured is not None else None,
        converged=converged,
    )


def probe_image(size: Pair, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A deterministic photograph-like test image: (1, channels, H, W) in [0, 1].

    Smooth structure at about 64, 16 and 4 pixels (bilinear upsampling of random grids) plus
    Gaussian noise of std 0.1 (about 25 on 0..255), clipped.
    """
    h, w = as_pair(size, "size")
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, channels, h, w)
    for scale, amplitude in ((64, 0.5), (16, 0.3), (4, 0.2)):
        grid = torch.rand(1, channels, h // scale + 2, w // scale + 2, generator=generator)
        image += amplitude * torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    image += 0.1 * torch.randn(1, channels, h, w, generator=generator)
    return image.clamp_(0, 1)


def _measured_margin(
    model: nn.Module, like: torch.Tensor, axis: int, rule: int, exact: int, multiple: int, target_psnr: float
) -> tuple[int, bool]:
    """The margin past which cutting a probe changes the model's output by less than the target.

    A strip of :func:`probe_image`, ``3 * d`` pixels long along ``axis`` (d = 2x ``rule``, at most
    ``exact``) and 64 across, is run whole and cut at ``2 * d``; the RMS difference of the outputs
    in each line within d of the cut, at each distance from it, is the seam error a tile edge
    leaves there. (Lines nearer the strip's own far end are not measured: a pixel near a border
    has its window shifted inwards, towards the cut, which would stand for a tile narrower than
    any the planner makes.) Returns (the largest distance still above the target, rounded up to
    ``multiple``; whether the error fell below the target within d). Half-precision models are
    measured in a float32 copy, so the profile is the model's, not its rounding's.
    """
    import copy

    from .convert import _calibrating

    reach = min(exact, _round_up(max(2 * rule, 8 * multiple), multiple))
    across = _round_up(64, multiple)
    size = [across, across]
    size[axis] = 3 * reach
    probe = probe_image(tuple(size), like.shape[1]).to(like.device)
    net = model
    if like.dtype not in (torch.float32, torch.float64):
        net = copy.deepcopy(model).float()
    probe = probe.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    dim = 2 + axis
    with _calibrating(net), torch.inference_mode():
        whole = final_output(net(probe)).narrow(dim, reach, reach)
        cut = final_output(net(probe.narrow(dim, 0, 2 * reach))).narrow(dim, reach, reach)
    other = tuple(d for d in range(4) if d != dim)
    error = (cut.double() - whole.double()).square().mean(dim=other).sqrt()  # (reach,): at distance reach - i
    above = torch.nonzero(error > 10 ** (-target_psnr / 20)).flatten()
    if above.numel() == 0:
        return 0, True
    farthest = reach - int(above.min())  # distance from the cut of the farthest line still above the target
    return min(_round_up(farthest, multiple), reach), farthest < reach


@dataclass(frozen=True)
class Tile:
    """One tile: the model runs on ``rows`` x ``cols`` of the input and its output is kept on
    ``core_rows`` x ``core_cols`` (image coordinates, inside the former)."""

    rows: slice
    cols: slice
    core_rows: slice
    core_cols: slice

    @property
    def size(self) -> Pair:
        """(H, W) of the region the model runs on, margins included, in pixels."""
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


@dataclass(frozen=True)
class TilePlan:
    """Tiles whose cores partition an image, each run with ``margin`` pixels of context.

    Attributes:
        image_size: (H, W) in pixels.
        margin: context kept each side of a core, (H, W) in pixels (less at the image border).
        multiple: cores and tiles start at multiples of this.
        grid: (rows, columns) of tiles.
        tiles: row-major.
    """

    image_size: Pair
    margin: Pair
    multiple: int
    grid: Pair
    tiles: tuple[Tile, ...]

    @property
    def largest_tile(self) -> Pair:
        """(H, W) of the tallest and the widest tile, margins included (one tile is both)."""
        return max(t.size[0] for t in self.tiles), max(t.size[1] for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Pixels run through the model over pixels in the image (1.0: no overlap)."""
        return sum(t.size[0] * t.size[1] for t in self.tiles) / (self.image_size[0] * self.image_size[1])

    def __str__(self) -> str:
        h, w = self.largest_tile
        return (f"{self.grid[0]}x{self.grid[1]} tiles of at most {h}x{w} px (margin {self.margin[0]}x{self.margin[1]} px), "
                f"{self.overhead:.2f}x the image's pixels")


def _boundaries(length: int, parts: int, multiple: int) -> list[int]:
    """Core boundaries splitting ``[0, length)`` into ``parts`` near-equal runs of whole blocks of
    ``multiple`` pixels (the last block may be partial)."""
    units = -(-length // multiple)
    return [min(length, ((2 * i * units + parts) // (2 * parts)) * multiple) for i in range(parts + 1)]


def _longest_tile_bound(length: int, parts: int, multiple: int, margin: int) -> int:
    """An upper bound on the longest tile (core plus margins) when ``length`` is cut in ``parts``."""
    if parts == 1:
        return length
    units = -(-length // multiple)
    core = -(-units // parts) * multiple
    return min(length, core + margin * (1 if parts == 2 else 2))


def _fewest_parts(length: int, multiple: int, margin: int, max_tile: int) -> int | None:
    """The fewest parts whose tile-length bound is at most ``max_tile``, or None."""
    units = -(-length // multiple)
    for parts in (1, 2):
        if parts <= units and _longest_tile_bound(length, parts, multiple, margin) <= max_tile:
            return parts
    blocks = (max_tile - 2 * margin) // multiple  # largest core, in blocks, that fits with two margins
    if blocks < 1 or units < 3:
        return None
    parts = max(3, -(-units // blocks))
    return parts if parts <= units else None


def plan_tiles(image_size: Pair, max_megapixels: float, margin: int | Pair, multiple: int = 1) -> TilePlan:
    """The fewest tiles covering an image whose every tile, margins included, fits a pixel budget.

    Cores split each axis into near-equal runs of whole ``multiple``-pixel blocks and partition the
    image; each tile adds ``margin`` pixels of context on every side that meets another tile
    (rounded up to a multiple of ``multiple``, clamped to the image). Among grids with the fewest
    tiles the one running the fewest pixels wins. An image within the budget is one tile.

    Args:
        image_size: (H, W) in pixels.
        max_megapixels: most pixels (in millions) one tile may hold, margins included.
        margin: context each side in pixels, an int or (H, W); see :func:`tile_context`.
        multiple: tiles start at multiples of this (the model's padding/downsampling factor).

    Returns:
        :class:`TilePlan`.

    Raises:
        ValueError: bad arguments, or a budget too small for even the smallest core with its
            margins (the message says the least budget that works).
    """
    height, width = as_pair(image_size, "image_size")
    budget = _check_megapixels(max_megapixels)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    margins = (margin, margin) if isinstance(margin, int) and not isinstance(margin, bool) else margin
    if not isinstance(margins, (tuple, list)) or len(margins) != 2 or any(
        isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in margins
    ):
        raise ValueError(f"margin must be an int >= 0 or a pair of them, got {margin!r}")
    mh, mw = (_round_up(m, multiple) for m in margins)
    pixels = int(budget * 1e6)
    smallest = (_longest_tile_bound(height, -(-height // multiple), multiple, mh)
                * _longest_tile_bound(width, -(-width // multiple), multiple, mw))
    if smallest > pixels:
        raise ValueError(
            f"max_megapixels={budget:g} is too small for a {height}x{width} image: a tile needs a core of "
            f"{multiple} px plus margins of {mh}x{mw} px, at least {smallest / 1e6:.3g} megapixels"
        )
    best: tuple[int, int, int, int] | None = None  # (tiles, pixels run, rows, cols)
    for rows in range(1, -(-height // multiple) + 1):
        if best is not None and rows > best[0]:
            break
        tallest = _longest_tile_bound(height, rows, multiple, mh)
        cols = _fewest_parts(width, multiple, mw, pixels // tallest)
        if cols is None:
            continue
        plan = _grid_plan((height, width), (mh, mw), multiple, rows, cols)
        run = round(plan.overhead * height * width)
        if best is None or (rows * cols, run) < best[:2]:
            best = (rows * cols, run, rows, cols)
    assert best is not None  # the smallest cores fit (checked above)
    return _grid_plan((height, width), (mh, mw), multiple, best[2], best[3])


def _grid_plan(size: Pair, margin: Pair, multiple: int, rows: int, cols: int) -> TilePlan:
    row_cuts, col_cuts = _boundaries(size[0], rows, multiple), _boundaries(size[1], cols, multiple)
    tiles = []
    for r0, r1 in zip(row_cuts, row_cuts[1:]):
        for c0, c1 in zip(col_cuts, col_cuts[1:]):
            tiles.append(Tile(
                rows=slice(max(0, r0 - margin[0]), min(size[0], r1 + margin[0])),
                cols=slice(max(0, c0 - margin[1]), min(size[1], c1 + margin[1])),
                core_rows=slice(r0, r1),
                core_cols=slice(c0, c1),
            ))
    return TilePlan(size, margin, multiple, (rows, cols), tuple(tiles))


def _check_megapixels(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"max_megapixels must be a positive number of megapixels, got {value!r}")
    return float(value)


def run_plan(
    model: Callable[[torch.Tensor], object],
    image: torch.Tensor,
    plan: TilePlan,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``model`` on each tile of ``plan`` and assemble the tiles' cores.

    Only one tile at a time is moved to ``device`` (the image stays where it is), so device memory
    is bounded by the tile, not the image; the output is assembled on ``image``'s device.

    Args:
        model: called on (N, C, th, tw) tiles; its :func:`final_output` is used.
        image: (N, C, H, W) input, H x W = ``plan.image_size``.
        plan: from :func:`plan_tiles`.
        device, dtype: where and in what dtype the model runs (default: the image's).

    Returns:
        (N, C_out, H, W) float32 tensor (float64 for a float64 image) on ``image``'s device.
    """
    if image.dim() != 4 or tuple(image.shape[-2:]) != tuple(plan.image_size):
        raise ValueError(f"the plan is for (N, C, {plan.image_size[0]}, {plan.image_size[1]}) images, got {tuple(image.shape)}")
    out_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    result = None
    for tile in plan.tiles:
        crop = image[:, :, tile.rows, tile.cols].to(device=device or image.device, dtype=dtype or image.dtype)
        out = final_output(model(crop))
        if tuple(out.shape[-2:]) != tuple(crop.shape[-2:]):
            raise ValueError(f"the model returned {tuple(out.shape[-2:])} for a {tuple(crop.shape[-2:])} tile; "
                             "tiling needs outputs the size of the input")
        if result is None:
            result = torch.empty((image.shape[0], out.shape[1], *plan.image_size), dtype=out_dtype, device=image.device)
        top, left = tile.core_rows.start - tile.rows.start, tile.core_cols.start - tile.cols.start
        core = out[:, :, top : top + tile.core_rows.stop - tile.core_rows.start,
                   left : left + tile.core_cols.stop - tile.core_cols.start]
        result[:, :, tile.core_rows, tile.core_cols] = core.to(device=image.device, dtype=out_dtype)
    return result


_CONTEXTS: weakref.WeakKeyDictionary[nn.Module, TileContext] = weakref.WeakKeyDictionary()


def model_tile_context(model: nn.Module) -> TileContext:
    """:func:`tile_context` of ``model`` with the defaults, measured once per model (cached while
    the model lives)."""
    context = _CONTEXTS.get(model)
    if context is None:
        context = _CONTEXTS[model] = tile_context(model)
    return context


def model_tile_plan(
    model: nn.Module, image_size: Pair, max_megapixels: float, *, margin: int | Pair | None = None
) -> TilePlan:
    """The tile plan :func:`restore` uses for ``model`` on an image of ``image_size`` (H, W).

    The model's :func:`model_tile_context` gives the tiles' alignment and, unless ``margin``
    (pixels each side) overrides it, their margin.
    """
    context = model_tile_context(model)
    return plan_tiles(image_size, max_megapixels, context.margin if margin is None else margin, context.multiple)
