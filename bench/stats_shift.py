"""The statistics shift TLC removes, seen in one channel-attention layer of a tiny trained model.

A global average pool gives one mean per channel. In training every value came from a 48x48 crop
with ONE noise level, so channels that track the noise level tell the next layer how strongly to
denoise. On a whole photograph whose noise varies (here: left half sigma 5, right half 50) the
pool averages both halves into one value: as a number it may look ordinary, but it is the same
for both halves and right for neither. TLC replaces the global mean by a local one over a window
1.5x the crop, so each part of the image gets a value like those of training crops of its noise.

For one pooling layer (default: NAFNet's middle block, ``middle_blks.0.sca.0``) this collects

- training crops: pooled means over ``--crops`` random crops of the TRAIN pool, one sigma per crop
  uniform in the card's range (as in training), with their sigma;
- full images: pooled means of the whole TEST photographs under the degradations of
  bench/study.py (same seeds as its full-size cases);
- TLC: the local means of the converted op's input on the same whole images, one per window
  position inside the feature map (``tlc.local_mean`` with the window tlc.convert chose);

and writes ``bench/results/stats_shift.png``: (1) every channel, each value as a z-score against
its channel's training values (the marginal distributions); (2) the channels that track the noise
level best in training (largest |correlation| with sigma): training crops of sigma < 10 and > 40,
TLC's local means over the left (sigma 5) and right (sigma 50) halves of the step images, and
the whole-image means of those images (one red line each). It prints mean / std summaries and a
noise "readout": (value - training mean at low sigma) / (training mean at high - at low), 0 for
a value like a low-noise crop, 1 like a high-noise one, averaged over those channels.

    python bench/stats_shift.py
    python bench/stats_shift.py --model tiny-unet-se --layer middle.4.pool
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_tiny.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import DEGRADATIONS, VARYING  # noqa: E402
from train_tiny import TEST_IMAGES, TRAIN_IMAGES, WEIGHTS, CropSampler, load_photo, load_trained  # noqa: E402

import tlc  # noqa: E402
from tlc.synth import degrade  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Recorder:
    """Forward hook keeping the (N, C, h, w) output of one module as (values, C) float64 rows."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[np.ndarray] = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.keep(output)

    def keep(self, maps: torch.Tensor) -> None:
        c = maps.shape[1]
        self.rows.append(maps.detach().double().permute(0, 2, 3, 1).reshape(-1, c).numpy())

    def take(self) -> np.ndarray:
        out = np.concatenate(self.rows) if self.rows else np.zeros((0, 0))
        self.rows = []
        return out


