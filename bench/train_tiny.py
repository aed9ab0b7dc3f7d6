"""Train the tiny restoration models of TLC's study here, on CPU, from scikit-image's photographs.

Released weights and public datasets cannot be fetched on this machine, so this script trains
small models (0.1-0.5 M parameters) in minutes on the photographs bundled with scikit-image,
split by name into TRAIN and TEST lists that are never mixed, plus optional procedural
"dead leaves" images for variety.

Task: blind Gaussian denoising. Every training crop gets ONE noise level sigma, uniform in
[0, --sigma-max] on the 0..255 scale (``tlc.synth.add_noise``: i.i.d. Gaussian noise, clipped to
[0, 1]). Loss L1 (HINet: on both stage outputs); Adam, cosine learning rate. Crops get a random
flip / 90-degree rotation and (colour photographs) a random channel order; grayscale photographs
are used as gray RGB.

Writes ``<out>/<name>.safetensors`` (float32 state_dict) and the model card ``<out>/<name>.json``
(architecture, config, crop, iterations, batch, seconds, seed, image split, task, validation PSNR
on held-out crops of the TEST photographs, measured once at the end and at a few checkpoints for
the log; nothing is selected on it).

    python bench/train_tiny.py --model tiny-nafnet --minutes 10
    python bench/train_tiny.py --model tiny-unet --iterations 6000 --seed 0   # exact re-run of a card

With ``--minutes`` the iteration count is fixed before training from a short timing run on a
throw-away copy (so the cosine schedule knows its length); the card records it, and
``--iterations N`` with the same seed repeats the run. Uses CUDA when available, but needs none.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a small shared machine a
# second busy process otherwise stalls every parallel region (measured here: 0.08 s -> 4 s per step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn

import tlc  # noqa: E402
from tlc.run import final_output  # noqa: E402
from tlc.demo import photograph  # noqa: E402
from tlc.synth import add_noise  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

WEIGHTS = ROOT / "src" / "tlc" / "weights"

#: name -> (architecture, constructor keywords for tlc.archs.build; "UNet" is tlc.archs.unet.UNet).
MODELS: dict[str, tuple[str, dict]] = {
    "tiny-unet": ("UNet", dict(width=16, depth=3, blocks=2, norm="none", attention="none")),
    "tiny-unet-in": ("UNet", dict(width=16, depth=3, blocks=2, norm="instance", attention="none", padding_mode="reflect")),
    "tiny-unet-se": ("UNet", dict(width=16, depth=3, blocks=2, norm="none", attention="se")),
    "tiny-nafnet": ("NAFNet", dict(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1])),
    "tiny-hinet": ("HINet", dict(wf=16, depth=3, hin_position_left=0, hin_position_right=2, padder_size=4, padding_mode="reflect")),
}

# scikit-image photographs that load without a download (checked: brain, eagle, kidney, lily,
# skin, ... need pooch and are not used). Chosen by name; TRAIN and TEST never share an image.
# ``chelsea`` is the same picture as ``cat`` and ``stereo_motorcycle`` is a stereo pair: the pair's
# right view is used nowhere, so no near-duplicate of a TEST image is trained on.
TRAIN_COLOR = ["astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina"]
TRAIN_GRAY = ["camera", "moon", "brick", "grass", "gravel", "clock", "coins", "page", "text", "cell"]
TRAIN_IMAGES = TRAIN_COLOR + TRAIN_GRAY
TEST_IMAGES = ["coffee", "rocket", "motorcycle_left"]
UNUSED_IMAGES = ["cat (= chelsea)", "motorcycle_right (stereo twin of motorcycle_left)", "colorwheel", "logo"]


load_photo = photograph  # one loader for training, the study and the demo (tlc.demo)


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 2.0, r_max: float = 100.0) -> np.ndarray:
    """A dead-leaves image (occluding disks of power-law radii, density ~ r^-3), size x size x 3.

    Disks are drawn front to back, each painting only pixels not yet covered, until 99.9% are
    covered; colours are uniform in RGB, with a soft edge of about a pixel.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size, 3), np.float32)
    alpha_left = np.ones((size, size), np.float32)  # how much of each pixel is still uncovered
    while alpha_left.mean() > 1e-3:
        # Inverse CDF of p(r) ~ r^-3 on [r_min, r_max].
        u = rng.uniform()
        r = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        cy, cx = rng.uniform(-r, size + r, 2)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
        x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
        if y0 >= y1 or x0 >= x1:
            continue
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        cover = np.clip(r + 0.5 - d, 0, 1) * alpha_left[y0:y1, x0:x1]
        image[y0:y1, x0:x1] += cover[:, :, None] * colour
        alpha_left[y0:y1, x0:x1] -= cover
    return np.clip(image + alpha_left[:, :, None] * 0.5, 0, 1)


