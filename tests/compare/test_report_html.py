"""report.html and the qualitative gallery: a real tiny compare, opened in headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``make test``
installs them). Without them it fails, saying so, unless ``RGBX_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from compare_grids import MID, RGB, write_grid
from PIL import Image

from rgbx_fusion.compare import load_compare_config, run_compare
from rgbx_fusion.compare.gallery import (
    CORRECT_GREY,
    ERROR_RGB,
    aux_colors,
    choose,
    error_map,
    resolve_selection,
)
from rgbx_fusion.compare.report import write_report
from rgbx_fusion.compare.robustness import plot_robustness
from rgbx_fusion.errors import DatasetError, RGBXError

TRAINED = ("mid_add", "rgb_only")
FAKE = ("fake_big", "fake_small")  # finished runs without a checkpoint: table rows, no gallery


def _tiny_config(root: Path, folder: Path) -> Path:
    return write_grid(root, folder, [MID, RGB], [0])


def _fake(name: str, gflops: float, test: float, classes: list[str]) -> dict[str, Any]:
    return {
        "variant": name,
        "seed": 0,
        "stage": "mid",
        "fusion": "AddFusion",
        "aligner": "-",
        "params": 1000,
        "gflops": gflops,
        "val_mIoU": test,
        "test_mIoU": test,
        "test_pixel_acc": 0.5,
        "iou": [test] * len(classes),
        "classes": classes,
    }


FAILED = {
    "variant": "broken",
    "seed": 1,
    "status": "failed",
    "error": "RuntimeError: <boom> & a | pipe",
    "log": "runs/broken/seed1/train.log",
}


@pytest.fixture(scope="module")
def report(tiny_depth_root: Path, module_tmp: Path) -> Iterator[dict[str, Any]]:
    """Two trained variants (their compare writes a first report and gallery), then the
    report again with two fake finished variants, a failed run and a robustness plot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = module_tmp / "out"
        config = load_compare_config(_tiny_config(tiny_depth_root, module_tmp))
        run_compare(config, out, speed=False)
        metrics = [
            json.loads((out / "runs" / v / "seed0" / "metrics.json").read_text()) for v in TRAINED
        ]
        first = {p: p.stat().st_mtime_ns for p in sorted(out.rglob("gallery/**/*.png"))}
        classes = metrics[0]["classes"]
        metrics += [_fake(FAKE[0], 50.0, 0.99, classes), _fake(FAKE[1], 1e-4, 0.0, classes)]
        rob = [
            {"variant": v, "seed": 0, "perturbation": "aux_noise_std", "level": lv, "test_mIoU": y}
            for v in TRAINED
            for lv, y in ((0.0, 0.5), (1.0, 0.3))
        ]
        plot_robustness(rob, out / "robustness.png")
        write_report(metrics, out, failed=[FAILED])
        yield {"out": out, "metrics": metrics, "first_pngs": first}
    finally:
        torch.set_num_threads(threads)


# ---- unit tests -----------------------------------------------------------------------------
def test_selection_is_chosen_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "gallery" / "selection.json"
    names = [f"img{i:03d}" for i in range(20)]
    first = resolve_selection(path, 20, names.__getitem__, count=6)
    assert len(first.indices) == 6 and list(first.indices) == sorted(first.indices)
    assert first.names == tuple(names[i] for i in first.indices)
    assert json.loads(path.read_text())["indices"] == list(first.indices)
    # Reused: the same images, whatever a new draw would give.
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 7'))
    assert resolve_selection(path, 20, names.__getitem__, count=6).indices == first.indices
    # Another count keeps the images already chosen (one seeded shuffle, a longer prefix).
    assert set(choose(20, 3)) <= set(choose(20, 6)) <= set(choose(20, 9))
    assert choose(3, 6) == [0, 1, 2] and choose(5, 0) == []
    # A test split of another size is a typed error that says how to fix it.
    with pytest.raises(DatasetError, match=r"20 samples.*found 21 samples.*delete"):
        resolve_selection(path, 21, lambda i: f"img{i:03d}", count=6)
    renamed = list(names)
    renamed[first.indices[0]] = "other"
    with pytest.raises(RGBXError, match="other"):
        resolve_selection(path, 20, renamed.__getitem__, count=6)


def test_error_map_colours() -> None:
    gt = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = 255  # a white top row, a black bottom row
    out = error_map(pred, gt, ignore_index=255, rgb=rgb)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert tuple(out[0, 1]) == ERROR_RGB and tuple(out[1, 1]) == ERROR_RGB  # wrong: red
    assert tuple(out[0, 2]) == (0, 0, 0)  # ignore: black, even where pred differs
    lo, hi = CORRECT_GREY
    for y, x, level in ((0, 0, hi), (1, 0, lo), (1, 2, lo)):  # correct: the image dimmed
        assert out[y, x, 0] == out[y, x, 1] == out[y, x, 2] == round(level)
    plain = error_map(pred, gt, ignore_index=255)
    assert tuple(plain[0, 0]) == (112, 112, 112) and tuple(plain[0, 1]) == ERROR_RGB


def test_aux_colours_black_where_missing() -> None:
    aux = np.linspace(0.5, 5.0, 24, dtype=np.float32).reshape(4, 6, 1)
    aux[0, 0] = 0.0
    thermal = aux_colors(aux, "thermal")
    assert (thermal[..., 0] == thermal[..., 1]).all() and (thermal[..., 1] == thermal[..., 2]).all()
    depth = aux_colors(aux, "depth")
    assert not (depth[..., 0] == depth[..., 2]).all()  # a colour map, not grey
    for img in (thermal, depth):
        assert tuple(img[0, 0]) == (0, 0, 0) and img.shape == (4, 6, 3)


