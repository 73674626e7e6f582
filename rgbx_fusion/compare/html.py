"""``report.html``: the whole compare report in one self-contained file.

Every image is embedded as a base64 ``data:`` URI and the CSS and script are inline, so
the file opens from disk (``file://``) with no server and references no URL. Contents:
a summary, the results table (the columns of ``results.md``, sortable by clicking a
header), failed runs, the plots, the robustness plot when ``--robustness`` wrote one,
and the qualitative gallery (:mod:`rgbx_fusion.compare.gallery`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rgbx_fusion.compare.gallery import Gallery
from rgbx_fusion.compare.report import _finite, _pm, pareto_front
from rgbx_fusion.data.atomic import atomic_path

PLOTS = (
    ("miou_vs_gflops.png", "Test mIoU against GFLOPs; the dashed line is the Pareto front."),
    ("per_class_iou.png", "Per-class test IoU of every variant (mean over seeds)."),
)
ROBUSTNESS_PLOT = "robustness.png"
MISSING_TABLE = "robustness.md"
PARETO_MARK = ' <span class="pareto" title="Pareto front: GFLOPs vs test mIoU">*</span>'

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem;
       color: #1d1d1f; background: #fff; }
h1 { margin-bottom: 0.2rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; }
#results th { background: #f4f4f6; cursor: pointer; user-select: none; white-space: nowrap; }
#results th:hover { background: #e6e6ea; }
#results td { white-space: nowrap; }
#results td.num { text-align: right; font-variant-numeric: tabular-nums; }
#results tr.failed td { background: #fdecec; white-space: normal; }
#results td.status { color: #b00020; font-weight: 600; }
.arrow { display: inline-block; width: 1em; color: #555; }
.pareto { color: #b36b00; font-weight: 700; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 0.85rem; }
table.gallery th { background: #f4f4f6; font-weight: 600; }
table.gallery td { padding: 2px; }
table.gallery img { width: 160px; height: auto; display: block; image-rendering: pixelated; }
.legend span.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.25em 0 0.8em;
                      vertical-align: -0.1em; border: 1px solid #999; }
code { font-size: 0.85rem; }
"""

# Sorting: a click sorts by that column, ascending; a second click on it flips the
# direction. Numeric columns compare numbers; cells without a value sort last.
SCRIPT = """
(function () {
  var table = document.getElementById("results");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var state = {col: Number(table.getAttribute("data-sort-col")),
               dir: Number(table.getAttribute("data-sort-dir"))};
  function show() {
    heads.forEach(function (th, i) {
      var on = i === state.col;
      th.querySelector(".arrow").textContent = on ? (state.dir > 0 ? "\\u25B2" : "\\u25BC") : "";
      th.setAttribute("aria-sort", on ? (state.dir > 0 ? "ascending" : "descending") : "none");
    });
  }
  function sortBy(col, dir) {
    var numeric = heads[col].getAttribute("data-type") === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-sort");
      var y = b.cells[col].getAttribute("data-sort");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var r = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return r * dir;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    state = {col: col, dir: dir};
    show();
  }
  heads.forEach(function (th, i) {
    function click() { sortBy(i, i === state.col ? -state.dir : 1); }
    th.addEventListener("click", click);
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); click(); }
    });
  });
  show();
})();
"""


def data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num_key(x: float) -> str:
    return "" if x is None or not math.isfinite(float(x)) else repr(float(x))


def _fmt(x: float, digits: int, scale: float = 1.0) -> str:
    return "n/a" if x is None or math.isnan(float(x)) else f"{float(x) / scale:.{digits}f}"


def _img(path: Path, alt: str) -> str:
    return f'<img src="{data_uri(path)}" alt="{_e(alt)}">'