def build_model(arch: str, config: dict) -> nn.Module:
    """The network of a card (``arch``, ``config``), by tlc.archs.build."""
    return tlc.archs.build(arch, **config)


def load_trained(name: str, weights_dir: Path = WEIGHTS) -> tuple[nn.Module, dict]:
    """(model in eval mode, card) for a model trained by this script."""
    from safetensors.torch import load_file

    card = json.loads((weights_dir / f"{name}.json").read_text())
    model = build_model(card["arch"], card["config"])
    state = load_file(str(weights_dir / card["weights_file"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), card


class CropSampler:
    """Random (clean, noisy) training crops from a pool of H x W x 3 float32 images."""

    def __init__(
        self, images: list[np.ndarray], crop: int, sigma_max: float, rng: np.random.Generator, sigma_min: float = 0.0
    ) -> None:
        self.images, self.crop, self.rng = images, crop, rng
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.colour = [not (np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 0], im[..., 2])) for im in images]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(clean, noisy) as (size, 3, crop, crop) tensors, and the sigma of each crop."""
        rng, c = self.rng, self.crop
        clean = np.empty((size, c, c, 3), np.float32)
        noisy = np.empty_like(clean)
        sigmas = rng.uniform(self.sigma_min, self.sigma_max, size)
        for b in range(size):
            k = int(rng.integers(len(self.images)))
            image = self.images[k]
            y, x = int(rng.integers(image.shape[0] - c + 1)), int(rng.integers(image.shape[1] - c + 1))
            patch = image[y : y + c, x : x + c]
            flip = int(rng.integers(8))
            patch = np.rot90(patch, flip % 4)
            if flip >= 4:
                patch = patch[:, ::-1]
            if self.colour[k]:
                patch = patch[:, :, rng.permutation(3)]
            clean[b] = patch
            noisy[b] = add_noise(clean[b], float(sigmas[b]), rng)
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return to_t(clean), to_t(noisy), sigmas


def validation_set(crop: int, sigma_max: float, count: int = 96, seed: int = 2022) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (clean, noisy) crops of the TEST photographs, one sigma per crop uniform in
    [sigma_max / 10, sigma_max] (no near-noiseless crop, whose PSNR would be unbounded)."""
    rng = np.random.default_rng(seed)
    sampler = CropSampler([load_photo(n) for n in TEST_IMAGES], crop, sigma_max, rng, sigma_min=sigma_max / 10)
    clean, noisy, _ = sampler.batch(count)
    return clean, noisy


