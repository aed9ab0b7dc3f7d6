"""report.html: an evaluation as one self-contained page a person can open offline.

The page holds everything inline (CSS, JavaScript, the chart as SVG, images as data URIs) and a
Content-Security-Policy that forbids loading anything else, so it works from a file, a mail
attachment or an archive. Sections: the settings, the summary per mode (the numbers of
summary.json), a PSNR-per-image chart with one series per mode, a per-image table sortable by any
column, and a viewer comparing any two of input / each mode / target of one image with a split
slider, zoom and pan shared by both sides.

The viewer shows lossless centre crops (``VIEW_CROP`` pixels a side) of the first
``VIEW_IMAGES`` pairs, written by the evaluation to ``views/<name>/<panel>.png``; that bounds the
page's size (at most VIEW_IMAGES x 5 crops of VIEW_CROP^2 RGB pixels) whatever the dataset's size.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ablation import base_of
from .report import panel_order

VIEW_CROP = 384  # pixels a side of the viewer's centre crops
VIEW_IMAGES = 12  # pairs shown in the viewer: the first ones, in the dataset's order

# Series colours (colour-blind safe, Okabe-Ito) per mode.
MODE_COLOURS = {"full": "#0072B2", "tiles": "#E69F00", "tlc": "#009E73"}
# The window ablation's "tlc@..." modes, smallest window first (the rest of Okabe-Ito's palette).
ABLATION_COLOURS = ("#009E73", "#56B4E9", "#CC79A7", "#D55E00", "#000000", "#F0E442")


def mode_colour(mode: str, modes: Sequence[str]) -> str:
    """A mode's series colour; the "tlc@..." modes among ``modes`` get one each, by window size."""
    if mode in MODE_COLOURS:
        return MODE_COLOURS[mode]
    base = base_of(mode)
    if base is None:
        return "#666"
    rank = sum(1 for m in modes if base_of(m) is not None and base_of(m) < base)
    return ABLATION_COLOURS[rank % len(ABLATION_COLOURS)]


@dataclass(frozen=True)
class View:
    """The viewer's images of one pair.

    Attributes:
        name: the pair's name.
        images: panel ("input", a mode, "target") -> PNG bytes, all the same size.
        input_psnr, input_ssim: the input scored against the target (dB, unitless).
    """

    name: str
    images: dict[str, bytes]
    input_psnr: float
    input_ssim: float


def views_complete(out_dir: Path, name: str, modes: Iterable[str]) -> bool:
    """Whether ``out_dir/views/<name>/`` holds every panel of ``modes`` and the input's score."""
    folder = Path(out_dir) / "views" / name
    return (folder / "input.json").is_file() and all((folder / f"{p}.png").is_file() for p in panel_order(modes))


def load_views(out_dir: Path, names: Sequence[str], modes: Iterable[str]) -> list[View]:
    """The views of the pairs ``names`` found complete under ``out_dir/views/``, in that order."""
    modes = list(modes)
    views = []
    for name in names:
        if not views_complete(out_dir, name, modes):
            continue
        folder = Path(out_dir) / "views" / name
        score = json.loads((folder / "input.json").read_text())
        images = {p: (folder / f"{p}.png").read_bytes() for p in panel_order(modes)}
        views.append(View(name, images, float(score["psnr"]), float(score["ssim"])))
    return views


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(value: float | None, digits: int, extra: str = "") -> str:
    """A numeric table cell: the rounded number shown, the exact one in data-value (for sorting
    and for anyone checking the page against summary.json)."""
    exact = "" if value is None or not math.isfinite(value) else repr(float(value))
    return f'<td class="num{extra}" data-value="{html.escape(exact)}">{_fmt(value, digits)}</td>'


