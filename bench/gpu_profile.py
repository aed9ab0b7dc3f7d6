"""Where a converted network's extra time goes on the GPU: torch's profiler, plain against converted.

For each network (released widths, perturbed random weights, TLC at train 256 / base 384), one
profiled forward of the plain and of the converted model after a warm-up. Prints the wall time of
each, the number of kernels launched, the GPU time summed over kernels, and the operators whose
self GPU time grew the most. Meant for a CUDA device (on the CPU it profiles CPU time).

    python bench/gpu_profile.py --device cuda --dtype float16 --only Restormer,MPRNet
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synchronize  # noqa: E402
from networks import network_arguments, networks_and_input  # noqa: E402



def self_times(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, Counter, int, float]:
    """(wall seconds, self device microseconds per op name, kernels launched, device µs in all)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        model(x)
        synchronize(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            model(x)
            synchronize(device)
            wall = time.perf_counter() - start
    per_op: Counter = Counter()
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0.0) if device.type == "cuda" else event.self_cpu_time_total
        per_op[event.key] += us
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    launches = len(kernels)
    device_us = sum(getattr(e, "device_time", 0.0) for e in kernels) if kernels else sum(per_op.values())
    return wall, per_op, launches, device_us


def main() -> None:
    parser = network_arguments(__doc__, "Restormer,MPRNet,NAFNet-width64")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"profile at {args.size} on {machine()}, {args.dtype}")
    for name, _, plain, local, x in networks_and_input(args):
        p_wall, p_ops, p_launch, p_dev = self_times(plain, x, device)
        t_wall, t_ops, t_launch, t_dev = self_times(local, x, device)
        print(f"\n{name}: wall {1e3 * p_wall:.1f} -> {1e3 * t_wall:.1f} ms, kernels {p_launch} -> {t_launch}, "
              f"device time {p_dev / 1e3:.1f} -> {t_dev / 1e3:.1f} ms")
        growth = {op: t_ops[op] - p_ops.get(op, 0.0) for op in t_ops}
        print(f"  {'op':<48}{'plain ms':>10}{'tlc ms':>10}")
        for op, _ in sorted(growth.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {op[:47]:<48}{p_ops.get(op, 0.0) / 1e3:>10.2f}{t_ops[op] / 1e3:>10.2f}")


if __name__ == "__main__":
    main()
