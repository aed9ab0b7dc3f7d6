"""What an evaluation reports: per-mode summaries, the text table, and comparison strips."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .ablation import base_of
from .summary import ModeSummary

# Panels of a comparison strip (and of the HTML report's viewer), left to right: whatever order
# --modes gives, the same place for the same thing in every strip.
PANEL_ORDER = ("input", "full", "tiles", "tlc", "target")
LABEL_FONT_PX = 13  # Pillow's built-in font; readable on a 256-pixel crop

def summarise(rows: list[dict], names: set[str], modes: tuple[str, ...], peaks: dict) -> dict[str, ModeSummary]:
    summaries = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode and r["image"] in names]
        if not mine:
            summaries[mode] = ModeSummary(peak_memory_mib=peaks.get(mode))
            continue
        maes = [r.get("mae") for r in mine]
        summaries[mode] = ModeSummary(
            images=len(mine),
            psnr=float(np.mean([float(r["psnr"]) for r in mine])),
            ssim=float(np.mean([float(r["ssim"]) for r in mine])),
            seconds_per_image=float(np.mean([float(r["seconds"]) for r in mine])),
            peak_memory_mib=peaks.get(mode),
            mae=float(np.mean([float(v) for v in maes])) if all(v not in (None, "") for v in maes) else None,
        )
    return summaries


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` pixels of an H x W (x C) image (a smaller side is kept whole)."""
    h, w = pixels.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return pixels[top : top + size, left : left + size]


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def panel_order(modes: Iterable[str]) -> list[str]:
    """The panels of a strip for the evaluated ``modes``: input, those modes in the fixed order
    full, tiles, tlc (then the window ablation's "tlc@..." modes, smallest window first), target."""
    modes = set(modes)
    ablation = sorted((m for m in modes if base_of(m) is not None), key=base_of)
    unknown = modes - set(PANEL_ORDER[1:-1]) - set(ablation)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; modes are {', '.join(PANEL_ORDER[1:-1])}")
    fixed = [p for p in PANEL_ORDER[:-1] if p == "input" or p in modes]
    return [*fixed, *ablation, "target"]


def panel_label(panel: str, psnr: float | None = None, ssim: float | None = None) -> str:
    """The label over one panel: its name, and with scores the lines "PSNR 30.12 dB" and
    "SSIM 0.8765" (both against the target; short lines, so that a narrow crop shows them whole)."""
    if psnr is None or ssim is None:
        return panel
    return f"{panel}\nPSNR {psnr:.2f} dB\nSSIM {ssim:.4f}"


def _label_band(text: str, width: int) -> np.ndarray:
    """A white band ``width`` pixels wide with ``text`` (one or more lines) in black, float RGB."""
    font = ImageFont.load_default(size=LABEL_FONT_PX)
    lines = text.split("\n")
    line_height = LABEL_FONT_PX + 4
    band = Image.new("RGB", (width, line_height * len(lines) + 6), "white")
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_height), line, fill="black", font=font)
    return np.asarray(band, dtype=np.float32) / 255.0


def side_by_side(panels: list[np.ndarray], labels: list[str] | None = None, crop: int = 256,
                 gap: int = 4) -> np.ndarray:
    """Centre crops of H x W x C float images, left to right, separated by white gaps.

    Args:
        panels: H x W x 1 or H x W x 3 float images in [0, 1], any sizes.
        labels: one text per panel (lines split at "\\n", see :func:`panel_label`), drawn on a
            white band above the panel; None: no bands.
        crop: side of the centre crop in pixels (smaller images are kept whole).
        gap: white columns between panels, in pixels.

    Returns:
        the strip, (band + max crop height) x (sum of crop widths + gaps) x 3 float32.
    """
    if labels is not None and len(labels) != len(panels):
        raise ValueError(f"{len(labels)} labels for {len(panels)} panels")
    crops = [_as_rgb(centre_crop(p, crop)) for p in panels]
    if labels is not None:
        bands = [_label_band(text, c.shape[1]) for text, c in zip(labels, crops)]
        top = max(b.shape[0] for b in bands)
    height = max(c.shape[0] for c in crops)
    columns = []
    for i, c in enumerate(crops):
        padded = np.ones((height, c.shape[1], 3), np.float32)
        padded[: c.shape[0]] = c
        if labels is not None:
            band = np.ones((top, c.shape[1], 3), np.float32)
            band[: bands[i].shape[0]] = bands[i]
            padded = np.concatenate([band, padded], axis=0)
        columns.append(padded)
        if i < len(crops) - 1:
            columns.append(np.ones((padded.shape[0], gap, 3), np.float32))
    return np.concatenate(columns, axis=1)
