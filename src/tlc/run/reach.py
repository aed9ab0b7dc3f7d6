"""How much context a TLC-converted model needs around a tile (its receptive-field reach).

A TLC-converted model's output at a pixel depends on the input within a bounded distance (its
*reach*): every local window adds about half a window (the window is centred on the pixel), every
convolution its kernel radius, both scaled by the feature level's stride. A tile that keeps a
margin of that reach around its core computes the core exactly as the whole-image run does:
windows near the tile's edge are clamped to the tile, but those pixels lie in the margin and are
thrown away. Tiles start on the model's downsampling grid so their feature maps line up with the
whole image's, and the cores partition the image, so no blending is needed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._util import Pair, as_pair, final_output
from .plan import round_up

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
    from ..nn import LocalAvgPool2d, LocalPooledSequential, LocalTransposedAttention

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


def _probe_targets(model: nn.Module) -> tuple[list[nn.Module], dict[int, tuple[Pair, bool]]]:
    """The modules whose feature sizes the probe records (local window ops, then convolution-like
    layers), and each window op's (window, centred?) by module id."""
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
    return targets, windowed


class _Reach:
    """Reaches in image pixels per axis (H, W), added up over the probe's calls of each module."""

    def __init__(self, multiple: int) -> None:
        self.multiple = multiple
        self.window = [0.0, 0.0]  # the largest single window's
        self.windows = [0.0, 0.0]  # all windows' added up
        self.conv = [0.0, 0.0]  # all convolution-like layers' added up
        self.grid = False

    def add(self, module: nn.Module, window: tuple[Pair, bool] | None, s_in: tuple[float, float]) -> None:
        """One call of ``module`` on a map whose pixel stands for ``s_in`` image pixels."""
        for s in s_in:  # the downsampling factor: tiles must start on the coarsest grid
            if s > 1 and abs(s - round(s)) < 1e-9:
                self.multiple = math.lcm(self.multiple, round(s))
        if window is None:
            reach = _conv_like_reach(module, s_in)
            self.conv = [self.conv[0] + reach[0], self.conv[1] + reach[1]]
            return
        size, centred = window
        self.grid = self.grid or not centred
        for axis in range(2):
            # Not clamped to the probe's map: on larger tiles the whole window applies.
            k = size[axis]
            reach = ((k // 2 + 1) if centred else k) * s_in[axis]
            self.window[axis] = max(self.window[axis], reach)
            self.windows[axis] += reach


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
    from ..convert import calibrate

    targets, windowed = _probe_targets(model)
    x, _, seen, _ = calibrate(model, targets, (probe_size, probe_size), in_channels)
    padder = getattr(model, "padder_size", None)
    multiple = padder if isinstance(padder, int) and padder > 0 else 1
    reach = _Reach(multiple)
    for module in targets:
        for shape in seen[id(module)]:
            if len(shape) == 4:
                reach.add(module, windowed.get(id(module)), (probe_size / shape[-2], probe_size / shape[-1]))
    multiple, window_reach, windows_reach, conv_reach = reach.multiple, reach.window, reach.windows, reach.conv

    def pair(values: list[float]) -> Pair:
        return round_up(values[0], multiple), round_up(values[1], multiple)

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
        grid_windows=reach.grid,
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
    from ..convert import calibrating

    reach = min(exact, round_up(max(2 * rule, 8 * multiple), multiple))
    across = round_up(64, multiple)
    size = [across, across]
    size[axis] = 3 * reach
    probe = probe_image(tuple(size), like.shape[1]).to(like.device)
    net = model
    if like.dtype not in (torch.float32, torch.float64):
        net = copy.deepcopy(model).float()
    probe = probe.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    dim = 2 + axis
    with calibrating(net), torch.inference_mode():
        whole = final_output(net(probe)).narrow(dim, reach, reach)
        cut = final_output(net(probe.narrow(dim, 0, 2 * reach))).narrow(dim, reach, reach)
    other = tuple(d for d in range(4) if d != dim)
    error = (cut.double() - whole.double()).square().mean(dim=other).sqrt()  # (reach,): at distance reach - i
    above = torch.nonzero(error > 10 ** (-target_psnr / 20)).flatten()
    if above.numel() == 0:
        return 0, True
    farthest = reach - int(above.min())  # distance from the cut of the farthest line still above the target
    return min(round_up(farthest, multiple), reach), farthest < reach
