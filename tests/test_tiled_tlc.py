"""Tiled TLC: a converted model run tile by tile reproduces its whole-image output."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tlc
from tlc import io as tlc_io
from tlc.cli import main
from tlc.run import (
    RunSettings,
    TilePlan,
    model_tile_plan,
    plan_tiles,
    probe_image,
    restore,
    run_plan,
    tile_context,
)
from tlc.nn import LocalAvgPool2d


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images on [0, 1] (inf when equal)."""
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def convert(model: nn.Module, train: int, base: int | None = None) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tlc.convert(model, train, base)[0]


@pytest.fixture(scope="module")
def small_nafnet() -> nn.Module:
    """A two-level NAFNet with perturbed weights (a fresh one is the identity), converted at 16 px."""
    torch.manual_seed(0)
    model = tlc.archs.build("NAFNet", width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return convert(model.eval(), 16, 24)


@pytest.fixture(scope="module")
def noisy_photo() -> torch.Tensor:
    """(2, 3, 301, 447): two noisy crops of scikit-image's coffee (odd sizes, batch of two)."""
    from tlc.demo import photograph
    from tlc.synth import add_noise

    image = add_noise(photograph("coffee"), 25.0, np.random.default_rng(0))  # 400 x 600
    x = torch.from_numpy(image).permute(2, 0, 1)
    return torch.stack([x[:, :301, :447], x[:, 99:, 153:]]).contiguous()


def check_partition(plan: TilePlan, budget_px: int) -> None:
    """Cores cover every pixel once, tiles hold their cores plus the margins, all on the grid."""
    h, w = plan.image_size
    count = np.zeros((h, w), dtype=np.int64)
    for tile in plan.tiles:
        count[tile.core_rows, tile.core_cols] += 1
        assert tile.size[0] * tile.size[1] <= budget_px
        for region, core, margin, length in (
            (tile.rows, tile.core_rows, plan.margin[0], h),
            (tile.cols, tile.core_cols, plan.margin[1], w),
        ):
            assert core.start < core.stop
            assert region.start == max(0, core.start - margin) and region.stop == min(length, core.stop + margin)
            assert region.start % plan.multiple == 0 and core.start % plan.multiple == 0
    assert (count == 1).all()
    assert len(plan.tiles) == plan.grid[0] * plan.grid[1]


# ----------------------------------------------------------------------------------------------
# The plan


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (203, 317), (64, 64), (2160, 3840)])
@pytest.mark.parametrize("megapixels,margin,multiple", [(0.05, 0, 1), (0.05, 5, 4), (0.2, (12, 30), 8), (1.0, 88, 16)])
def test_plan_partitions_the_image_within_the_budget(size, megapixels, margin, multiple):
    plan = plan_tiles(size, megapixels, margin, multiple)
    assert plan.margin == tuple(-(-m // multiple) * multiple for m in ((margin, margin) if isinstance(margin, int) else margin))
    check_partition(plan, int(megapixels * 1e6))


def test_plan_uses_the_fewest_tiles_and_one_tile_when_the_image_fits():
    assert len(plan_tiles((2160, 3840), 8.3, 100, 8).tiles) == 1  # 8.29 MP fits as it is
    quarter = plan_tiles((2160, 3840), 2160 * 3840 / 4 / 1e6, 0, 8)  # no margin: exactly four tiles
    assert len(quarter.tiles) == 4 and quarter.overhead == 1.0
    plan = plan_tiles((100, 300), 100 * 158 / 1e6, 8, 1)  # half the width plus one margin each
    assert plan.grid == (1, 2) and plan.largest_tile == (100, 158)
    # Margins cost pixels: the overhead is the run pixels over the image's.
    plan = plan_tiles((2160, 3840), 1.0, 88, 8)
    run = sum(t.size[0] * t.size[1] for t in plan.tiles)
    assert plan.overhead == pytest.approx(run / (2160 * 3840)) and 1 < plan.overhead < 2


@pytest.mark.parametrize(
    "args,message",
    [
        (((100, 100), 0, 8), "max_megapixels must be a positive"),
        (((100, 100), -1.0, 8), "max_megapixels must be a positive"),
        (((100, 100), float("nan"), 8), "max_megapixels must be a positive"),
        (((100, 100), float("inf"), 8), "max_megapixels must be a positive"),
        (((100, 100), True, 8), "max_megapixels must be a positive"),
        (((100, 100), "2", 8), "max_megapixels must be a positive"),
        (((100, 100), 1.0, -3), "margin must be"),
        (((100, 100), 1.0, (3, 2, 1)), "margin must be"),
        (((100, 100), 1.0, 2.5), "margin must be"),
        (((0, 100), 1.0, 8), "image_size"),
        (((400, 600), 0.01, 96), "at least 0.04 megapixels"),  # (8 + 2 x 96) px squared
    ],
)
def test_plan_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        plan_tiles(*args, multiple=8)


def test_plan_rejects_a_bad_multiple():
    with pytest.raises(ValueError, match="multiple"):
        plan_tiles((100, 100), 1.0, 8, 0)


# ----------------------------------------------------------------------------------------------
# The margin rule


def test_context_of_a_known_model_and_exactness_at_its_margin():
    # conv 2x2/2 (reach 0.5) -> local pool of 4 feature px at stride 2 (reach (2 + 1) * 2 = 6)
    # -> transposed conv 2x2/2 (0.5): 7 px, rounded up to the stride 2: 8.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 2, stride=2), LocalAvgPool2d(4), nn.ConvTranspose2d(6, 3, 2, stride=2)).eval()
    context = tile_context(model)
    assert context.multiple == 2 and context.window_reach == (6, 6) and context.conv_reach == (2, 2)
    assert context.margin == context.rule_margin == context.exact_margin == (8, 8)
    assert context.measured_margin is None  # one window: the rule is exact, nothing to measure
    x = torch.rand(2, 3, 62, 94)  # the model does not pad: even sizes
    with torch.no_grad():
        whole = model(x)
        plan = plan_tiles((62, 94), 0.0012, context.margin, context.multiple)
        assert len(plan.tiles) >= 4
        torch.testing.assert_close(run_plan(model, x, plan), whole, atol=1e-6, rtol=0)
        # With a quarter of the context the windows next to the seams change.
        short = plan_tiles((62, 94), 0.0012, 2, context.multiple)
        assert (run_plan(model, x, short) - whole).abs().max() > 1e-3


def test_the_plan_follows_the_model_as_it_is_now_or_the_context_the_caller_holds():
    # No cache keyed by the model: a window changed in place changes the next plan's margin.
    model = nn.Sequential(nn.Conv2d(3, 6, 2, stride=2), LocalAvgPool2d(4), nn.ConvTranspose2d(6, 3, 2, stride=2)).eval()
    held = tile_context(model)
    assert model_tile_plan(model, (62, 94), 0.0012).margin == held.margin == (8, 8)
    model[1] = LocalAvgPool2d(8)  # reach (4 + 1) * 2 = 10, plus the convolutions' 1: 11, rounded up to 12
    assert model_tile_plan(model, (62, 94), 0.0012).margin == (12, 12)
    assert model_tile_plan(model, (62, 94), 0.0012, context=held).margin == (8, 8)
    x = torch.rand(1, 3, 62, 94)
    settings = RunSettings(max_megapixels=0.0012)
    assert torch.equal(restore(model, x, settings, tile_context(model)), restore(model, x, settings))


def test_context_adds_windows_for_the_exact_bound_and_flags_grid_windows():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), LocalAvgPool2d(9), LocalAvgPool2d((5, 11)), nn.Conv2d(3, 3, 3, padding=1))
    context = tile_context(model)
    assert context.window_reach == (5, 6) and context.windows_reach == (8, 11) and context.conv_reach == (2, 2)
    assert context.rule_margin == (7, 8) and context.exact_margin == (10, 13) and not context.grid_windows
    assert context.measured_margin is not None and context.target_psnr == 70.0
    assert all(context.rule_margin[a] <= context.margin[a] <= context.exact_margin[a] for a in range(2))
    assert tile_context(model, target_psnr=None).margin == (7, 8)
    restormer = convert(
        tlc.archs.build("Restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4]), 32
    )
    assert tile_context(restormer).grid_windows


def test_exact_margin_reproduces_whole_image_tlc(small_nafnet):
    context = tile_context(small_nafnet)
    assert context.multiple == 4
    x = torch.rand(2, 3, 203, 317)
    with torch.no_grad():
        whole = small_nafnet(x)
        plan = plan_tiles((203, 317), 0.05, context.exact_margin, context.multiple)
        assert len(plan.tiles) >= 4
        torch.testing.assert_close(run_plan(small_nafnet, x, plan), whole, atol=1e-5, rtol=0)
        # Cores off the model's 4-px grid: feature pixels no longer line up with the whole image's.
        unaligned = plan_tiles((203, 317), 0.05, context.exact_margin, 1)
        assert any(t.core_rows.start % 4 or t.core_cols.start % 4 for t in unaligned.tiles)
        assert (run_plan(small_nafnet, x, unaligned) - whole).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# restore() with max_megapixels


def test_bundled_nafnet_tiles_match_whole_image_tlc(noisy_photo):
    model = convert(tlc.load_model("tiny-nafnet"), 48, 72)
    whole = restore(model, noisy_photo)
    settings = RunSettings(max_megapixels=0.08)
    plan = model_tile_plan(model, (301, 447), 0.08)
    assert plan.grid == (2, 2) and plan.margin == tile_context(model).margin
    tiled = restore(model, noisy_photo, settings)
    assert tiled.shape == whole.shape == (2, 3, 301, 447)
    assert psnr(tiled, whole) >= 50  # measured 109 dB
    # Without the margin the seams show: the rule is what buys the match.
    seamed = restore(model, noisy_photo, RunSettings(max_megapixels=0.08, tile_margin=0))
    assert psnr(seamed, whole) < psnr(tiled, whole) - 20


def test_measured_margin_covers_slowly_decaying_instance_norms(noisy_photo):
    # tiny-unet-in normalises after each of its 14 convolutions: seam errors outlive the rule margin.
    model = convert(tlc.load_model("tiny-unet-in"), 48, 72)
    context = tile_context(model)
    assert context.margin[1] > context.rule_margin[1]
    whole = restore(model, noisy_photo)
    tiled = restore(model, noisy_photo, RunSettings(max_megapixels=0.13))
    rule_only = restore(model, noisy_photo, RunSettings(max_megapixels=0.13, tile_margin=context.rule_margin[1]))
    assert psnr(tiled, whole) >= 50  # measured 83.5 dB
    assert psnr(tiled, whole) > psnr(rule_only, whole) + 15  # rule only: 60 dB, a visible seam (max 0.07)


def test_probe_image_is_deterministic_and_in_range():
    a, b = probe_image((37, 91), 3), probe_image((37, 91), 3)
    assert a.shape == (1, 3, 37, 91) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and 0.05 < a.std() < 0.4
    assert not torch.equal(a, probe_image((37, 91), 3, seed=1))


def test_bundled_hinet_tiles_match_whole_image_tlc(noisy_photo):
    model = convert(tlc.load_model("tiny-hinet"), 48, 72)
    x = noisy_photo[:, :, :173, :291]
    whole = restore(model, x)
    plan = model_tile_plan(model, (173, 291), 0.045)
    assert plan.grid == (1, 2)
    assert psnr(restore(model, x, RunSettings(max_megapixels=0.045)), whole) >= 50  # measured 98 dB


def test_image_within_the_budget_is_run_whole(small_nafnet):
    x = torch.rand(2, 3, 37, 53)
    assert torch.equal(restore(small_nafnet, x, RunSettings(max_megapixels=0.01)), restore(small_nafnet, x))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(max_megapixels=0), "positive"),
        (dict(max_megapixels=-2.0), "positive"),
        (dict(max_megapixels=float("nan")), "positive"),
        (dict(max_megapixels="4"), "positive"),
        (dict(mode="full", max_megapixels=4), "whole image"),
        (dict(mode="tiles", max_megapixels=4), "tile size"),
        (dict(tile_margin=8), "goes with max_megapixels"),
        (dict(max_megapixels=4, tile_margin=-1), "tile_margin"),
        (dict(max_megapixels=4, tile_margin=2.5), "tile_margin"),
    ],
)
def test_settings_reject_bad_tiling(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**kwargs)