def mean_psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean over crops of the PSNR (dB) on uint8-quantised images (tlc.metrics, protocol gopro)."""
    protocol = tlc.metrics.PROTOCOLS["gopro"]
    values = [protocol.score(r.permute(1, 2, 0), t.permute(1, 2, 0))[0] for r, t in zip(restored, clean)]
    return float(np.mean(values))


@torch.no_grad()
def evaluate(model: nn.Module, clean: torch.Tensor, noisy: torch.Tensor, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    out = torch.cat([final_output(model(x.to(device))).float().cpu() for x in noisy.split(32)])
    model.train(was_training)
    return mean_psnr(out, clean)


def loss_fn(output: object, clean: torch.Tensor) -> torch.Tensor:
    """L1; a model returning several stages (HINet) is supervised on each."""
    outs = output if isinstance(output, (list, tuple)) else [output]
    return sum((o - clean).abs().mean() for o in outs)


def seconds_per_iteration(model: nn.Module, sampler_images: list[np.ndarray], args: argparse.Namespace, device: torch.device) -> float:
    """Time a few training steps on a throw-away copy (its own RNG): the real run is untouched."""
    trial = copy.deepcopy(model).train()
    opt = torch.optim.Adam(trial.parameters(), lr=1e-4)
    sampler = CropSampler(sampler_images, args.crop, args.sigma_max, np.random.default_rng(12345))
    times = []
    for i in range(13):
        start = time.perf_counter()
        clean, noisy, _ = sampler.batch(args.batch)
        loss = loss_fn(trial(noisy.to(device)), clean.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="which tiny model to train")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training time budget (fixes the iteration count up front)")
    budget.add_argument("--iterations", type=int, help="number of training iterations")
    parser.add_argument("--crop", type=int, default=48, help="training crop side in pixels (default 48)")
    parser.add_argument("--batch", type=int, default=16, help="crops per batch (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3), cosine to 1e-6")
    parser.add_argument("--sigma-max", type=float, default=50.0, help="noise sigma uniform in [0, this] on 0..255 (default 50)")
    parser.add_argument("--dead-leaves", type=int, default=4, help="procedural dead-leaves images (512x512) added to the TRAIN pool (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of every draw (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--log-every", type=int, default=250, help="print the running loss every N iterations")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help=f"output folder (default {WEIGHTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal activations can slow CPU steps many times over
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch, config = MODELS[args.model]
    torch.manual_seed(args.seed)
    model = build_model(arch, config).to(device).train()
    params = sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(args.seed)
    images = [load_photo(n) for n in TRAIN_IMAGES]
    leaves_rng = np.random.default_rng([args.seed, 1])
    images += [dead_leaves(512, leaves_rng) for _ in range(args.dead_leaves)]
    sampler = CropSampler(images, args.crop, args.sigma_max, rng)
    val_clean, val_noisy = validation_set(args.crop, args.sigma_max)
    val_input_psnr = mean_psnr(val_noisy, val_clean)

    if args.iterations is None:
        per_it = seconds_per_iteration(model, images, args, device)
        iterations = max(1, int(args.minutes * 60 / per_it))
        print(f"{args.model}: {per_it * 1000:.0f} ms per iteration -> {iterations} iterations in {args.minutes:g} min")
    else:
        iterations = args.iterations

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.9))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=1e-6)
    print(f"{args.model}: {arch} {config}, {params} parameters, {iterations} iterations of {args.batch}x{args.crop}x{args.crop} on {device}")
    print(f"validation: {len(val_clean)} crops of the TEST photographs, noisy input {val_input_psnr:.2f} dB")
    history = []
    start = time.perf_counter()
    running = 0.0
    checkpoints = {iterations // 4, iterations // 2, 3 * iterations // 4}
    for it in range(1, iterations + 1):
        clean, noisy, _ = sampler.batch(args.batch)
        loss = loss_fn(model(noisy.to(device)), clean.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.item()
        if it % args.log_every == 0:
            print(f"  it {it:6d}  loss {running / args.log_every:.4f}  lr {schedule.get_last_lr()[0]:.2e}  {time.perf_counter() - start:6.0f} s", flush=True)
            running = 0.0
        if it in checkpoints:
            p = evaluate(model, val_clean, val_noisy, device)
            history.append({"iteration": it, "val_psnr": round(p, 3), "seconds": round(time.perf_counter() - start, 1)})
            print(f"  it {it:6d}  validation {p:.2f} dB", flush=True)
    seconds = time.perf_counter() - start
    final = evaluate(model, val_clean, val_noisy, device)
    history.append({"iteration": iterations, "val_psnr": round(final, 3), "seconds": round(seconds, 1)})
    print(f"{args.model}: {seconds / 60:.1f} min, validation {final:.2f} dB (noisy input {val_input_psnr:.2f} dB)")

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{args.model}.safetensors"
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"model": args.model, "arch": arch, "config": json.dumps(config)})
    card = {
        "name": args.model,
        "arch": arch,
        "arch_source": f"tlc.archs.build({arch!r}, **config)",
        "config": config,
        "parameters": params,
        "weights_file": weights.name,
        "weights_dtype": "float32",
        "weights_bytes": weights.stat().st_size,
        "task": {
            "kind": "blind Gaussian denoising, RGB",
            "noise": f"one sigma per crop, uniform in [0, {args.sigma_max:g}] on 0..255; i.i.d. per pixel and channel; clipped to [0, 1] (tlc.synth.add_noise)",
            "sigma_range": [0.0, args.sigma_max],
            "input_range": [0.0, 1.0],
        },
        "train_size": [args.crop, args.crop],
        "tlc": {"train_size": [args.crop, args.crop], "base_size": [args.crop * 3 // 2, args.crop * 3 // 2]},
        "batch": args.batch,
        "iterations": iterations,
        "seconds": round(seconds, 1),
        "seed": args.seed,
        "loss": "L1 (every stage output for multi-stage models)",
        "optimizer": {"name": "Adam", "lr": args.lr, "betas": [0.9, 0.9], "schedule": "cosine to 1e-6", "grad_clip_norm": 1.0},
        "augmentation": "random crop, flip/rot90, RGB channel permutation (colour images); gray photographs as gray RGB",
        "data": {
            "source": f"scikit-image {__import__('skimage').__version__} bundled photographs (skimage.data)",
            "train_images": TRAIN_IMAGES,
            "dead_leaves_images": {"count": args.dead_leaves, "size": 512, "seed": [args.seed, 1]},
            "test_images": TEST_IMAGES,
            "unused_images": UNUSED_IMAGES,
        },
        "validation": {
            "crops": len(val_clean),
            "sigma": f"one per crop, uniform in [{args.sigma_max / 10:g}, {args.sigma_max:g}]",
            "from": "TEST photographs (held out; never trained on, nothing selected on it)",
            "seed": 2022,
            "psnr_noisy_input": round(val_input_psnr, 3),
            "psnr": round(final, 3),
            "protocol": "gopro (uint8 RGB)",
            "history": history,
        },
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": "python bench/train_tiny.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(card, indent=2) + "\n")
    mb = weights.stat().st_size / 2**20
    print(f"wrote {weights} ({mb:.2f} MiB) and {weights.with_suffix('.json')}")
    if mb > 2:
        print("WARNING: weights file over 2 MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
