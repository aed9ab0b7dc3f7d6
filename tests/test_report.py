"""What people look at: the labelled comparison strips and report.html, the latter also opened in a
real headless Chromium (selenium + chromedriver)."""

from __future__ import annotations

import base64
import csv
import html.parser
import io as bytes_io
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tlc import io as tlc_io
from tlc.cli import main
from tlc.eval.metrics import PROTOCOLS
from tlc.eval.report import panel_label, panel_order, side_by_side
from tlc.eval.report_html import VIEW_CROP, View, build_report

FIXED = ["input", "full", "tiles", "tlc", "target"]


# --- strips -------------------------------------------------------------------------------------


def test_panel_order_is_fixed_whatever_the_modes_order():
    rng = random.Random(14)
    for _ in range(20):
        modes = rng.sample(["full", "tiles", "tlc"], rng.randint(1, 3))
        expected = ["input"] + [m for m in ("full", "tiles", "tlc") if m in modes] + ["target"]
        assert panel_order(modes) == expected, modes
    assert panel_order(["tlc", "full"]) == ["input", "full", "tlc", "target"]
    with pytest.raises(ValueError, match="best"):
        panel_order(["full", "best"])


def test_panel_label_text():
    assert panel_label("tlc", 30.123456, 0.876543) == "tlc\nPSNR 30.12 dB\nSSIM 0.8765"
    assert panel_label("input", 19.999, 0.5) == "input\nPSNR 20.00 dB\nSSIM 0.5000"
    assert panel_label("target") == "target"


def test_labels_are_drawn_on_a_band_above_each_panel():
    rng = np.random.default_rng(3)
    panels = [rng.random((int(rng.integers(70, 90)), int(rng.integers(150, 170)), 3), dtype=np.float32)
              for _ in range(3)]
    panels[1] = panels[1][:, :, :1]  # gray is shown as RGB
    plain = side_by_side(panels, crop=64, gap=3)
    labels = ["input\nPSNR 20.00 dB\nSSIM 0.5000", "full\nPSNR 30.00 dB\nSSIM 0.9000", "target"]
    labelled = side_by_side(panels, labels, crop=64, gap=3)
    band = labelled.shape[0] - plain.shape[0]
    assert band > 0 and labelled.shape[1] == plain.shape[1] == 3 * 64 + 2 * 3
    # Below the band: the same crops as without labels, the centre 64 x 64 of each panel.
    np.testing.assert_array_equal(labelled[band:], plain)
    for i, p in enumerate(panels):
        top, left = (p.shape[0] - 64) // 2, (p.shape[1] - 64) // 2
        expected = np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p
        np.testing.assert_array_equal(plain[:, i * 67 : i * 67 + 64], expected[top : top + 64, left : left + 64])
    # The band carries dark text on white over each panel; different texts give different pixels.
    for i in range(3):
        region = labelled[:band, i * 67 : i * 67 + 64]
        assert region.min() < 0.3 and np.mean(region == 1.0) > 0.5
    assert not np.array_equal(labelled[:band, :64], labelled[:band, 67:131])
    with pytest.raises(ValueError, match="2 labels for 3 panels"):
        side_by_side(panels, labels[:2])


