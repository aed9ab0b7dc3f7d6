"""Full, tiled and TLC runs: tiles cover the image, blending is exact for local models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tlc
from tlc.inference import RunSettings, final_output, restore, run_tiled, tile_starts


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
