"""Restormer's local attention: tlc's segment algorithm against the reference algorithm.

The reference algorithm (re-implemented here from the conformance README's description): cut
every window out of qkv in a Python loop and concatenate them, run the global block on the
batch of windows, then add each window's output back into a zero map in a second loop and
divide by the cover count. tlc's version never cuts windows out (see
tlc.ops.attention.local_transposed_attention). Time is the median of repeats in this process;
peak memory is measured in a fresh process per method, after a warm-up call on a small map,
above what the inputs already hold (CPU: peak resident size, Linux only; CUDA:
max_memory_allocated).

    python bench/attention.py                       # 720x1280, dim 48, 1 head, window 384
    python bench/attention.py --device cuda --batch 2
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_fresh_process, machine, median_seconds, merged, peak_rss_mib_during, write_csv  # noqa: E402

import tlc  # noqa: E402


def reference_local_attention(qkv: torch.Tensor, temperature: torch.Tensor, heads: int, window: tuple[int, int]) -> torch.Tensor:
    """The reference's grids / _forward / grids_inverse, batch 1, loops over windows."""
    b, c3, h, w = qkv.shape
    c = c3 // 3
    k1, k2 = min(h, window[0]), min(w, window[1])
    n_rows, n_cols = (h - 1) // k1 + 1, (w - 1) // k2 + 1
    step_j = k2 if n_cols == 1 else math.ceil((w - k2) / (n_cols - 1) - 1e-8)
    step_i = k1 if n_rows == 1 else math.ceil((h - k1) / (n_rows - 1) - 1e-8)
    parts, places, i, last_i = [], [], 0, False
    while i < h and not last_i:
        j, last_j = 0, False
        if i + k1 >= h:
            i, last_i = h - k1, True
        while j < w and not last_j:
            if j + k2 >= w:
                j, last_j = w - k2, True
            parts.append(qkv[:, :, i : i + k1, j : j + k2])
            places.append((i, j))
            j += step_j
        i += step_i
    parts = torch.cat(parts, dim=0)
    q, k, v = parts.chunk(3, dim=1)
    n = parts.shape[0]
    q = F.normalize(q.reshape(n, heads, c // heads, -1), dim=-1)
    k = F.normalize(k.reshape(n, heads, c // heads, -1), dim=-1)
    attn = (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)
    out = (attn @ v.reshape(n, heads, c // heads, -1)).reshape(n, c, k1, k2)
    preds = torch.zeros(b, c, h, w, device=qkv.device)
    count = torch.zeros(b, 1, h, w, device=qkv.device)
    for index, (i, j) in enumerate(places):
        preds[0, :, i : i + k1, j : j + k2] += out[index]
        count[0, 0, i : i + k1, j : j + k2] += 1
    return preds / count


def _inputs(args: argparse.Namespace, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, 3 * args.dim, args.height, args.width, generator=g).to(args.device)
    temperature = (torch.rand(args.heads, 1, 1, generator=g) + 0.5).to(args.device)
    return qkv, temperature


def _run(method: str, qkv: torch.Tensor, temperature: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    window = (args.window, args.window)
    if method == "reference":
        return torch.cat([reference_local_attention(qkv[i : i + 1], temperature, args.heads, window) for i in range(qkv.shape[0])])
    q, k, v = qkv.chunk(3, dim=1)
    return tlc.local_transposed_attention(q, k, v, temperature, args.heads, window)


def _peak_child(method: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    qkv, temperature = _inputs(args, args.batch)
    with torch.no_grad():
        # Warm up on a small map first: loading code (numba kernels, BLAS) is not the method's memory.
        small = argparse.Namespace(**{**vars(args), "height": 2 * args.window + 8, "width": 2 * args.window + 8})
        _run(method, _inputs(small, args.batch)[0], temperature, small)
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _run(method, qkv, temperature, args)
            torch.cuda.synchronize()
            queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
        else:
            queue.put(peak_rss_mib_during(lambda: _run(method, qkv, temperature, args)))


def peak_mib(method: str, args: argparse.Namespace) -> float:
    return in_fresh_process(_peak_child, method, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--dim", type=int, default=48, help="channels (Restormer level 1: 48)")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--window", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    qkv, temperature = _inputs(args, args.batch)
    with torch.no_grad():
        reference = _run("reference", qkv, temperature, args)
        ours = _run("tlc", qkv, temperature, args)
        error = (ours - reference).abs().max().item()
        times = {m: median_seconds(lambda m=m: _run(m, qkv, temperature, args), args.device, repeats=args.repeats)
                 for m in ("reference", "tlc")}
    del qkv, reference, ours
    peaks = {m: peak_mib(m, args) for m in ("reference", "tlc")}
    shape = f"{args.batch}x{args.dim}x{args.height}x{args.width}"
    print(f"local transposed attention on {machine()}: q/k/v {shape}, {args.heads} head(s), window {args.window}")
    print(f"  {'method':<12}{'ms':>10}{'peak MiB':>10}")
    for m in times:
        print(f"  {m:<12}{1e3 * times[m]:>10.1f}{peaks[m]:>10.0f}")
    # A map small enough may raise no peak above what the inputs hold (the resident size moves by pages).
    memory = f"{peaks['tlc'] / peaks['reference']:.2f}" if peaks["reference"] > 0 else "n/a (no peak measured)"
    print(f"  speed-up {times['reference'] / times['tlc']:.2f}x, peak memory ratio {memory}, "
          f"max |tlc - reference| {error:.2e}")
    case = f"{shape}/heads {args.heads}/window {args.window}"
    rows = [{"case": case, "shape": shape, "heads": args.heads, "window": args.window, "device": args.device, "method": m,
             "ms": round(1e3 * times[m], 2), "peak_mib": round(peaks[m], 1), "max_abs_diff": error, "machine": machine()}
            for m in times]
    name = f"attention_{torch.device(args.device).type}"
    print(f"wrote {write_csv(name, merged(name, rows, key='case'))}")  # other cases' rows are kept


if __name__ == "__main__":
    main()