# --- a tiny evaluation with --compare --report -----------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """Three noisy/clean pairs (scikit-image photos) scored with the bundled tiny-nafnet, modes
    given out of order, with --save-images --compare --report."""
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea"):
        target = getattr(skimage_data, name)()[:96, :120].astype(np.float32) / 255
        noisy = np.clip(target + rng.normal(0, 0.08, target.shape), 0, 1).astype(np.float32)
        tlc_io.write_image(root / "pairs" / "target" / f"{name}.png", target)
        tlc_io.write_image(root / "pairs" / "input" / f"{name}.png", noisy)
    out = root / "out"
    code = main(["eval", str(root / "pairs"), "--model", "tiny-nafnet", "--modes", "tlc,tiles,full", "--tile", "64",
                 "--overlap", "16", "--out", str(out), "--save-images", "--compare", "--report", "--device", "cpu"])
    assert code == 0
    return root


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_strips_follow_the_fixed_order_with_the_records_numbers(evaluation):
    out, pairs = evaluation / "out", evaluation / "pairs"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compare_order"] == FIXED
    rows = {(r["image"], r["mode"]): r for r in read_rows(out / "per_image.csv")}
    for name in ("astronaut", "coffee", "chelsea"):
        degraded = tlc_io.read_image(pairs / "input" / f"{name}.png").pixels
        target = tlc_io.read_image(pairs / "target" / f"{name}.png").pixels
        images = {"input": degraded, "target": target}
        labels = {"target": "target"}
        for mode in ("full", "tiles", "tlc"):
            images[mode] = tlc_io.read_image(out / "images" / mode / f"{name}.png").pixels
            row = rows[(name, mode)]
            labels[mode] = f"{mode}\nPSNR {float(row['psnr']):.2f} dB\nSSIM {float(row['ssim']):.4f}"
        # The input against the target, by hand on 8-bit samples (PSNR) and with the protocol (SSIM).
        mse = np.mean((np.rint(degraded * 255.0) - np.rint(target * 255.0)) ** 2)
        input_psnr = 10 * np.log10(255.0**2 / mse)
        input_ssim = PROTOCOLS["gopro"].score(degraded, target)[1]
        labels["input"] = f"input\nPSNR {input_psnr:.2f} dB\nSSIM {input_ssim:.4f}"
        expected = side_by_side([images[p] for p in FIXED], [labels[p] for p in FIXED])
        strip = tlc_io.read_image(out / "compare" / f"{name}.png").pixels
        np.testing.assert_array_equal(np.rint(strip * 255), np.rint(expected * 255))


class _Refs(html.parser.HTMLParser):
    """Every src/href attribute, and the data-value cells of the two tables."""

    def __init__(self):
        super().__init__()
        self.refs, self.tables, self.table, self.row = [], {}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "table":
            self.table = attrs.get("id")
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.row = []
            self.tables[self.table].append(self.row)
        elif tag == "td" and self.row is not None:
            self.row.append(attrs.get("data-value"))

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None


def report_data(page: str) -> dict:
    start = page.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    return json.loads(page[start : page.index("</script>", start)])


def test_report_is_self_contained_and_holds_the_summary(evaluation):
    out = evaluation / "out"
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    refs = _Refs()
    refs.feed(page)
    assert refs.refs and all(r.startswith(("data:", "#")) for r in refs.refs), refs.refs
    assert "http://" not in page and "https://" not in page and "<link rel=\"stylesheet\"" not in page
    assert "default-src 'none'" in page  # the browser itself refuses anything not inline
    # Summary: full, tiles, tlc in that order; the cells carry summary.json's numbers exactly.
    body = [r for r in refs.tables["summary-table"] if r]
    assert len(body) == 3
    for mode, cells in zip(("full", "tiles", "tlc"), body):
        s = summary["modes"][mode]
        assert [float(c) for c in cells[:4]] == [s["images"], s["psnr"], s["ssim"], s["seconds_per_image"]]
        assert float(cells[4]) == s["peak_memory_mib"]
    # Per image: the rows of per_image.csv.
    rows = {(r["image"], r["mode"]): r for r in read_rows(out / "per_image.csv")}
    table = [r for r in refs.tables["per-image"] if r]
    assert [r[0] for r in table] == ["astronaut", "chelsea", "coffee"]
    for cells in table:
        name = cells[0]
        for k, mode in enumerate(("full", "tiles", "tlc")):
            assert float(cells[1 + 2 * k]) == float(rows[(name, mode)]["psnr"])
            assert float(cells[2 + 2 * k]) == float(rows[(name, mode)]["ssim"])
        gain = float(rows[(name, "tlc")]["psnr"]) - float(rows[(name, "full")]["psnr"])
        assert float(cells[7]) == pytest.approx(gain, abs=1e-12)
    # The viewer: every panel of every pair, each the centre crop of what was scored.
    data = report_data(page)
    assert data["panels"] == FIXED and [i["name"] for i in data["images"]] == ["astronaut", "chelsea", "coffee"]
    for item in data["images"]:
        for mode in ("full", "tiles", "tlc"):
            row = rows[(item["name"], mode)]
            assert item["scores"][mode] == [float(row["psnr"]), float(row["ssim"])]
            png = base64.b64decode(item["src"][mode].removeprefix("data:image/png;base64,"))
            path = evaluation / f"shown-{item['name']}-{mode}.png"
            path.write_bytes(png)
            shown = tlc_io.read_image(path).pixels
            saved = tlc_io.read_image(out / "images" / mode / f"{item['name']}.png").pixels
            assert shown.shape[:2] == saved.shape[:2] == (96, 120)  # under VIEW_CROP: whole
            np.testing.assert_array_equal(shown, saved)
    assert (out / "views").is_dir() and VIEW_CROP >= 120


def test_report_is_rewritten_on_resume_without_running_the_model(evaluation, capsys):
    out = evaluation / "out"
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    views = {p: p.stat().st_mtime_ns for p in (out / "views").rglob("*")}
    code = main(["eval", str(evaluation / "pairs"), "--model", "tiny-nafnet", "--modes", "full,tlc,tiles", "--tile",
                 "64", "--overlap", "16", "--out", str(out), "--report", "--device", "cpu"])
    assert code == 0
    assert "resuming: 9 of 9" in capsys.readouterr().err
    assert (out / "report.html").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "views").rglob("*")} == views  # not restored again


def test_report_escapes_text():
    nasty = '<script>alert("x")</script> & </b>'
    summary = {
        "modes": {"full": {"images": 1, "psnr": 30.5, "ssim": 0.9, "seconds_per_image": 0.1, "peak_memory_mib": None}},
        "settings": {"modes": ["full"], "train_size": [8, 8], "base_size": [12, 12], "tile": 8, "overlap": 2,
                     "device": "cpu", "dtype": "float32"},
        "protocol": {"name": "gopro"}, "model": nasty, "pairs": 1, "layout": "x", "processes": 1,
        "failures": [nasty],
    }
    rows = [{"image": nasty, "mode": "full", "psnr": "30.5", "ssim": "0.9", "seconds": "0.1"}]
    views = [View(nasty, {p: b"\x89PNG" for p in ("input", "full", "target")}, 20.0, 0.5)]
    page = build_report(summary, rows, views)
    assert "<script>alert" not in page and "</b>" not in page
    assert page.count("<script") == 2  # the data and the code, nothing injected
    data = report_data(page)
    assert data["images"][0]["name"] == nasty and data["images"][0]["scores"]["full"] == [30.5, 0.9]


# --- the report in a real browser ---------------------------------------------------------------------


def browser_required() -> bool:
    """CI (the CI variable, or .ci/run's TLC_REQUIRE_BROWSER=1) must run the browser test, never skip it."""
    return bool(os.environ.get("CI") or os.environ.get("TLC_REQUIRE_BROWSER"))


@pytest.fixture(scope="module")
def chrome():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver_path)) if p is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = (f"headless browser test needs {', '.join(missing)} "
                  "(Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
        if browser_required():
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2200"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def test_report_in_headless_chromium(chrome, evaluation, tmp_path):  # chrome first: a skip costs nothing
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    out = evaluation / "out"
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out / "per_image.csv")
    chrome.get((out / "report.html").resolve().as_uri())
    find = chrome.find_element
    # The viewer has loaded its first image and fitted it.
    for _ in range(50):
        if chrome.execute_script("return document.getElementById('img-left').naturalWidth") > 0:
            break
        time.sleep(0.1)
    assert chrome.execute_script("return document.getElementById('img-left').naturalWidth") == 120

    # Summary numbers in the DOM equal summary.json (exact in data-value, rounded in the text).
    for mode in ("full", "tiles", "tlc"):
        row = find(By.CSS_SELECTOR, f'#summary-table tr[data-mode="{mode}"]')
        psnr, ssim = row.find_element(By.CSS_SELECTOR, "td.psnr"), row.find_element(By.CSS_SELECTOR, "td.ssim")
        assert float(psnr.get_attribute("data-value")) == summary["modes"][mode]["psnr"]
        assert float(ssim.get_attribute("data-value")) == summary["modes"][mode]["ssim"]
        assert psnr.text == f"{summary['modes'][mode]['psnr']:.4f}"
        assert ssim.text == f"{summary['modes'][mode]['ssim']:.4f}"

    # Clicking "tlc PSNR" sorts the per-image rows by it, again reverses.
    tlc_psnr = {r["image"]: float(r["psnr"]) for r in rows if r["mode"] == "tlc"}
    header = next(th for th in chrome.find_elements(By.CSS_SELECTOR, "#per-image thead th")
                  if th.text.startswith("tlc PSNR"))

    def order():
        return [td.text for td in chrome.find_elements(By.CSS_SELECTOR, "#per-image tbody tr td:first-child")]

    assert order() == ["astronaut", "chelsea", "coffee"]
    header.click()
    assert order() == sorted(tlc_psnr, key=tlc_psnr.get)
    header.click()
    assert order() == sorted(tlc_psnr, key=tlc_psnr.get, reverse=True)

    # The split: the slider (keyboard) and the handle (mouse) move the right side's clip and the handle.
    layer = find(By.ID, "layer-right")
    handle = find(By.ID, "handle")
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", find(By.ID, "stage"))
    assert layer.value_of_css_property("clip-path") == "inset(0px 0px 0px 50%)"
    x_before = handle.rect["x"]
    slider = find(By.ID, "split")
    slider.send_keys(Keys.HOME)
    assert layer.value_of_css_property("clip-path") == "inset(0px 0px 0px 0%)" and handle.rect["x"] < x_before - 100
    slider.send_keys(Keys.END)
    assert layer.value_of_css_property("clip-path") == "inset(0px 0px 0px 100%)" and handle.rect["x"] > x_before + 100
    stage = find(By.ID, "stage")
    ActionChains(chrome).click_and_hold(handle).move_to_element_with_offset(stage, -stage.rect["width"] // 4, 0) \
        .release().perform()
    clip = layer.value_of_css_property("clip-path")
    percent = float(clip.removeprefix("inset(0px 0px 0px ").removesuffix("%)"))
    assert percent == pytest.approx(25, abs=2), clip
    assert handle.rect["x"] == pytest.approx(stage.rect["x"] + stage.rect["width"] * percent / 100, abs=3)

    # Zoom (button, wheel) and pan change both sides' transforms, identically.
    def transforms():
        return chrome.execute_script(
            "return [document.getElementById('img-left').style.transform,"
            " document.getElementById('img-right').style.transform]")

    seen = [transforms()]
    find(By.ID, "zoom-in").click()
    seen.append(transforms())
    ActionChains(chrome).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -200).perform()
    seen.append(transforms())
    ActionChains(chrome).move_to_element_with_offset(stage, stage.rect["width"] // 3, 0).click_and_hold() \
        .move_by_offset(-60, 40).release().perform()
    seen.append(transforms())
    for left, right in seen:
        assert left == right and left.startswith("translate(")
    assert len({left for left, _ in seen}) == len(seen)  # each step changed it
    scale = [float(t.split("scale(")[1].rstrip(")")) for t, _ in seen]
    assert scale[1] == pytest.approx(scale[0] * 1.5) and scale[2] > scale[1] and scale[3] == scale[2]

    # Another pair and panels: the images and labels follow.
    Select(find(By.ID, "view-image")).select_by_visible_text("coffee")
    Select(find(By.ID, "view-right")).select_by_value("target")
    data = report_data((out / "report.html").read_text())
    coffee = next(i for i in data["images"] if i["name"] == "coffee")
    assert find(By.ID, "img-right").get_attribute("src") == coffee["src"]["target"]
    assert find(By.ID, "tag-right").text == "target"
    psnr, ssim = coffee["scores"]["input"]
    assert find(By.ID, "tag-left").text == f"input \u00b7 PSNR {psnr:.2f} dB \u00b7 SSIM {ssim:.4f}"

    # No console errors, and a screenshot with content.
    severe = [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    chrome.execute_script("window.scrollTo(0, 0)")
    shot = chrome.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(shot)
    from PIL import Image

    pixels = np.asarray(Image.open(bytes_io.BytesIO(shot)).convert("RGB"))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 800
    packed = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50 and pixels.std() > 10  # many colours: text, chart and photos drawn