class LocalRecorder(Recorder):
    """Forward pre-hook on the converted op: the local means TLC computes from the op's input,
    ``tlc.local_mean(x, window)``, at every position where the window lies inside the map."""

    def __init__(self, module: torch.nn.Module, window: tuple[int, int]) -> None:
        self.rows, self.maps = [], []
        self.window = window
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module: torch.nn.Module, inputs: tuple) -> None:  # type: ignore[override]
        x = inputs[0]
        kh, kw = min(self.window[0], x.shape[-2]), min(self.window[1], x.shape[-1])
        means = tlc.local_mean(x, (kh, kw))
        # Drop the edge-replicated border: one value per window position inside the map. Valid
        # position j covers feature columns [j, j + kw).
        valid = means[..., (kh - 1) // 2 : x.shape[-2] - kh // 2, (kw - 1) // 2 : x.shape[-1] - kw // 2]
        self.maps.append((valid.detach().double().numpy(), (kh, kw), tuple(x.shape[-2:])))
        self.keep(valid)

    def take_maps(self) -> list[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
        out, self.maps = self.maps, []
        return out


def describe(name: str, values: np.ndarray, mu: np.ndarray, sd: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    z = (values - mu) / sd
    outside = float(np.mean((values < lo) | (values > hi)))
    return (f"  {name:<36} {values.shape[0]:>7} values/channel  mean z {z.mean():+6.2f}  std z {z.std():5.2f}  "
            f"outside training 1-99%: {100 * outside:5.1f} %")


def halves(maps: list, image_widths: list[int], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Local means of windows lying wholly left / wholly right of the image's centre column.

    ``stride``: image pixels per feature pixel at the layer.
    """
    left, right = [], []
    for (valid, (_, kw), _), width in zip(maps, image_widths):
        c = valid.shape[1]
        starts = np.arange(valid.shape[-1]) * stride  # image column where each window starts
        ends = starts + kw * stride
        flat = lambda m: m.transpose(0, 2, 3, 1).reshape(-1, c)  # noqa: E731
        left.append(flat(valid[..., ends <= width / 2]))
        right.append(flat(valid[..., starts >= width / 2]))
    return np.concatenate(left), np.concatenate(right)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-nafnet", help="trained model name (default tiny-nafnet)")
    parser.add_argument("--layer", default="middle_blks.0.sca.0", help="path of the nn.AdaptiveAvgPool2d(1) to study")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="folder of the trained models")
    parser.add_argument("--crops", type=int, default=1024, help="training crops to sample (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and degradations (default 0, as study.py)")
    parser.add_argument("--channels", type=int, default=5, help="noise-tracking channels to plot and summarise (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "stats_shift.png", help="output PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    model, card = load_trained(args.model, args.weights)
    crop = card["train_size"][0]
    pool = model.get_submodule(args.layer)
    if not isinstance(pool, torch.nn.AdaptiveAvgPool2d):
        parser.error(f"{args.layer} is a {type(pool).__name__}, not nn.AdaptiveAvgPool2d")
    converted, report = tlc.convert(model, train_size=(crop, crop))
    # The converted op is the pool itself or a module starting with it (pool + pointwise layers):
    # either way its input is the pool's input.
    op, path = next((op, p) for op in report.converted for p in op.paths if args.layer == p or args.layer.startswith(p + "."))
    window, stride = op.window, crop // op.feature_size[1]
    rec_global, rec_local = Recorder(pool), LocalRecorder(converted.get_submodule(path), window)

    # Training crops (one sigma per crop), as train_tiny.py draws them.
    low_sigma, high_sigma = card["task"]["sigma_range"]
    sampler = CropSampler([load_photo(n) for n in TRAIN_IMAGES], crop, high_sigma, np.random.default_rng([args.seed, 7]), sigma_min=low_sigma)
    sigmas = []
    with torch.inference_mode():
        for _ in range(args.crops // 32):
            _, noisy, s = sampler.batch(32)
            model(noisy)
            sigmas.append(s)
    train, sigmas = rec_global.take(), np.concatenate(sigmas)

    # Whole TEST photographs, with the seeds of study.py's full-size cases (size index 4).
    full, tlc_local, step_maps, widths = {}, {}, [], []
    with torch.inference_mode():
        for d_index, (d_name, degradation) in enumerate(DEGRADATIONS.items()):
            for i, name in enumerate(TEST_IMAGES):
                clean = load_photo(name)
                noisy, _ = degrade(clean, degradation, args.seed + 10007 * i + 101 * d_index + 4)
                x = torch.from_numpy(noisy).permute(2, 0, 1)[None].contiguous()
                model(x)
                converted(x)
                if d_name == "step":
                    widths.append(x.shape[-1])
            full[d_name], tlc_local[d_name] = rec_global.take(), rec_local.take()
            maps = rec_local.take_maps()
            if d_name == "step":
                step_maps = maps
    tlc_left, tlc_right = halves(step_maps, widths, stride)

    mu, sd = train.mean(0), train.std(0) + 1e-12
    lo, hi = np.percentile(train, 1, axis=0), np.percentile(train, 99, axis=0)
    full_varying = np.concatenate([full[d] for d in VARYING])
    tlc_varying = np.concatenate([tlc_local[d] for d in VARYING])
    print(f"{args.model} layer {args.layer}: {train.shape[1]} channels; training crop {crop}; feature stride {stride}; "
          f"TLC window {window[0]}x{window[1]} feature pixels")
    print("Marginal distributions (z: value minus its channel's training mean, over its training std; all channels pooled):")
    print(describe(f"training crops ({crop}x{crop})", train, mu, sd, lo, hi))
    print(describe("full images, varying noise", full_varying, mu, sd, lo, hi))
    print(describe("TLC local means, varying noise", tlc_varying, mu, sd, lo, hi))
    print(describe("full images, uniform sigma 25", full["uniform"], mu, sd, lo, hi))
    print(describe("TLC local means, uniform sigma 25", tlc_local["uniform"], mu, sd, lo, hi))

    # Channels that track the noise level in training.
    corr = np.array([np.corrcoef(train[:, c], sigmas)[0, 1] for c in range(train.shape[1])])
    channels = np.argsort(-np.abs(np.nan_to_num(corr)))[: args.channels]
    low, high = sigmas < 10, sigmas > 40
    m_low, m_high = train[low].mean(0), train[high].mean(0)
    readout = lambda v: float(np.mean((v[:, channels].mean(0) - m_low[channels]) / (m_high[channels] - m_low[channels])))  # noqa: E731
    print(f"Noise readout over the {args.channels} channels most correlated with sigma in training "
          f"(|r| {', '.join(f'{abs(corr[c]):.2f}' for c in channels)}): 0 = like training crops of sigma < 10, 1 = like sigma > 40")
    print(f"  training crops sigma < 10 / > 40       {readout(train[low]):5.2f} / {readout(train[high]):5.2f}")
    print(f"  step images, whole-image means          {readout(full['step']):5.2f}  (the same value for both halves)")
    print(f"  step images, TLC left (5) / right (50)  {readout(tlc_left):5.2f} / {readout(tlc_right):5.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = -(-(1 + len(channels)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    axes = axes.ravel()
    z = lambda v: ((v - mu) / sd).ravel()  # noqa: E731
    bins = np.linspace(-6, 6, 81)
    for label, values, colour in [("training crops", train, "0.4"), ("full images (varying noise)", full_varying, "C3"),
                                  ("TLC local means (varying noise)", tlc_varying, "C2")]:
        axes[0].hist(np.clip(z(values), -6, 6), bins=bins, density=True, histtype="step", lw=1.6, color=colour, label=label)
    axes[0].set_title("all channels: z-score vs the channel's training values", fontsize=9)
    axes[0].set_xlabel("z (clipped to +-6)")
    axes[0].legend(fontsize=7, loc="upper left")
    for ax, c in zip(axes[1:], channels):
        groups = [("training, sigma < 10", train[low, c], "0.65", "-"), ("training, sigma > 40", train[high, c], "0.2", "-"),
                  ("TLC, step left (sigma 5)", tlc_left[:, c], "#74c476", "-"), ("TLC, step right (sigma 50)", tlc_right[:, c], "#006d2c", "-")]
        lo_c = min(g[1].min() for g in groups)
        hi_c = max(g[1].max() for g in groups)
        b = np.linspace(lo_c, hi_c, 50)
        for label, values, colour, ls in groups:
            ax.hist(values, bins=b, density=True, histtype="step", lw=1.6, color=colour, linestyle=ls, label=label)
        for k, v in enumerate(full["step"][:, c]):  # one whole-image value per step image
            ax.axvline(v, color="C3", lw=1.2, alpha=0.9, label="whole image (step)" if k == 0 else None)
        ax.set_title(f"channel {c} (r with sigma {corr[c]:+.2f})", fontsize=9)
        ax.set_xlabel("pooled mean")
        if c == channels[0]:
            ax.legend(fontsize=6)
    for ax in axes[1 + len(channels):]:
        ax.axis("off")
    fig.suptitle(f"{args.model}, {args.layer}: global-pool means of training crops ({crop}x{crop}, one sigma each) vs whole test "
                 f"photographs (sigma 5..50 over the frame)\nvs TLC's local means (window {window[0]}x{window[1]} feature pixels)",
                 fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