def results_table(rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]]) -> str:
    """The sortable results table: one row per variant (best test mIoU first), then one
    row per failed run."""
    classes: list[str] = list(rows[0]["classes"]) if rows else []
    front = set(pareto_front([(r["gflops"], r["test_mIoU_mean"]) for r in rows]))
    # (header, numeric?) in the order of results.md
    heads = [
        ("variant", False),
        ("stage", False),
        ("fusion", False),
        ("aligner", False),
        ("params (M)", True),
        ("GFLOPs", True),
        ("latency ms", True),
        ("peak MB", True),
        ("val mIoU", True),
        ("test mIoU", True),
        *((c, True) for c in classes),
    ]
    test_col = 9
    th = "".join(
        f'<th scope="col" tabindex="0" data-type="{"num" if num else "text"}"'
        f' title="click to sort">{_e(h)}<span class="arrow"></span></th>'
        for h, num in heads
    )

    def text(value: Any) -> str:
        return f'<td data-sort="{_e(value)}">{_e(value)}</td>'

    def num(key: float, shown: str) -> str:
        return f'<td class="num" data-sort="{_num_key(key)}">{_e(shown)}</td>'

    order = sorted(range(len(rows)), key=lambda i: -_finite(rows[i]["test_mIoU_mean"]))
    body = []
    for i in order:
        r = rows[i]
        star = PARETO_MARK if i in front else ""
        cells = [
            f'<td data-sort="{_e(r["variant"])}">{_e(r["variant"])}{star}</td>',
            text(r["stage"]),
            text(r["fusion"]),
            text(r["aligner"]),
            num(r["params"], _fmt(r["params"], 2, 1e6)),
            num(r["gflops"], _fmt(r["gflops"], 3)),
            num(r["latency_ms"], _fmt(r["latency_ms"], 1)),
            num(r["peak_memory_mb"], _fmt(r["peak_memory_mb"], 0)),
            num(r["val_mIoU_mean"], _pm(r["val_mIoU_mean"], r["val_mIoU_std"])),
            num(r["test_mIoU_mean"], _pm(r["test_mIoU_mean"], r["test_mIoU_std"])),
            *(num(r[f"iou_{c}"], _fmt(r[f"iou_{c}"], 3)) for c in classes),
        ]
        body.append(f'<tr data-variant="{_e(r["variant"])}">{"".join(cells)}</tr>')
    failed_rows = []
    for f in failed:
        detail = (
            f"seed {_e(f.get('seed', '?'))}: {_e(f.get('error', ''))}"
            f" &mdash; log: <code>{_e(f.get('log', ''))}</code>"
        )
        failed_rows.append(
            f'<tr class="failed" data-variant="{_e(f.get("variant", "?"))}">'
            f"<td>{_e(f.get('variant', '?'))}</td>"
            f'<td class="status">failed</td>'
            f'<td colspan="{len(heads) - 2}">{detail}</td></tr>'
        )
    failed_body = f'<tbody class="failed-runs">{"".join(failed_rows)}</tbody>' if failed else ""
    return (
        f'<div class="scroll"><table id="results" data-sort-col="{test_col}" data-sort-dir="-1">'
        f"<thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody>{failed_body}</table></div>"
    )


