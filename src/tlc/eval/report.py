"""What an evaluation reports: per-mode summaries, the text table, and comparison strips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def summarise(rows: list[dict], names: set[str], modes: tuple[str, ...], peaks: dict) -> dict[str, ModeSummary]:
    summaries = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode and r["image"] in names]
        if not mine:
            summaries[mode] = ModeSummary(peak_memory_mib=peaks.get(mode))
            continue
        summaries[mode] = ModeSummary(
            images=len(mine),
            psnr=float(np.mean([float(r["psnr"]) for r in mine])),
            ssim=float(np.mean([float(r["ssim"]) for r in mine])),
            seconds_per_image=float(np.mean([float(r["seconds"]) for r in mine])),
            peak_memory_mib=peaks.get(mode),
        )
    return summaries



def _centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return pixels[top : top + size, left : left + size]


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def side_by_side(panels: list[np.ndarray], crop: int = 256, gap: int = 4) -> np.ndarray:
    """Centre crops of H x W x C float images, left to right, separated by white gaps."""
    crops = [_as_rgb(_centre_crop(p, crop)) for p in panels]
    height = max(c.shape[0] for c in crops)
    columns = []
    for i, c in enumerate(crops):
        padded = np.ones((height, c.shape[1], 3), np.float32)
        padded[: c.shape[0]] = c
        columns.append(padded)
        if i < len(crops) - 1:
            columns.append(np.ones((height, gap, 3), np.float32))
    return np.concatenate(columns, axis=1)