def _json_for_script(data: object) -> str:
    """JSON safe inside <script>: no "<", ">" or "&" that could end the element or start markup."""
    text = json.dumps(data, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _summary_section(summary: dict, modes: list[str]) -> str:
    head = "".join(f"<th>{t}</th>" for t in ("mode", "images", "PSNR (dB)", "SSIM", "s / image", "peak MiB"))
    body = []
    for mode in modes:
        s = summary["modes"][mode]
        peak = s.get("peak_memory_mib")
        body.append(
            f'<tr data-mode="{html.escape(mode)}"><th scope="row">'
            f'<span class="swatch" style="background:{mode_colour(mode, modes)}"></span>{html.escape(mode)}</th>'
            f'{_cell(_number(s["images"]), 0, " images")}{_cell(_number(s["psnr"]), 4, " psnr")}'
            f'{_cell(_number(s["ssim"]), 4, " ssim")}{_cell(_number(s["seconds_per_image"]), 3, " seconds")}'
            f'{_cell(_number(peak) if peak is not None else None, 0, " peak")}</tr>'
        )
    return (f'<section id="summary"><h2>Summary per mode</h2><table id="summary-table"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>'
            '<p class="note">Means over the images; the same numbers as summary.json. '
            's / image: model time per image.</p></section>')


def _per_image(rows: list[dict], modes: list[str]) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]]]:
    """Image names in the rows' order and image -> mode -> (PSNR, SSIM)."""
    names: list[str] = []
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        if r["mode"] not in modes:
            continue
        if r["image"] not in table:
            names.append(r["image"])
            table[r["image"]] = {}
        table[r["image"]][r["mode"]] = (_number(r["psnr"]), _number(r["ssim"]))
    return names, table


def _table_section(names: list[str], table: dict, modes: list[str], viewable: set[str]) -> str:
    heads = ['<th data-type="text">image</th>']
    for mode in modes:
        heads.append(f'<th data-type="number">{html.escape(mode)} PSNR</th>')
        heads.append(f'<th data-type="number">{html.escape(mode)} SSIM</th>')
    gain = "tlc" in modes and "full" in modes
    if gain:
        heads.append('<th data-type="number" title="PSNR of tlc minus PSNR of full">tlc &minus; full (dB)</th>')
    body = []
    for name in names:
        scores = table[name]
        finite = [scores[m][0] for m in modes if m in scores and math.isfinite(scores[m][0])]
        best = max(finite) if finite else None
        label = html.escape(name)
        if name in viewable:
            label = (f'<a href="#viewer" class="view-link" data-image="{html.escape(name)}" '
                     f'title="open in the viewer">{label}</a>')
        cells = [f'<td data-value="{html.escape(name)}">{label}</td>']
        for mode in modes:
            p, s = scores.get(mode, (None, None))
            cells.append(_cell(p, 2, " best" if p is not None and p == best and len(finite) > 1 else ""))
            cells.append(_cell(s, 4))
        if gain:
            d = scores["tlc"][0] - scores["full"][0] if "tlc" in scores and "full" in scores else None
            cells.append(_cell(d, 2))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<section id="images"><h2>Per image</h2><p class="note">Click a column header to sort '
            f'(again to reverse); the best PSNR of each image is in bold.</p>'
            f'<table id="per-image" class="sortable"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></section>')


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _chart_section(names: list[str], table: dict, modes: list[str]) -> str:
    """PSNR per image, one series per mode, as inline SVG (x: images in order, y: dB)."""
    values = [table[n][m][0] for n in names for m in modes if m in table[n] and math.isfinite(table[n][m][0])]
    if not values:
        return '<section id="chart"><h2>PSNR per image</h2><p class="note">No scores yet.</p></section>'
    width, height, left, right, top, bottom = 960, 320, 56, 16, 36, 40
    low, high = min(values), max(values)
    pad = max((high - low) * 0.08, 0.05)
    low, high = low - pad, high + pad
    n = len(names)

    def x(i: int) -> float:
        return left + (width - left - right) * (0.5 if n == 1 else i / (n - 1))

    def y(v: float) -> float:
        return top + (height - top - bottom) * (high - v) / (high - low)

    parts = [f'<svg id="psnr-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="PSNR per image for each mode">']
    for t in _ticks(low, high):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text class="axis" x="14" y="{(top + height - bottom) / 2:.0f}" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})" text-anchor="middle">PSNR (dB)</text>')
    parts.append(f'<text class="axis" x="{(left + width - right) / 2:.0f}" y="{height - 8}" '
                 f'text-anchor="middle">images, in the dataset&#39;s order ({n})</text>')
    markers = n <= 400
    for mode in modes:
        colour = mode_colour(mode, modes)
        points = [(i, table[name][mode][0]) for i, name in enumerate(names)
                  if mode in table[name] and math.isfinite(table[name][mode][0])]
        parts.append(f'<g class="series" data-mode="{html.escape(mode)}" stroke="{colour}" fill="{colour}">')
        if len(points) > 1:
            path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
            parts.append(f'<polyline fill="none" stroke-width="1.5" points="{path}"/>')
        if markers:
            for i, v in points:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3"><title>{html.escape(names[i])}: '
                             f'{html.escape(mode)} {v:.2f} dB</title></circle>')
        parts.append("</g>")
    legend_x = left + 8
    for k, mode in enumerate(modes):
        colour = mode_colour(mode, modes)
        parts.append(f'<rect x="{legend_x + k * 80}" y="6" width="12" height="12" fill="{colour}"/>'
                     f'<text class="legend" x="{legend_x + k * 80 + 16}" y="17">{html.escape(mode)}</text>')
    parts.append("</svg>")
    return f'<section id="chart"><h2>PSNR per image</h2>{"".join(parts)}</section>'


