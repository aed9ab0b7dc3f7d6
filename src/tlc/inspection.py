"""What ``tlc inspect --size`` shows: windows at a test size and activation memory, without compute.

The converted model runs on PyTorch's meta device, which propagates shapes only, so a 4K
inspection of a full-size network costs milliseconds and no memory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._util import output_tensors
from .convert import ConversionReport


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def activation_memory(original: nn.Module, converted: nn.Module, report: ConversionReport, size: tuple[int, int]) -> str:
    """A text table: each converted op's feature size and effective window at ``size`` (H, W),
    and the float32 activation memory of one image: the sum of all module outputs (what
    autograd would keep) and the largest single one (a floor for inference)."""
    meta = copy.deepcopy(converted).to("meta")
    channels = report.in_channels or 3
    features: dict[str, tuple[int, int]] = {}
    outputs: list[int] = []
    handles = []
    paths = {op.path for op in report.converted}

    # Hooks must return None: a returned value would replace the module's input or output.
    def record_feature(path: str):
        def hook(module: nn.Module, args: tuple) -> None:
            features.setdefault(path, tuple(args[0].shape[-2:]))

        return hook

    def record_output(module: nn.Module, args: tuple, out: object) -> None:
        outputs.extend(t.numel() * 4 for t in output_tensors(out))

    for path, module in meta.named_modules():
        if path in paths:
            handles.append(module.register_forward_pre_hook(record_feature(path)))
        if not list(module.children()):
            handles.append(module.register_forward_hook(record_output))
    try:
        with torch.no_grad():
            meta(torch.empty(1, channels, *size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    lines = [f"at {size[0]}x{size[1]}:"]
    rows = []
    for op in report.converted:
        feature = features.get(op.path)
        if feature is None:
            rows.append((op.path, f"{op.window[0]}x{op.window[1]}", "not reached", "-"))
            continue
        effective = (min(op.window[0], feature[0]), min(op.window[1], feature[1]))
        local = "global (window covers the map)" if effective == feature else f"{effective[0]}x{effective[1]}"
        rows.append((op.path, f"{op.window[0]}x{op.window[1]}", f"{feature[0]}x{feature[1]}", local))
    header = ("module", "window", f"feature at {size[0]}x{size[1]}", "effective window")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    for row in (header, *rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    lines.append(f"activation memory (float32, batch 1): {_mib(sum(outputs))} for all module outputs, "
                 f"largest single output {_mib(max(outputs, default=0))}")
    return "\n".join(lines)
