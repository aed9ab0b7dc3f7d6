"""Peak memory of a converted network against the plain one, on the CPU, at 2160x3840 by default.

Each measurement runs in a fresh process (the peak resident size of a process only grows): the
network is built (perturbed weights), converted or not, warmed up on a 64x64 image, and then one
forward runs on the test image under ``torch.inference_mode``. Reported: the peak resident size
above what the process held just before that forward (the input image included), in MiB, and
the ratio converted / plain. Linux only (the peak is reset before the forward through
/proc/self/clear_refs, so conversion and warm-up peaks do not count). Writes bench/results/memory_cpu.csv.

    python bench/memory.py                      # NAFNet and HINet (issue widths) at 2160x3840
    python bench/memory.py --size 720x1280
    python bench/memory.py --huge-pages --keep-freed-memory   # as tlc with TLC_KEEP_FREED_MEMORY=1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_allocator_options, allocator_from, in_fresh_process, machine, merged, peak_rss_mib_during, write_csv  # noqa: E402

import tlc  # noqa: E402
from tlc.run.allocator import keep_freed_memory  # noqa: E402

# The reduced widths the cost issue names: light networks, where local statistics weigh most.
NETWORKS = {
    "NAFNet-w16": ("NAFNet", dict(width=16, enc_blk_nums=[1, 1, 1, 2], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])),
    "HINet-wf16-hin5": ("HINet", dict(wf=16, hin_position_left=0, hin_position_right=4)),
}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _measure(arch: str, config: dict, converted: bool, size: tuple[int, int], keep: bool, queue: mp.Queue) -> None:
    if keep:  # a spawned process starts with glibc's defaults (huge pages: the variable is inherited)
        keep_freed_memory()
    torch.set_num_threads(2)
    model = _perturbed(tlc.archs.build(arch, **config))
    if converted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = tlc.convert(model, train_size=256, base_size=384)
    with torch.inference_mode():
        model(torch.rand(1, 3, 64, 64))  # kernels compiled, allocator warm
        x = torch.rand(1, 3, *size)
        queue.put(peak_rss_mib_during(lambda: model(x)))


def peak_above_start(arch: str, config: dict, converted: bool, size: tuple[int, int], keep: bool = False) -> float:
    """MiB the forward adds to the process's peak resident size, measured in a fresh process (with
    glibc keeping freed memory where ``keep``)."""
    return in_fresh_process(_measure, arch, config, converted, size, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2160x3840", help="HxW of the test image")
    add_allocator_options(parser, "memory_cpu")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    csv_name, allocator = allocator_from(args, "memory_cpu")
    print(f"peak memory above start of the forward, {args.size}, CPU ({machine()}), {allocator}")
    print(f"  {'network':<18}{'plain MiB':>11}{'tlc MiB':>10}{'ratio':>8}")
    rows = []
    for name, (arch, config) in NETWORKS.items():
        plain = peak_above_start(arch, config, False, size, args.keep_freed_memory)
        local = peak_above_start(arch, config, True, size, args.keep_freed_memory)
        print(f"  {name:<18}{plain:>11.0f}{local:>10.0f}{local / plain:>7.2f}x", flush=True)
        rows.append({"network": name, "config": str(config), "size": args.size, "plain_mib": round(plain, 1),
                     "tlc_mib": round(local, 1), "ratio": round(local / plain, 3), "run": f"{name} {args.size}",
                     "machine": machine(), "allocator": allocator})
    print(f"wrote {write_csv(csv_name, merged(csv_name, rows, key='run'))}")


if __name__ == "__main__":
    main()
