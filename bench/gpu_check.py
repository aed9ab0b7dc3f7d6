"""tlc on an accelerator against the same computation on the CPU in float64: is it right there?

Every local op of ``tlc.ops`` (odd, non-square maps, batch 2, windows smaller than the map and
covering it) and every corpus model of tests/corpus converted on the device (``tlc.convert(model,
train_size=32)``, run at 4x the training size, non-square) are compared with the CPU in float64 by
``|out - ref| / |ref|`` (Frobenius norms). Tolerances: float64 1e-10, float32 1e-4 (the device's
convolutions may use TF32: 1e-2 for whole models), float16/bfloat16 3e-2. NaN never passes.

The local mean also on maps where the CUDA kernels split their work. Also checks that a model converted on the CPU and then moved to the device gives the device's
conversion's output, and that the conversion's report is the same on both.

    python bench/gpu_check.py --device cuda     # exits 1 if any check fails
    python bench/gpu_check.py --device cpu      # a dry run of the script itself
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tlc
from tlc import ops

OP_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
MODEL_TOL = {torch.float64: 1e-8, torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 8e-2}


def record(rows: list, row: tuple[str, str, float, bool]) -> None:
    """Keep a check's result and print it at once (a run stopped at its time limit still shows
    every check done)."""
    rows.append(row)
    name, dtype, err, ok = row
    print(f"  {'ok ' if ok else 'BAD'} {name:<40}{dtype:<38}{err:.2e}", flush=True)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().double().cpu()
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return float("nan")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def op_cases(g: torch.Generator) -> dict[str, Callable[[torch.Tensor, torch.device, torch.dtype], torch.Tensor]]:
    """name -> fn(x float64 on the CPU, device, dtype): the op applied to x moved to (device, dtype)."""
    logits = 3 * torch.randn(2, 1, 37, 54, generator=g, dtype=torch.float64)
    qkv = torch.randn(3, 2, 8, 37, 54, generator=g, dtype=torch.float64)
    temperature = torch.tensor([[[0.7]], [[1.3]]], dtype=torch.float64)
    weight, bias = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)

    def on(t, device, dtype):
        return t.to(device, dtype)

    cases = {}
    for window in ((9, 13), (64, 64)):
        tag = f"{window[0]}x{window[1]}"
        cases[f"local_mean {tag}"] = lambda x, d, t, w=window: ops.local_mean(on(x, d, t), w)
        cases[f"local_var {tag}"] = lambda x, d, t, w=window: ops.local_var(on(x, d, t), w)
        cases[f"local_std {tag}"] = lambda x, d, t, w=window: ops.local_std(on(x, d, t), w)
        cases[f"local_max {tag}"] = lambda x, d, t, w=window: ops.local_max(on(x, d, t), w)
        cases[f"local_instance_norm {tag}"] = lambda x, d, t, w=window: ops.local_instance_norm(
            on(x, d, t), w, on(weight, d, t), on(bias, d, t)
        )
        cases[f"local_group_norm {tag}"] = lambda x, d, t, w=window: ops.local_group_norm(
            on(x, d, t), 4, w, on(weight, d, t), on(bias, d, t)
        )
        cases[f"local_softmax_pool {tag}"] = lambda x, d, t, w=window: ops.local_softmax_pool(
            on(x, d, t), on(logits, d, t), w
        )
        cases[f"local_transposed_attention {tag}"] = lambda x, d, t, w=window: ops.local_transposed_attention(
            *(on(v, d, t) for v in qkv), on(temperature, d, t), 2, w
        )
    cases["local_axis_mean 11 W"] = lambda x, d, t: ops.local_axis_mean(on(x, d, t), 11, -1)
    cases["local_axis_max 7 H"] = lambda x, d, t: ops.local_axis_max(on(x, d, t), 7, -2)
    return cases


def check_ops(device: torch.device, dtypes: list[torch.dtype]) -> list[tuple[str, str, float, bool]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 37, 54, generator=g, dtype=torch.float64) * 2 + 0.5
    rows = []
    for name, fn in op_cases(g).items():
        ref = fn(x, torch.device("cpu"), torch.float64)
        for dtype in dtypes:
            err = rel_error(fn(x, device, dtype), ref)
            record(rows, (name, str(dtype).removeprefix("torch."), err, err <= OP_TOL[dtype]))
    # Sizes where the CUDA kernels split their work: several chunks of output rows (over 512 valid
    # rows), rows wider than one tile (1024 columns), the valid windows only and the full map.
    for shape, window in (((1, 2, 700, 64), (96, 33)), ((2, 3, 45, 1030), (13, 200))):
        x = torch.randn(shape, generator=g, dtype=torch.float64) + 3
        ref = ops.local_mean(x, window)
        for dtype in dtypes:
            err = rel_error(ops.local_mean(x.to(device, dtype), window), ref)
            record(rows, (f"local_mean {shape} {window}", str(dtype).removeprefix("torch."), err, err <= OP_TOL[dtype]))
    return rows


def check_models(device: torch.device, dtypes: list[torch.dtype]) -> list[tuple[str, str, float, bool]]:
    from tests.corpus import CORPUS, build
    from tests.test_corpus import convert_kwargs, image, outputs

    rows = []
    for entry in CORPUS:
        if entry.fixed_size:
            continue
        model = build(entry).double()
        h, w = entry.large
        x = image(2, h, w + 4, seed=5).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref_model, ref_report = tlc.convert(model, **convert_kwargs(entry))
                ref = outputs(ref_model, x)
            except tlc.ConversionError as err:
                record(rows, (entry.name, "cpu float64", float("nan"), False))
                print(f"  {entry.name}: conversion failed on the CPU: {err}")
                continue
            for dtype in dtypes:
                label = str(dtype).removeprefix("torch.")
                try:
                    moved = build(entry).double().to(device, dtype)
                    converted, report = tlc.convert(moved, **convert_kwargs(entry))
                    out = outputs(converted, x.to(device, dtype))
                except Exception as err:  # noqa: BLE001 - any failure on the device is a failed check
                    record(rows, (entry.name, label, float("nan"), False))
                    print(f"  {entry.name} {label}: {type(err).__name__}: {err}")
                    continue
                err = max(rel_error(o, r) for o, r in zip(out, ref))
                same_sites = sorted(c.path for c in report.converted) == sorted(c.path for c in ref_report.converted)
                record(rows, (entry.name, label, err, err <= MODEL_TOL[dtype] and same_sites))
                if not same_sites:
                    print(f"  {entry.name} {label}: converted sites differ from the CPU's")
            # converted on the CPU, then moved
            try:
                moved_after = ref_model.to(device)
                err = max(rel_error(o, r) for o, r in zip(outputs(moved_after, x.to(device)), ref))
            except Exception as exc:  # noqa: BLE001
                print(f"  {entry.name} moved after conversion: {type(exc).__name__}: {exc}")
                err = float("nan")
            record(rows, (entry.name, "float64, converted on cpu then moved", err, err <= MODEL_TOL[torch.float64]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    print(
        f"tlc on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__})"
    )
    rows = check_ops(device, dtypes)
    if not args.skip_models:
        rows += check_models(device, [torch.float64, torch.float32])
    failed = [r for r in rows if not r[3]]
    worst = {}
    for _, dtype, err, _ in rows:
        worst[dtype] = max(worst.get(dtype, 0.0), err) if not math.isnan(err) else float("nan")
    print("worst relative error per dtype: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