def gallery_section(gallery: Gallery) -> str:
    """One row per chosen image: RGB | aux | ground truth | per variant prediction, errors."""
    top = "".join(
        f'<th colspan="2" scope="colgroup">{_e(c.variant)} <span class="note">seed {c.seed}</span>'
        "</th>"
        for c in gallery.columns
    )
    sub = "<th>prediction</th><th>errors</th>" * len(gallery.columns)
    head = (
        '<tr><th rowspan="2">image</th><th rowspan="2">RGB</th><th rowspan="2">aux</th>'
        f'<th rowspan="2">ground truth</th>{top}</tr><tr>{sub}</tr>'
    )
    body = []
    for k, im in enumerate(gallery.images):
        cells = [
            f'<th scope="row">{_e(im.name)}</th>',
            f"<td>{_img(im.rgb, f'RGB {im.name}')}</td>",
            f"<td>{_img(im.aux, f'aux {im.name}')}</td>",
            f"<td>{_img(im.gt, f'ground truth {im.name}')}</td>",
        ]
        for c in gallery.columns:
            cells.append(f"<td>{_img(c.predictions[k], f'{c.variant} prediction {im.name}')}</td>")
            cells.append(f"<td>{_img(c.errors[k], f'{c.variant} errors {im.name}')}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    legend = "".join(
        f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>{_e(name)}'
        for name, (r, g, b) in zip(gallery.classes, gallery.palette, strict=False)
    )
    return (
        '<p class="note legend">Classes:'
        f"{legend}"
        '<span class="swatch" style="background: rgb(0, 0, 0)"></span>ignored</p>'
        '<p class="note">Errors: <span style="color: #d00">red</span> = wrong, grey = correct'
        " (the image dimmed), black = ignored. One seed per variant (the lowest).</p>"
        f'<div class="scroll"><table class="gallery"><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _has_shift_curve(path: Path) -> bool:
    try:
        return "shift_curve" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def render_html(
    out: Path,
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    failed: Sequence[dict[str, Any]] = (),
    gallery: Gallery | None = None,
    title: str | None = None,
) -> str:
    """The text of ``report.html`` (plots are read from ``out``); the title defaults to
    "Fusion comparison: <folder name>"."""
    title = title or f"Fusion comparison: {out.resolve().name}"
    seeds = sorted({int(m["seed"]) for m in metrics})
    variants = list(
        dict.fromkeys([*(m["variant"] for m in metrics), *(f["variant"] for f in failed)])
    )
    summary = (
        f"{len(variants)} variant(s), seeds {_e(seeds or '-')}: {len(metrics)} run(s) finished,"
        f" {len(failed)} failed. Checkpoint chosen on val, scores on test; mean ± std over"
        ' seeds; per-class columns: test IoU. <span class="pareto">*</span> marks the Pareto'
        " front (GFLOPs vs test mIoU). Click a column header to sort."
    )
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="summary">{summary}</p>',
        f'<p class="note">Folder: <code>{_e(out.resolve())}</code></p>',
        "<h2>Results</h2>",
        results_table(rows, failed),
    ]
    plots = [(out / name, caption) for name, caption in PLOTS if (out / name).is_file()]
    if plots:
        parts += ["<h2>Plots</h2>", *(_figure(p, c) for p, c in plots)]
    robustness = out / ROBUSTNESS_PLOT
    if robustness.is_file():
        caption = "Test mIoU under perturbed inputs, one panel per perturbation (mean over seeds)."
        if _has_shift_curve(out / "robustness.json"):
            caption += " The first panel is the shift curve: aux shifts averaged over the four"
            caption += " directions."
        parts += ["<h2>Robustness</h2>", _figure(robustness, caption)]
    missing = out / MISSING_TABLE
    if missing.is_file():
        parts += [
            "<h3>Missing and noisy modalities</h3>",
            '<p class="note">Test mIoU with each aux modality missing from every sample, all'
            " of them missing, each missing at random with p = 0.5 per sample, and each under"
            " Gaussian noise of std 1 (normalised units).</p>",
            pipe_table(missing.read_text(encoding="utf-8")),
        ]
    if gallery is not None and gallery.images:
        parts += ["<h2>Gallery</h2>", gallery_section(gallery)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def pipe_table(markdown: str) -> str:
    """The first Markdown pipe table of ``markdown`` as an HTML table (cells escaped)."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.strip().startswith("|") and not set(line.strip()) <= set("|-: ")
    ]
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html_report(
    out: str | Path,
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    failed: Sequence[dict[str, Any]] = (),
    gallery: Gallery | None = None,
    title: str | None = None,
) -> Path:
    """Write ``<out>/report.html`` (see the module doc); return its path."""
    out = Path(out)
    path = out / "report.html"
    text = render_html(out, rows, metrics, failed, gallery, title)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