def test_run_plan_checks_sizes():
    plan = plan_tiles((40, 40), 0.001, 4, 1)
    with pytest.raises(ValueError, match="plan is for"):
        run_plan(nn.Identity(), torch.rand(1, 3, 40, 41), plan)
    with pytest.raises(ValueError, match="outputs the size of the input"):
        run_plan(lambda t: t[:, :, 1:], torch.rand(1, 3, 40, 40), plan)


# ----------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory, noisy_photo):
    path = tmp_path_factory.mktemp("tiled") / "in" / "coffee.png"
    tlc_io.write_image(path, noisy_photo[0, :, :240, :331].permute(1, 2, 0).numpy())
    return path


def test_cli_max_megapixels_matches_the_whole_image(photo_png, tmp_path, capsys):
    common = ("restore", str(photo_png), "--model", "tiny-nafnet", "--device", "cpu")
    assert main([*common, "-o", str(tmp_path / "whole")]) == 0
    assert main([*common, "-o", str(tmp_path / "tiled"), "--max-megapixels", "0.06"]) == 0
    assert "2x2 tiles" in capsys.readouterr().err
    whole = tlc_io.read_image(tmp_path / "whole" / "coffee.png").pixels
    tiled = tlc_io.read_image(tmp_path / "tiled" / "coffee.png").pixels
    assert np.abs(whole - tiled).max() <= 1 / 255 + 1e-6  # at most one rounding step
    assert (whole == tiled).mean() > 0.999


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--max-megapixels", "0"], "--max-megapixels must be a positive"),
        (["--max-megapixels", "abc"], "--max-megapixels must be a positive"),
        (["--max-megapixels", "nan"], "--max-megapixels must be a positive"),
        (["--max-megapixels", "2", "--mode", "full"], "--mode full"),
        (["--max-megapixels", "2", "--mode", "tiles"], "--mode tiles"),
        (["--max-megapixels", "2", "--tile-margin", "-4"], "--tile-margin must be"),
        (["--tile-margin", "16"], "--tile-margin goes with --max-megapixels"),
    ],
)
def test_cli_rejects_bad_tiling_flags(photo_png, tmp_path, capsys, flags, message):
    code = main(["restore", str(photo_png), "-o", str(tmp_path / "out"), "--model", "tiny-nafnet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tlc: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_budget_too_small_fails_that_file_only(photo_png, tmp_path, capsys):
    code = main(["restore", str(photo_png), "-o", str(tmp_path / "out"), "--model", "tiny-nafnet", "--device", "cpu",
                 "--max-megapixels", "0.001"])
    err = capsys.readouterr().err
    assert code == 1 and "coffee.png" in err and "too small" in err
    assert not (tmp_path / "out" / "coffee.png").exists()