def test_report_without_finished_runs(tmp_path: Path) -> None:
    rows = write_report([], tmp_path, failed=[FAILED])
    assert rows == []
    md = (tmp_path / "results.md").read_text()
    assert "## Failed runs" in md and "| broken | 1 | RuntimeError: <boom> & a \\| pipe |" in md
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "&lt;boom&gt; &amp; a | pipe" in page and "<boom>" not in page
    assert "Gallery" not in page and not (tmp_path / "gallery").exists()


# ---- the real report --------------------------------------------------------------------------
def _pngs(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("gallery/**/*.png"))}


def test_gallery_files_are_cached_and_consistent(report: dict[str, Any]) -> None:
    out: Path = report["out"]
    selection = json.loads((out / "gallery" / "selection.json").read_text())
    assert selection["size"] == 4 and selection["indices"] == [0, 1, 2, 3]  # 4 test images
    for i in selection["indices"]:
        for kind in ("rgb", "aux", "gt"):
            assert (out / "gallery" / f"{i:05d}_{kind}.png").is_file()
    # The second report (more variants, a failed run) reused every image of the first.
    assert _pngs(out) == report["first_pngs"]
    write_report(report["metrics"], out, failed=[FAILED])
    assert _pngs(out) == report["first_pngs"]
    assert json.loads((out / "gallery" / "selection.json").read_text()) == selection

    for v in TRAINED:
        (key_dir,) = (out / "runs" / v / "seed0" / "gallery").iterdir()
        for i in selection["indices"]:
            gt = np.asarray(Image.open(out / "gallery" / f"{i:05d}_gt.png").convert("RGB"))
            pred = np.asarray(Image.open(key_dir / f"{i:05d}_pred.png").convert("RGB"))
            err = np.asarray(Image.open(key_dir / f"{i:05d}_error.png").convert("RGB"))
            assert gt.shape == pred.shape == err.shape == (48, 64, 3)
            labelled = gt.any(-1)
            red = (err == ERROR_RGB).all(-1)
            assert (red == (labelled & (pred != gt).any(-1))).all()
            assert (err[~labelled] == 0).all()
    for v in FAKE:
        assert not (out / "runs" / v).exists()
    md = (out / "results.md").read_text()
    assert "## Failed runs" in md and "runs/broken/seed1/train.log" in md


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium through the system's chromedriver (never a downloaded one)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        found = (("chromium", binary), ("chromedriver", driver_path))
        reason = " and ".join(name for name, path in found if not path) + " not found on PATH"
        if os.environ.get("RGBX_SKIP_BROWSER") == "1":
            pytest.skip(f"RGBX_SKIP_BROWSER=1: {reason}")
        pytest.fail(
            f"{reason}: run `make test` (it installs Debian's chromium and chromium-driver "
            "with apt-get), or set RGBX_SKIP_BROWSER=1 to skip the browser test"
        )
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=driver_path)
    )
    try:
        yield driver
    finally:
        driver.quit()


def _column(driver: Any, header: str) -> tuple[int, list[float]]:
    heads = driver.find_elements("css selector", "#results thead th")
    col = [h.text.rstrip("▲▼ ") for h in heads].index(header)
    values = driver.execute_script(
        "return Array.from(document.getElementById('results').tBodies[0].rows)"
        ".map(r => r.cells[arguments[0]].getAttribute('data-sort'));",
        col,
    )
    return col, [float(v) for v in values]


def test_report_html_in_a_browser(report: dict[str, Any]) -> None:
    with chromium() as browser:
        _check_page(browser, report["out"] / "report.html")


def _check_page(browser: Any, page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    assert "<link" not in text and "url(" not in text and "@import" not in text
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text)
    )

    browser.get(page.as_uri())
    # every variant and the failed run are rows of the table
    rows = browser.find_elements("css selector", "#results tbody tr")
    variants = [r.get_attribute("data-variant") for r in rows]
    assert sorted(variants) == sorted([*TRAINED, *FAKE, "broken"])
    failed = browser.find_element("css selector", "#results tr.failed")
    assert "failed" in failed.text and "RuntimeError: <boom> & a | pipe" in failed.text
    assert "runs/broken/seed1/train.log" in failed.text
    assert variants[0] == FAKE[0] and variants[-1] == "broken"  # best test mIoU first

    # clicking a header sorts numerically, ascending, then descending
    col, before = _column(browser, "GFLOPs")
    head = browser.find_elements("css selector", "#results thead th")[col]
    head.click()
    _, ascending = _column(browser, "GFLOPs")
    assert ascending == sorted(before) and ascending != before
    assert "▲" in head.text and head.get_attribute("aria-sort") == "ascending"
    head.click()
    _, descending = _column(browser, "GFLOPs")
    assert descending == sorted(before, reverse=True)
    assert "▼" in head.text and head.get_attribute("aria-sort") == "descending"
    last = browser.find_elements("css selector", "#results tbody tr")[-1]
    assert last.get_attribute("data-variant") == "broken"  # failed runs stay below

    # every image decoded: 2 plots, robustness, and 4 test images × (3 + 2 variants × 2)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"
    )
    assert len(images) == 3 + 4 * (3 + 2 * len(TRAINED))
    assert all(done and width > 0 for done, width, _ in images), images
    gallery_heads = [h.text for h in browser.find_elements("css selector", "table.gallery th")]
    assert all(any(h.startswith(v) for h in gallery_heads) for v in TRAINED)

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