def _viewer_section(views: list[View], table: dict, modes: list[str]) -> tuple[str, dict]:
    panels = panel_order(modes)
    data = {"panels": panels, "images": []}
    for view in views:
        finite = math.isfinite(view.input_psnr) and math.isfinite(view.input_ssim)
        scores = {"input": [view.input_psnr, view.input_ssim] if finite else None}
        for mode in modes:
            p, s = table.get(view.name, {}).get(mode, (math.nan, math.nan))
            scores[mode] = [p, s] if math.isfinite(p) and math.isfinite(s) else None
        data["images"].append({
            "name": view.name,
            "src": {p: "data:image/png;base64," + base64.b64encode(view.images[p]).decode("ascii") for p in panels},
            "scores": scores,
        })
    if not views:
        return ('<section id="viewer"><h2>Viewer</h2><p class="note">No images: the viewer shows the pairs whose '
                'crops the evaluation wrote (rerun with --report).</p></section>'), data
    options = "".join(f'<option value="{html.escape(p)}">{html.escape(p)}</option>' for p in panels)
    names = "".join(f'<option value="{i}">{html.escape(v.name)}</option>' for i, v in enumerate(views))
    right = panels[-2] if len(panels) > 2 else panels[-1]
    section = f"""<section id="viewer"><h2>Viewer</h2>
<p class="note">Centre crops ({VIEW_CROP} px) of the first {VIEW_IMAGES} images, lossless. Drag the white handle
or move the split slider; wheel or +/&minus; to zoom, drag the picture to pan; both sides move together.</p>
<div class="controls">
<label>image <select id="view-image">{names}</select></label>
<label>left <select id="view-left" data-default="input">{options}</select></label>
<label>right <select id="view-right" data-default="{html.escape(right)}">{options}</select></label>
<span class="zoom"><button type="button" id="zoom-out" title="zoom out">&minus;</button>
<button type="button" id="zoom-in" title="zoom in">+</button>
<button type="button" id="zoom-fit" title="fit the image">fit</button>
<button type="button" id="zoom-one" title="one image pixel per screen pixel">1:1</button>
<output id="zoom-level">100%</output></span>
<label>split <input type="range" id="split" min="0" max="100" step="0.5" value="50"></label>
</div>
<div id="stage" class="stage">
<div class="layer" id="layer-left"><img id="img-left" alt="left image"></div>
<div class="layer" id="layer-right" style="clip-path: inset(0 0 0 50%)"><img id="img-right" alt="right image"></div>
<div id="handle" class="handle" style="left: 50%"><span></span></div>
<div class="tag" id="tag-left"></div><div class="tag" id="tag-right"></div>
</div></section>"""
    return section, data


