"""Train a tiny motion-deblurring model here, on CPU, from scikit-image's photographs.

The sibling of ``train_tiny.py`` (same networks, photographs, loss and optimiser) for the paper's
headline task. Blur varies across the frame as camera rotation, zoom and moving objects make it:
each training photograph is blurred a few times by a motion field (``tlc.synth.motion_field``:
translation + in-plane rotation + zoom about a random centre, sometimes one or two moving objects,
and for a quarter of the variants one uniform motion), rendered by ``tlc.synth.motion_blur_field``
(a bank of line kernels over lengths x directions, blended per pixel). Training crops (48 px by
default) are cut from these (sharp, blurred) pairs, with a random flip / 90-degree rotation, a
random channel order (colour photographs) and mild Gaussian noise (sigma uniform in [0,
--sigma-max] on 0..255, ``tlc.synth.add_noise``). A crop thus sees a nearly uniform blur, and the
whole frame a varying one.

Photographs: ``train_tiny.TRAIN_IMAGES`` less the VALIDATION ones, plus dead-leaves images; the
VALIDATION photographs (clock, coins) give fixed blurred crops on which the best checkpoint is
kept; ``train_tiny.TEST_IMAGES`` (coffee, rocket, motorcycle_left) are never seen here (they are
for ``deblur_eval.py``).

Writes ``<out>/<name>-deblur.safetensors`` (float32, the best validation checkpoint) and the model
card ``<out>/<name>-deblur.json``; checkpoints (last and best) go to ``--checkpoints`` as it runs.

    python bench/train_deblur.py --model tiny-nafnet --minutes 28
    python bench/train_deblur.py --model tiny-nafnet --iterations 5000 --seed 0   # re-run a card
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_tiny.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import (  # noqa: E402
    MODELS,
    ROOT,
    TEST_IMAGES,
    TRAIN_IMAGES,
    UNUSED_IMAGES,
    WEIGHTS,
    build_model,
    dead_leaves,
    load_photo,
    loss_fn,
    mean_psnr,
)

from tlc.run import final_output  # noqa: E402
from tlc.synth import add_noise, motion_blur_field, motion_field  # noqa: E402

VALIDATION_IMAGES = ["clock", "coins"]
TRAIN = [n for n in TRAIN_IMAGES if n not in VALIDATION_IMAGES]

#: Longest motion in pixels, for training and evaluation.
MAX_LENGTH = 20.0
#: Largest side of the region of a photograph that is blurred (large photographs are cropped).
POOL_SIDE = 512


def blurred_variant(image: np.ndarray, rng: np.random.Generator, max_length: float = MAX_LENGTH) -> np.ndarray:
    """``image`` blurred by one random motion field: a quarter uniform motion, the rest affine
    camera motion with 0-2 moving objects (``tlc.synth.motion_field``)."""
    h, w = image.shape[:2]
    if rng.uniform() < 0.25:
        length, angle = motion_field(h, w, max_length, rng, camera="uniform")
    else:
        length, angle = motion_field(h, w, max_length, rng, objects=int(rng.integers(0, 3)))
    return motion_blur_field(image, length, angle)


class PairSampler:
    """Random (sharp, blurred + noisy) crops from a pool of (sharp, blurred) H x W x 3 pairs."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], crop: int, sigma_max: float,
                 rng: np.random.Generator) -> None:
        self.pairs, self.crop, self.sigma_max, self.rng = pairs, crop, sigma_max, rng
        self.colour = [not (np.array_equal(s[..., 0], s[..., 1]) and np.array_equal(s[..., 0], s[..., 2])) for s, _ in pairs]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sharp, degraded) as (size, 3, crop, crop) tensors."""
        rng, c = self.rng, self.crop
        sharp = np.empty((size, c, c, 3), np.float32)
        degraded = np.empty_like(sharp)
        for b in range(size):
            k = int(rng.integers(len(self.pairs)))
            s_img, b_img = self.pairs[k]
            y, x = int(rng.integers(s_img.shape[0] - c + 1)), int(rng.integers(s_img.shape[1] - c + 1))
            flip, perm = int(rng.integers(8)), rng.permutation(3)
            for dst, src in ((sharp, s_img), (degraded, b_img)):
                patch = np.rot90(src[y : y + c, x : x + c], flip % 4)
                if flip >= 4:
                    patch = patch[:, ::-1]
                if self.colour[k]:
                    patch = patch[:, :, perm]
                dst[b] = patch
            degraded[b] = add_noise(degraded[b], float(rng.uniform(0.0, self.sigma_max)), rng)
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return to_t(sharp), to_t(degraded)


def make_pool(names: list[str], variants: int, rng: np.random.Generator, leaves: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sharp, blurred) pairs: ``variants`` random blurs of each photograph (a random region of at
    most POOL_SIDE x POOL_SIDE) and of ``leaves`` 512 px dead-leaves images."""
    images = [load_photo(n) for n in names] + [dead_leaves(512, rng) for _ in range(leaves)]
    pool = []
    for image in images:
        for _ in range(variants):
            h, w = image.shape[:2]
            y = int(rng.integers(max(1, h - POOL_SIDE + 1)))
            x = int(rng.integers(max(1, w - POOL_SIDE + 1)))
            region = np.ascontiguousarray(image[y : y + POOL_SIDE, x : x + POOL_SIDE])
            pool.append((region, blurred_variant(region, rng)))
    return pool


