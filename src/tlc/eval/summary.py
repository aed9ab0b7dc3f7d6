"""What one mode of an evaluation comes to: :class:`ModeSummary`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModeSummary:
    """Aggregates of one mode.

    seconds_per_image is the mean model time per image (the forward pass, tiling included;
    reading, scoring and writing excluded), each image timed in the process that ran it: a
    latency, not wall time divided by images. peak_memory_mib: CUDA peak allocated on a GPU, else
    peak resident memory of the process; with several processes, the largest of any of them.
    """

    images: int = 0
    psnr: float = float("nan")
    ssim: float = float("nan")
    seconds_per_image: float = float("nan")
    peak_memory_mib: float | None = None
    mae: float | None = None  # mean absolute error on [0, 1], for protocols that score it (DPDD)


__all__ = ["ModeSummary"]