def _settings_section(summary: dict, modes: list[str]) -> str:
    settings = summary.get("settings", {})
    protocol = summary.get("protocol", {})
    items = [
        ("model", summary.get("model")),
        ("protocol", protocol.get("name")),
        ("pairs", f"{summary.get('pairs')} ({summary.get('layout')} layout)"),
        ("modes", ", ".join(modes)),
        ("training crop", "x".join(str(v) for v in settings.get("train_size", []))),
        ("TLC window base", "x".join(str(v) for v in settings.get("base_size", []))),
        ("tiles", f"{settings.get('tile')} px, overlap {settings.get('overlap')}"),
        ("device", f"{settings.get('device')}, {settings.get('dtype')}"),
        ("processes", summary.get("processes")),
    ]
    if summary.get("benchmark"):
        items.insert(1, ("benchmark", summary["benchmark"]))
    for subset, per_mode in (summary.get("subsets") or {}).items():
        means = (f"{mode} {s['psnr']:.4f} dB / {s['ssim']:.4f} ({s['images']} images)" for mode, s in per_mode.items())
        items.append((f"subset {subset}", ", ".join(means)))
    for mode, ref in (summary.get("published") or {}).items():
        ssim = f" / {ref['ssim']:.4f}" if ref.get("ssim") is not None else ""
        items.append((f"published ({mode})", f"{ref['psnr']:.2f} dB{ssim}, {ref.get('source', '')}"))
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    failures = summary.get("failures") or []
    failed = ""
    if failures:
        failed = ('<details class="failures"><summary>' + f"{len(failures)} failure(s)</summary><ul>"
                  + "".join(f"<li>{html.escape(str(f))}</li>" for f in failures) + "</ul></details>")
    return f'<section id="settings"><dl>{rows}</dl>{failed}</section>'


def _ablation_section(ablation: dict | None) -> str:
    """The window ablation (``summary["window_ablation"]``): mean PSNR against base size, as a table
    and a line chart, the best marked; empty without an ablation."""
    if not ablation:
        return ""
    points = ablation["points"]
    rows = []
    for p in points:
        best = p["mode"] == ablation["best"]
        rows.append(f'<tr{" class=best" if best else ""}><th scope="row">{html.escape(p["mode"])}</th>'
                    f'<td class="num">{p["base_size"][0]} x {p["base_size"][1]}</td>'
                    f'<td class="num">{_fmt(_number(p["relative"]), 2)}x</td>'
                    f'{_cell(_number(p["psnr"]), 4, " psnr")}{_cell(_number(p["ssim"]), 4, " ssim")}'
                    f'<td>{"best" if best else ""}</td></tr>')
    values = [_number(p["psnr"]) for p in points] + ([_number(ablation["full_psnr"])] if ablation["full_psnr"] else [])
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    low, high = min(finite), max(finite)
    pad = max(high - low, 0.1) * 0.15
    low, high = low - pad, high + pad
    width, height, left, right, top, bottom = 560, 220, 56, 56, 16, 36
    sizes = [p["base_size"][0] * p["base_size"][1] for p in points]
    logs = [math.log(v) for v in sizes]

    def x(i: int) -> float:
        span = (logs[-1] - logs[0]) or 1.0
        return left + (logs[i] - logs[0]) / span * (width - left - right)

    def y(v: float) -> float:
        return top + (high - v) / (high - low) * (height - top - bottom)

    parts = [f'<svg id="ablation-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'style="max-width:{width}px;height:auto" role="img" '
             'aria-label="mean PSNR against the TLC window">']
    for k in range(5):
        v = low + (high - low) * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e6ea"/>'
                     f'<text class="tick" x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    if ablation["full_psnr"] is not None and math.isfinite(_number(ablation["full_psnr"])):
        fy = y(_number(ablation["full_psnr"]))
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{fy:.1f}" y2="{fy:.1f}" stroke="{MODE_COLOURS["full"]}" '
                     f'stroke-dasharray="5 4"/><text class="legend" x="{width - right}" y="{fy - 5:.1f}" '
                     'text-anchor="end">full image</text>')
    path = " ".join(f"{x(i):.1f},{y(_number(p['psnr'])):.1f}" for i, p in enumerate(points))
    parts.append(f'<polyline fill="none" stroke="{MODE_COLOURS["tlc"]}" stroke-width="2" points="{path}"/>')
    for i, p in enumerate(points):
        r = 6 if p["mode"] == ablation["best"] else 4
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(_number(p["psnr"])):.1f}" r="{r}" fill="{MODE_COLOURS["tlc"]}">'
                     f'<title>{html.escape(p["mode"])}: {_fmt(_number(p["psnr"]), 4)} dB</title></circle>'
                     f'<text class="tick" x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                     f'{p["base_size"][0]} ({_fmt(_number(p["relative"]), 2)}x)</text>')
    parts.append(f'<text class="tick" x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle">'
                 'base size in image pixels (times the training size)</text></svg>')
    best = html.escape(str(ablation["best"]))
    return (f'<section id="ablation"><h2>Window ablation</h2><p>Mean PSNR of TLC at each base size on the same '
            f'pairs (training crop {ablation["train_size"][0]} x {ablation["train_size"][1]}); best: <b>{best}</b>.</p>'
            f'<table id="ablation-table"><thead><tr><th>mode</th><th>base size</th><th>x train</th><th>PSNR (dB)</th>'
            f'<th>SSIM</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>{"".join(parts)}</section>')