@torch.no_grad()
def evaluate(model: torch.nn.Module, sharp: torch.Tensor, degraded: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    out = torch.cat([final_output(model(x)).float() for x in degraded.split(32)])
    model.train(was_training)
    return mean_psnr(out, sharp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="network (train_tiny.MODELS); saved as NAME-deblur")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training time budget (fixes the iteration count up front)")
    budget.add_argument("--iterations", type=int, help="number of training iterations")
    parser.add_argument("--crop", type=int, default=48, help="training crop side in pixels (default 48)")
    parser.add_argument("--batch", type=int, default=16, help="crops per batch (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3), cosine to 1e-6")
    parser.add_argument("--sigma-max", type=float, default=5.0, help="noise sigma uniform in [0, this] on 0..255 (default 5)")
    parser.add_argument("--variants", type=int, default=4, help="blurred versions of each training image (default 4)")
    parser.add_argument("--dead-leaves", type=int, default=4, help="512 px dead-leaves images added to the pool (default 4)")
    parser.add_argument("--checks", type=int, default=8, help="validations (and checkpoints) during training (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of every draw (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--log-every", type=int, default=250, help="print the running loss every N iterations")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help=f"output folder (default {WEIGHTS.relative_to(ROOT)})")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "build" / "train_deblur",
                        help="folder for the last and best checkpoints (default build/train_deblur)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    name = f"{args.model}-deblur"
    arch, config = MODELS[args.model]
    torch.manual_seed(args.seed)
    model = build_model(arch, config).train()
    params = sum(p.numel() for p in model.parameters())

    start_pool = time.perf_counter()
    pool = make_pool(TRAIN, args.variants, np.random.default_rng([args.seed, 1]), leaves=args.dead_leaves)
    sampler = PairSampler(pool, args.crop, args.sigma_max, np.random.default_rng(args.seed))
    val_pool = make_pool(VALIDATION_IMAGES, 4, np.random.default_rng(2022))
    val_sharp, val_degraded = PairSampler(val_pool, args.crop, args.sigma_max, np.random.default_rng(2023)).batch(96)
    val_input = mean_psnr(val_degraded, val_sharp)
    pool_seconds = time.perf_counter() - start_pool
    print(f"{name}: pool of {len(pool)} blurred images in {pool_seconds:.0f} s; validation input {val_input:.2f} dB", flush=True)

    if args.iterations is None:
        trial = copy.deepcopy(model)
        opt = torch.optim.Adam(trial.parameters(), lr=1e-4)
        trial_sampler = PairSampler(pool, args.crop, args.sigma_max, np.random.default_rng(12345))
        times = []
        for i in range(13):
            t0 = time.perf_counter()
            s, d = trial_sampler.batch(args.batch)
            loss = loss_fn(trial(d), s)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        per_it = float(np.median(times))
        iterations = max(1, int(args.minutes * 60 / per_it))
        print(f"{name}: {per_it * 1000:.0f} ms per iteration -> {iterations} iterations in {args.minutes:g} min", flush=True)
    else:
        iterations = args.iterations

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.9))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=1e-6)
    checks = {max(1, iterations * k // args.checks) for k in range(1, args.checks + 1)}
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    best = (-float("inf"), 0, None)
    history = []
    running, start = 0.0, time.perf_counter()
    for it in range(1, iterations + 1):
        s, d = sampler.batch(args.batch)
        loss = loss_fn(model(d), s)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.item()
        if it % args.log_every == 0:
            print(f"  it {it:6d}  loss {running / args.log_every:.4f}  lr {schedule.get_last_lr()[0]:.2e}  {time.perf_counter() - start:6.0f} s", flush=True)
            running = 0.0
        if it in checks:
            p = evaluate(model, val_sharp, val_degraded)
            history.append({"iteration": it, "val_psnr": round(p, 3), "seconds": round(time.perf_counter() - start, 1)})
            state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
            torch.save({"iteration": it, "state_dict": state}, args.checkpoints / f"{name}-last.pt")
            if p > best[0]:
                best = (p, it, state)
                torch.save({"iteration": it, "state_dict": state}, args.checkpoints / f"{name}-best.pt")
            print(f"  it {it:6d}  validation {p:.2f} dB (best {best[0]:.2f} at {best[1]})", flush=True)
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds / 60:.1f} min; best validation {best[0]:.2f} dB at iteration {best[1]} (input {val_input:.2f} dB)")

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{name}.safetensors"
    state = {k: v.contiguous() for k, v in best[2].items()}
    save_file(state, str(weights), metadata={"model": name, "arch": arch, "config": json.dumps(config)})
    card = {
        "name": name,
        "arch": arch,
        "arch_source": f"tlc.archs.build({arch!r}, **config)",
        "config": config,
        "parameters": params,
        "weights_file": weights.name,
        "weights_dtype": "float32",
        "weights_bytes": weights.stat().st_size,
        "task": {
            "kind": "motion deblurring with mild noise, RGB",
            "blur": (f"line-kernel motion blur, length and direction varying across the frame (tlc.synth.motion_field: "
                     f"translation + in-plane rotation + zoom, 0-2 moving objects; a quarter of the images one uniform motion), "
                     f"longest motion {MAX_LENGTH:g} px scaled by U(0.4, 1) per image; rendered by tlc.synth.motion_blur_field"),
            "noise": f"one sigma per crop, uniform in [0, {args.sigma_max:g}] on 0..255, after the blur (tlc.synth.add_noise)",
            "max_blur_length": MAX_LENGTH,
            "sigma_range": [0.0, args.sigma_max],
            "input_range": [0.0, 1.0],
        },
        "train_size": [args.crop, args.crop],
        "tlc": {"train_size": [args.crop, args.crop], "base_size": [args.crop * 3 // 2, args.crop * 3 // 2]},
        "batch": args.batch,
        "iterations": iterations,
        "kept_iteration": best[1],
        "seconds": round(seconds, 1),
        "pool_seconds": round(pool_seconds, 1),
        "seed": args.seed,
        "loss": "L1 (every stage output for multi-stage models)",
        "optimizer": {"name": "Adam", "lr": args.lr, "betas": [0.9, 0.9], "schedule": "cosine to 1e-6", "grad_clip_norm": 1.0},
        "augmentation": "random crop, flip/rot90, RGB channel permutation (colour images); gray photographs as gray RGB",
        "data": {
            "source": f"scikit-image {__import__('skimage').__version__} bundled photographs (skimage.data)",
            "train_images": TRAIN,
            "blurred_variants_per_image": args.variants,
            "region": f"a random region of at most {POOL_SIDE}x{POOL_SIDE} per variant",
            "dead_leaves_images": {"count": args.dead_leaves, "size": 512},
            "validation_images": VALIDATION_IMAGES,
            "test_images": TEST_IMAGES,
            "unused_images": UNUSED_IMAGES,
        },
        "validation": {
            "crops": len(val_sharp),
            "from": "VALIDATION photographs (held out from training; the checkpoint with the best PSNR is kept)",
            "seed": 2022,
            "psnr_blurred_input": round(val_input, 3),
            "psnr": round(best[0], 3),
            "protocol": "gopro (uint8 RGB)",
            "history": history,
        },
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": "python bench/train_deblur.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
    }
    (args.out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.2f} MiB) and {weights.with_suffix('.json')}")


if __name__ == "__main__":
    main()
