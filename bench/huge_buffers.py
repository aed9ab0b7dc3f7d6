"""What the local kernels' huge-page buffers save: converted corpus models with their outputs
allocated by numpy (on transparent huge pages, as shipped) and by torch (4 KB pages), side by side.

tlc's CPU kernels write into buffers from ``tlc.ops._common.cpu_buffer``, which takes large ones
from numpy: numpy asks the kernel for huge pages, torch's allocator does not unless
THP_MEM_ALLOC_ENABLE=1, and each fresh 4 KB page faults on its first write. This script times the
original, the converted model as shipped, and the same converted model with every kernel buffer
from torch, taking turns in one process (batch 1, float32, CPU, torch's default allocator).
Printed per model: the median over the turns of each turn's ratio to the original.

    python bench/huge_buffers.py                            # the channel-attention models, 720p, train 256
    python bench/huge_buffers.py --only eca,srm --train-size 32 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import interleaved_seconds, machine, merged, write_csv  # noqa: E402
from corpus import pin_threads  # noqa: E402

import tlc  # noqa: E402
from tests.corpus import CORPUS, build  # noqa: E402
from tests.test_corpus import image  # noqa: E402
from tlc.ops import _common  # noqa: E402

MODELS = "rcan,mprnet,nafnet,se-linear,cbam,cbam-linear,eca,srm,max-attention,gcnet,imdn,mirnet-skff,dehaze-skfusion"


def with_torch_buffers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` run with every cpu_buffer taken from torch (the threshold for numpy out of reach)."""

    def run(x: torch.Tensor) -> object:
        saved = _common._HUGE_PAGE_BYTES
        _common._HUGE_PAGE_BYTES = 1 << 62
        try:
            return model(x)
        finally:
            _common._HUGE_PAGE_BYTES = saved

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=MODELS, help="comma-separated corpus names")
    parser.add_argument("--size", default="720x1280", help="HxW of the timed image")
    parser.add_argument("--train-size", type=int, default=256, help="train_size passed to tlc.convert")
    parser.add_argument("--repeats", type=int, default=7, help="turns (each runs all three once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    x = image(1, h, w, seed=3)
    entries = {e.name: e for e in CORPUS}
    unknown = set(args.only.split(",")) - set(entries)
    if unknown:
        parser.error(f"not in the corpus: {', '.join(sorted(unknown))}")
    print(f"kernel buffers at {h}x{w}, train {args.train_size}, {machine()}, median of {args.repeats} turns\n")
    print("| model | original ms | huge-page buffers / original | torch buffers / original | huge / torch |")
    print("|---|---|---|---|---|")
    rows = []
    for name in args.only.split(","):
        entry = entries[name]
        model = build(entry, wide=True)
        kwargs = {"train_size": args.train_size}
        if entry.in_channels is not None:
            kwargs["in_channels"] = entry.in_channels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted, _ = tlc.convert(model, **kwargs)
        fns = {"original": lambda: model(x.clone()), "huge": lambda: converted(x.clone()),
               "torch": lambda c=with_torch_buffers(converted): c(x.clone())}
        pin_threads(args.threads)
        with torch.inference_mode():
            converted(image(1, 64, 64, seed=4))  # kernels compiled
            pin_threads(args.threads)
            runs = interleaved_seconds(fns, "cpu", repeats=args.repeats)

        def paired(a: str, b: str) -> float:
            return round(statistics.median(p / q for p, q in zip(runs[a], runs[b])), 3)

        row = {"model": name, "size": args.size, "train_size": args.train_size,
               "original_ms": round(1e3 * statistics.median(runs["original"]), 1),
               "huge_ratio": paired("huge", "original"), "torch_ratio": paired("torch", "original"),
               "huge_over_torch": paired("huge", "torch"), "repeats": args.repeats, "machine": machine()}
        rows.append(row)
        print(f"| {name} | {row['original_ms']} | {row['huge_ratio']}x | {row['torch_ratio']}x | {row['huge_over_torch']}x |",
              flush=True)
    rows = [{**r, "run": f"{r['model']} {r['size']} train {r['train_size']}"} for r in rows]
    print(f"\nwrote {write_csv('huge_buffers_cpu', merged('huge_buffers_cpu', rows, key='run'))}")


if __name__ == "__main__":
    main()