def build_report(summary: dict, rows: list[dict], views: list[View]) -> str:
    """The report page, as text.

    Args:
        summary: the content of summary.json (per-mode means under "modes", settings, protocol).
        rows: per_image.csv's rows (image, mode, psnr, ssim, seconds) of this run's pairs and modes,
            in the dataset's order.
        views: the viewer's images (:func:`load_views`), possibly none.

    Returns:
        one HTML document with no external reference: scripts, styles and images are inline.
    """
    modes = [m for m in panel_order(summary["settings"]["modes"]) if m not in ("input", "target")]
    names, table = _per_image(rows, modes)
    viewer, data = _viewer_section(views, table, modes)
    body = "\n".join([
        _settings_section(summary, modes),
        _summary_section(summary, modes),
        _ablation_section(summary.get("window_ablation")),
        _chart_section(names, table, modes),
        _table_section(names, table, modes, {v.name for v in views}),
        viewer,
    ])
    title = f"tlc evaluation: {summary.get('model', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
{body}
</main>
<script type="application/json" id="report-data">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body></html>
"""


# Nothing but what the page itself holds: a page that tried to fetch anything would show errors.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
:root { --fg: #1d2126; --muted: #5b6470; --line: #d8dde3; --bg: #ffffff; --head: #f2f4f7; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1100px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 1.45em; margin: 0 0 12px; word-break: break-all; }
h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.note { color: var(--muted); font-size: 0.9em; margin: 4px 0 8px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; font-size: 0.92em; }
dt { color: var(--muted); } dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; }
thead th { background: var(--head); position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.sortable thead th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable thead th::after { content: " \\2195"; color: #a0a8b2; }
table.sortable thead th[aria-sort=ascending]::after { content: " \\2191"; color: var(--fg); }
table.sortable thead th[aria-sort=descending]::after { content: " \\2193"; color: var(--fg); }
#images .wrap, #per-image { max-height: 480px; overflow: auto; display: block; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
svg { width: 100%; height: auto; background: #fff; }
svg .grid { stroke: #e6e9ed; } svg .tick, svg .axis, svg .legend { font-size: 12px; fill: var(--muted); }
svg .legend { fill: var(--fg); }
.controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin: 8px 0; font-size: 0.92em; }
.controls select, .controls button { font: inherit; }
.controls button { min-width: 2.2em; }
.stage { position: relative; height: 520px; overflow: hidden; background: #2b2f36; cursor: grab;
         touch-action: none; user-select: none; }
.stage.panning { cursor: grabbing; }
.layer { position: absolute; inset: 0; }
.layer img { position: absolute; left: 0; top: 0; transform-origin: 0 0; max-width: none; }
.stage.pixels img { image-rendering: pixelated; }
.handle { position: absolute; top: 0; bottom: 0; width: 0; border-left: 2px solid #fff; cursor: ew-resize; }
.handle span { position: absolute; top: 50%; left: -9px; width: 16px; height: 40px; margin-top: -20px;
               background: #fff; border-radius: 4px; box-shadow: 0 0 3px rgba(0,0,0,.6); }
.handle::before { content: ""; position: absolute; top: 0; bottom: 0; left: -10px; width: 18px; }
.tag { position: absolute; top: 8px; padding: 3px 8px; background: rgba(0,0,0,.65); color: #fff;
       font-size: 13px; border-radius: 3px; pointer-events: none; white-space: pre; }
#tag-left { left: 8px; } #tag-right { right: 8px; text-align: right; }
a.view-link { color: #0b5cad; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);

  function sortable(table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var numeric = th.getAttribute("data-type") === "number";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
          if (numeric) {
            x = x === "" ? NaN : parseFloat(x); y = y === "" ? NaN : parseFloat(y);
            if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }  // blanks last either way
            return ascending ? x - y : y - x;
          }
          return ascending ? x.localeCompare(y) : y.localeCompare(x);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);

  var stage = document.getElementById("stage");
  if (!stage || !data.images.length) { return; }
  var imageSelect = document.getElementById("view-image");
  var leftSelect = document.getElementById("view-left"), rightSelect = document.getElementById("view-right");
  var imgLeft = document.getElementById("img-left"), imgRight = document.getElementById("img-right");
  var layerRight = document.getElementById("layer-right"), handle = document.getElementById("handle");
  var split = document.getElementById("split"), zoomLevel = document.getElementById("zoom-level");
  var tagLeft = document.getElementById("tag-left"), tagRight = document.getElementById("tag-right");
  var view = { scale: 1, x: 0, y: 0 }, size = { w: 1, h: 1 };
  leftSelect.value = leftSelect.getAttribute("data-default");
  rightSelect.value = rightSelect.getAttribute("data-default");

  function label(panel, scores) {
    var s = scores[panel];
    if (panel === "target" || !s) { return panel; }
    return panel + " \u00b7 PSNR " + s[0].toFixed(2) + " dB \u00b7 SSIM " + s[1].toFixed(4);
  }
  function apply() {
    var t = "translate(" + view.x + "px, " + view.y + "px) scale(" + view.scale + ")";
    imgLeft.style.transform = t;
    imgRight.style.transform = t;
    zoomLevel.textContent = Math.round(view.scale * 100) + "%";
    stage.classList.toggle("pixels", view.scale >= 2);
  }
  function fit() {
    var w = stage.clientWidth, h = stage.clientHeight;
    view.scale = Math.min(w / size.w, h / size.h);
    view.x = (w - size.w * view.scale) / 2;
    view.y = (h - size.h * view.scale) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    var scale = Math.min(32, Math.max(0.05, view.scale * factor));
    view.x = cx - (cx - view.x) * scale / view.scale;
    view.y = cy - (cy - view.y) * scale / view.scale;
    view.scale = scale;
    apply();
  }
  function setSplit(percent) {
    percent = Math.min(100, Math.max(0, percent));
    layerRight.style.clipPath = "inset(0 0 0 " + percent + "%)";
    handle.style.left = percent + "%";
    split.value = percent;
  }
  function show() {
    var item = data.images[+imageSelect.value];
    imgLeft.src = item.src[leftSelect.value];
    imgRight.src = item.src[rightSelect.value];
    tagLeft.textContent = label(leftSelect.value, item.scores);
    tagRight.textContent = label(rightSelect.value, item.scores);
  }
  function load() {
    var first = true;
    imgLeft.onload = function () {
      if (!first) { return; }
      first = false;
      size = { w: imgLeft.naturalWidth, h: imgLeft.naturalHeight };
      fit();
    };
    show();
  }

  imageSelect.addEventListener("change", load);
  leftSelect.addEventListener("change", show);
  rightSelect.addEventListener("change", show);
  split.addEventListener("input", function () { setSplit(parseFloat(split.value)); });
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomAt(1.5, stage.clientWidth / 2, stage.clientHeight / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomAt(1 / 1.5, stage.clientWidth / 2, stage.clientHeight / 2);
  });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("zoom-one").addEventListener("click", function () {
    zoomAt(1 / view.scale, stage.clientWidth / 2, stage.clientHeight / 2);
  });
  stage.addEventListener("wheel", function (e) {
    e.preventDefault();
    var box = stage.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });

  var drag = null;
  stage.addEventListener("pointerdown", function (e) {
    var box = stage.getBoundingClientRect();
    drag = { what: handle.contains(e.target) ? "split" : "pan", x: e.clientX, y: e.clientY,
             vx: view.x, vy: view.y, box: box };
    stage.setPointerCapture(e.pointerId);
    stage.classList.toggle("panning", drag.what === "pan");
  });
  stage.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    if (drag.what === "split") {
      setSplit((e.clientX - drag.box.left) / drag.box.width * 100);
    } else {
      view.x = drag.vx + e.clientX - drag.x;
      view.y = drag.vy + e.clientY - drag.y;
      apply();
    }
  });
  function release() { drag = null; stage.classList.remove("panning"); }
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);

  Array.prototype.forEach.call(document.querySelectorAll("a.view-link"), function (a) {
    a.addEventListener("click", function () {
      var name = a.getAttribute("data-image");
      for (var i = 0; i < data.images.length; i++) {
        if (data.images[i].name === name) { imageSelect.value = String(i); load(); }
      }
    });
  });
  load();
})();
"""
