"""Tiles whose cores partition an image, and running a model on them (tiled TLC).

:func:`plan_tiles` places the fewest tiles that fit a pixel budget, each with a context margin
(from :mod:`tlc.run.reach`); :func:`run_plan` runs a model tile by tile and keeps each tile's
core, so device memory is bounded by the tile, not the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._util import Hint, Pair, as_pair, final_output, hinted

def round_up(value: float, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (a hair under a multiple counts as it)."""
    return -(-math.ceil(value - 1e-9) // multiple) * multiple



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
    budget = check_megapixels(max_megapixels)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    margins = (margin, margin) if isinstance(margin, int) and not isinstance(margin, bool) else margin
    if not isinstance(margins, (tuple, list)) or len(margins) != 2 or any(
        isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in margins
    ):
        raise ValueError(f"margin must be an int >= 0 or a pair of them, got {margin!r}")
    mh, mw = (round_up(m, multiple) for m in margins)
    pixels = int(budget * 1e6)
    smallest = (_longest_tile_bound(height, -(-height // multiple), multiple, mh)
                * _longest_tile_bound(width, -(-width // multiple), multiple, mw))
    if smallest > pixels:
        raise hinted(ValueError, Hint(
            "plan_tiles", f"max_megapixels={budget:g}", "",
            f" is too small for a {height}x{width} image: a tile needs a core of {multiple} px plus margins of "
            f"{mh}x{mw} px, at least {smallest / 1e6:.3g} megapixels"))
    best: tuple[int, int, int, int] | None = None  # (tiles, pixels run, rows, cols)
    for rows in range(1, -(-height // multiple) + 1):
        if best is not None and rows > best[0]:
            break
        tallest = _longest_tile_bound(height, rows, multiple, mh)
        cols = _fewest_parts(width, multiple, mw, pixels // tallest)
        if cols is None:
            continue
        plan = grid_plan((height, width), (mh, mw), multiple, rows, cols)
        run = round(plan.overhead * height * width)
        if best is None or (rows * cols, run) < best[:2]:
            best = (rows * cols, run, rows, cols)
    assert best is not None  # the smallest cores fit (checked above)
    return grid_plan((height, width), (mh, mw), multiple, best[2], best[3])


def grid_plan(size: Pair, margin: Pair, multiple: int, rows: int, cols: int) -> TilePlan:
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


def check_megapixels(value: object) -> float:
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
