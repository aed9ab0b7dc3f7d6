"""Full, tiled and TLC runs: tiles cover the image, the feathered blend is the hand-computed one, and
blending is exact for local models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tlc
from tlc.run import RunSettings, final_output, restore, run_tiled, tile_starts


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (32, 32, 8), (20, 32, 8), (257, 256, 32), (1000, 256, 0)])
def test_tiles_cover_the_axis_with_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    k = min(tile, size)
    assert starts[0] == 0 and starts[-1] + k == size
    assert all(b - a <= k - overlap for a, b in zip(starts, starts[1:]))


def test_pointwise_model_tiles_equal_full():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, 3, 1)).eval()
    x = torch.rand(2, 3, 70, 101)
    with torch.no_grad():
        torch.testing.assert_close(run_tiled(model, x, tile=32, overlap=8), model(x))


def test_blend_is_convex_and_seamless_for_a_constant_per_tile_model():
    # A model returning each tile's mean: the blend stays within the range of the tile means.
    def tile_mean(t):
        return t.mean(dim=(2, 3), keepdim=True).expand_as(t)

    x = torch.rand(1, 1, 64, 64)
    out = run_tiled(tile_mean, x, tile=32, overlap=16)
    assert out.min() >= x.min() and out.max() <= x.max()


def seamed(t: torch.Tensor) -> torch.Tensor:
    """A model whose tiles disagree: the input plus its tile's mean per channel (a seam wherever
    two tiles meet, unless the blend feathers it)."""
    return t + 3 * t.mean(dim=(2, 3), keepdim=True)


def feathered_blend(x: np.ndarray, starts: tuple[list[int], list[int]], tile: tuple[int, int], overlap: int) -> np.ndarray:
    """Brute force, pixel by pixel: each tile's output weighted by min(1, (d + 1) / (overlap + 1)),
    d the distance in pixels to the tile's edges that meet another tile (rows and columns each),
    summed over the tiles covering the pixel and normalised."""
    n, c, h, w = x.shape
    total, weights = np.zeros((n, c, h, w)), np.zeros((h, w))
    for i in starts[0]:
        for j in starts[1]:
            crop = x[:, :, i : i + tile[0], j : j + tile[1]]
            out = crop + 3 * crop.mean(axis=(2, 3), keepdims=True)
            for r in range(tile[0]):
                for q in range(tile[1]):
                    wy = min(1.0, (r + 1) / (overlap + 1) if i > 0 else 1.0, (tile[0] - r) / (overlap + 1) if i + tile[0] < h else 1.0)
                    wx = min(1.0, (q + 1) / (overlap + 1) if j > 0 else 1.0, (tile[1] - q) / (overlap + 1) if j + tile[1] < w else 1.0)
                    total[:, :, i + r, j + q] += wy * wx * out[:, :, r, q]
                    weights[i + r, j + q] += wy * wx
    return total / weights


def test_tiles_mode_is_the_hand_computed_feathered_blend_with_non_square_tiles():
    # 37 x 53 in tiles of 16 x 24, overlap 5: rows start at 0, 11, 21 (stride 11, the last tile
    # flush with the border), columns at 0, 19, 29 (stride 19).
    x = torch.rand(2, 3, 37, 53, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x += torch.linspace(0, 2, 53, dtype=torch.float64) + torch.linspace(0, 3, 37, dtype=torch.float64)[:, None]
    expected = feathered_blend(x.numpy(), ([0, 11, 21], [0, 19, 29]), (16, 24), 5)
    out = run_tiled(seamed, x, tile=(16, 24), overlap=5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    unfeathered = feathered_blend(x.numpy(), ([0, 11, 21], [0, 19, 29]), (16, 24), 0)
    assert float(np.abs(expected - unfeathered).max()) > 0.3  # the tiles disagree: feathering matters here
    # The same through restore's tiles mode (square tiles of 16 on a non-square image, float32).
    squares = feathered_blend(x.numpy(), ([0, 11, 21], [0, 11, 22, 33, 37]), (16, 16), 5)
    out = restore(seamed, x.float(), RunSettings(mode="tiles", tile=16, overlap=5))
    np.testing.assert_allclose(out.numpy(), squares, rtol=0, atol=1e-5)


def test_global_model_tiles_differ_from_full():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    x = torch.rand(1, 3, 64, 64)

    def net(t):
        return t * model(t)

    assert (run_tiled(net, x, tile=32, overlap=8) - net(x)).abs().max() > 1e-3


def test_final_output_picks_the_last_image():
    a, b = torch.zeros(1), torch.ones(1)
    assert final_output([a, b]) is b and final_output(a) is a
    with pytest.raises(TypeError):
        final_output({"out": a})


def test_restore_modes_and_dtypes():
    torch.manual_seed(0)
    model = tlc.archs.build("NAFNet", width=8, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    local, _ = tlc.convert(model, train_size=32)
    x = torch.rand(1, 3, 48, 80)
    full = restore(model, x, RunSettings(mode="full"))
    assert full.dtype == torch.float32 and full.shape == x.shape
    tiles = restore(model, x, RunSettings(mode="tiles", tile=32, overlap=8))
    assert tiles.shape == x.shape
    half = restore(local.to(torch.bfloat16), x, RunSettings(mode="tlc", dtype="bfloat16"))
    assert half.dtype == torch.float32 and (half - restore(local.float(), x)).abs().max() < 0.05


def test_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        RunSettings(mode="global")
    with pytest.raises(ValueError, match="dtype"):
        RunSettings(dtype="int8")
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(lambda t: t, torch.rand(1, 1, 8, 8), tile=4, overlap=4)
