"""The paper's window ablation on any model and dataset: TLC at several base sizes, one mode each.

``tlc eval DATASET --base-size 1x,1.5x,2x,3x`` converts the model once per base size and scores
every converted model on the same pairs, as modes named ``tlc@<H>`` (``tlc@<H>x<W>`` for a
non-square window): the rows, the summary per mode, the strips and the report treat each like a
mode. :func:`window_ablation` then lines them up by window and names the best, which tells a user
which window their model wants.
"""

from __future__ import annotations

from .summary import ModeSummary

Pair = tuple[int, int]


def ablation_mode(base: Pair) -> str:
    """The mode name of TLC at base size ``base`` (H, W) in image pixels: "tlc@384", "tlc@384x512"."""
    h, w = base
    return f"tlc@{h}" if h == w else f"tlc@{h}x{w}"


def mode_kind(mode: str) -> str:
    """How a mode runs: "tlc" for every "tlc@..." mode, else the mode itself."""
    return mode.split("@", 1)[0]


def base_of(mode: str) -> Pair | None:
    """The base size of a "tlc@..." mode, None for other modes."""
    if "@" not in mode:
        return None
    size = mode.split("@", 1)[1]
    h, _, w = size.partition("x")
    return int(h), int(w or h)


def window_ablation(summaries: dict[str, ModeSummary], train_size: Pair) -> dict | None:
    """The ablation's table: one point per "tlc@..." mode, in window order, and the best.

    Args:
        summaries: mode -> its summary (as in ``summary.json``'s "modes").
        train_size: (H, W) of the training crop, for the relative sizes.

    Returns:
        {"train_size", "points": [{"mode", "base_size", "relative", "psnr", "ssim"}], "best": the mode
        with the highest mean PSNR (ties: the smaller window), "full_psnr": the full-image mode's PSNR
        or None}; None when there is no ablation (fewer than two "tlc@..." modes).
    """
    modes = sorted((m for m in summaries if base_of(m) is not None), key=lambda m: base_of(m))
    if len(modes) < 2:
        return None
    points = []
    for mode in modes:
        base, s = base_of(mode), summaries[mode]
        points.append({
            "mode": mode, "base_size": list(base), "relative": round(base[0] / train_size[0], 3),
            "psnr": s.psnr, "ssim": s.ssim, "images": s.images,
        })
    scored = [p for p in points if p["images"] > 0 and p["psnr"] == p["psnr"]]
    best = max(scored, key=lambda p: (p["psnr"], -p["base_size"][0] * p["base_size"][1]))["mode"] if scored else None
    full = summaries.get("full")
    return {"train_size": list(train_size), "points": points, "best": best,
            "full_psnr": full.psnr if full is not None and full.images else None}


def ablation_text(ablation: dict) -> str:
    """The ablation as lines of text: PSNR against window, the best marked."""
    lines = [f"window ablation (train {ablation['train_size'][0]}x{ablation['train_size'][1]}):"]
    for p in ablation["points"]:
        mark = "  <- best" if p["mode"] == ablation["best"] else ""
        lines.append(f"  base {p['base_size'][0]}x{p['base_size'][1]} ({p['relative']:g}x train): "
                     f"PSNR {p['psnr']:.4f} dB, SSIM {p['ssim']:.4f}{mark}")
    if ablation["full_psnr"] is not None:
        lines.append(f"  full image (no TLC): PSNR {ablation['full_psnr']:.4f} dB")
    return "\n".join(lines)


__all__ = ["ablation_mode", "ablation_text", "base_of", "mode_kind", "window_ablation"]
