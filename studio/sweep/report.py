"""A sweep's tables and figures, written into its folder (and redrawn by ``studio sweep --report DIR``).

- ``results.csv``: one row per cell (key, axis values, status, metrics, time, worker);
  ``results.json``: the same with every cell's full recipe, plus one row per setting;
  ``settings.csv``: one row per setting (the seeds, and any pooled axis, summarised; summary.py).
- ``plots/<metric>_vs_nfe.png``: the metric against the cost in denoiser evaluations, one line
  per sampler (and per value of the other axes) — the quality-per-NFE curves of DPM-Solver
  (Lu et al. 2022) and the DDIM paper's steps tables (Song et al. 2021).
- ``plots/<metric>_vs_scale.png``: the metric against the guidance scale (Ho & Salimans 2022).
- ``contact_sheet.png``: each setting's final images (its first cell; with pooled labels, the first
  cell of each label) laid out along two axes.

Figures use matplotlib's object API with the Agg canvas (no global state, no display); every file
goes through the atomic writer, so a report is replaced whole.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..evaluation.metrics import COST, METRICS
from ..session.atomic import write_files
from .cells import cell_folder
from .summary import cell_results, load_sweep, summarise

VECTOR = tuple(name for name, m in METRICS.items() if not m.scalar)  # in tables, not plotted
THUMB = 160  # px: the longer side of a contact sheet image
MAX_POOLED_TILES = 16  # pooled values (labels) a setting's tile shows
MARKERS = ("o", "s", "^", "D", "v", "P")  # with DASHES, lines on the same points stay told apart
DASHES = ("-", "--", ":", "-.")
MAX_SHEET_ROWS = 60  # a contact sheet stays an image one can open


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _csv_text(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r.get(h)) for h in header])
    return buf.getvalue()


def _text_writer(text: str):
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return write


def _figure_writer(fig):
    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    return write


def _image_writer(img: np.ndarray):
    def write(tmp: str) -> None:
        from PIL import Image

        Image.fromarray(img).save(tmp, format="PNG")
    return write


def metric_names(rows: list[dict], exclude=("nfe",)) -> list[str]:
    """Scalar metrics present in the setting rows, in the registry's order (quality, then cost)."""
    return [name for name, m in METRICS.items() if m.scalar and name not in exclude
            and any(isinstance(r.get(name), (int, float)) for r in rows)]


def _label(values: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={_show(values.get(k))}" if k != "sampler" else str(values.get(k)) for k in keys) or "all"


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def _varying(rows: list[dict], axes: list[str]) -> list[str]:
    return [a for a in axes if len({json.dumps(r.get(a)) for r in rows}) > 1]


def line_plot(rows: list[dict], axes: list[str], x: str, metric: str, title: str):
    """``metric`` against ``x`` with one line per combination of the other varying axes."""
    from matplotlib.figure import Figure

    others = [a for a in _varying(rows, axes) if a != x and a != "steps"] if x == "nfe" else \
        [a for a in _varying(rows, axes) if a != x]
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        xv, yv = r.get(x), r.get(metric)
        if not isinstance(xv, (int, float)) or not isinstance(yv, (int, float)) or not math.isfinite(yv):
            continue
        lines.setdefault(_label(r, others), []).append((float(xv), float(yv)))
    if not lines:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    drawn: list[tuple[str, list]] = []
    for i, (label, pts) in enumerate(lines.items()):
        pts.sort()
        same = next((other for other, p in drawn if _same_points(p, pts)), None)
        if same is not None:  # it would hide under the earlier line: say so in the legend
            label += f" (= {same})"
        drawn.append((label, pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                markersize=3.5 + 1.5 * (i // len(MARKERS) % 3), linestyle=DASHES[i % len(DASHES)], linewidth=1.4,
                label=label, fillstyle="none" if same is not None else "full")
    ax.set_xlabel(METRICS[x].label if x in METRICS else "guidance scale" if x == "scale" else x)
    m = METRICS.get(metric)
    ax.set_ylabel((m.label if m else metric) + (" (lower is better)" if m and m.lower_is_better else ""))
    if x == "nfe" and max(p[0] for pts in lines.values() for p in pts) / max(min(p[0] for pts in lines.values() for p in pts), 1) > 8:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or list(lines) != ["all"]:
        ax.legend(fontsize=7, loc="best" if len(lines) <= 8 else "upper left",
                  bbox_to_anchor=None if len(lines) <= 8 else (1.02, 1.0))
    return fig


def _same_points(a: list, b: list) -> bool:
    return len(a) == len(b) and all(math.isclose(p[0], q[0]) and math.isclose(p[1], q[1], rel_tol=1e-9, abs_tol=1e-12)
                                    for p, q in zip(a, b))


def _thumbnail(png: Path, side: int) -> np.ndarray | None:
    """``png`` fitted into a ``side``-pixel square (nearest neighbour: samples stay crisp); None if unreadable."""
    from PIL import Image

    from ..session.compose import BG

    try:
        with Image.open(png) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.NEAREST)
            a = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    thumb = np.full((side, side, 3), BG, np.uint8)
    thumb[:a.shape[0], :a.shape[1]] = a
    return thumb


def _setting_tile(out: Path, members: list[dict], pooled: list[str]) -> np.ndarray | None:
    """A setting's tile: its first cell's images; with pooled axes besides the seeds (the labels), the
    first cell of each pooled value side by side, so the tile shows every label the setting pools."""
    from ..session.frames import grid_shape

    firsts: dict[str, dict] = {}
    for r in members:
        firsts.setdefault(json.dumps([r["values"].get(a) for a in pooled]), r)
    shown = [r for r in list(firsts.values())[:MAX_POOLED_TILES] if r.get("status") == "ok"]
    pngs = [cell_folder(out, r["key"]) / "final.png" for r in shown]
    pngs = [p for p in pngs if p.is_file()]
    if not pngs:
        return None
    if len(pngs) == 1:
        return _thumbnail(pngs[0], THUMB)
    rows, cols = grid_shape(len(pngs))
    side = THUMB // cols
    tile = np.full((THUMB, THUMB, 3), 60, np.uint8)
    for i, png in enumerate(pngs):
        small = _thumbnail(png, side - 2)
        if small is not None:
            r, c = divmod(i, cols)
            tile[r * side + 1:r * side + 1 + small.shape[0], c * side + 1:c * side + 1 + small.shape[1]] = small
    return tile


def contact_sheet(out: Path, doc: dict, results: list[dict], settings: list[dict]) -> np.ndarray | None:
    """The final images of each setting, columns along one axis (the steps if they vary, else the last
    varying axis), rows along the others; each captioned with the first metric. A setting shows its
    first cell, or with pooled axes (the labels) the first cell of each pooled value."""
    from ..session.compose import BG, captioned, hstack, vstack

    axes = doc.get("setting_axes", [])
    pooled = [a for a in doc["spec"].get("pool", []) if a != "seed"]
    varying = _varying(settings, axes) or axes[:1]
    col_axis = "steps" if "steps" in varying else (varying[-1] if varying else None)
    row_axes = [a for a in varying if a != col_axis]
    metric = next(iter(metric_names(settings, exclude=COST)), COST[0])  # a quality metric, else the cost
    members: dict[str, list[dict]] = {}
    for r in results:
        members.setdefault(json.dumps([r["values"].get(a) for a in axes]), []).append(r)
    by_setting = {json.dumps([s.get(a) for a in axes]): s for s in settings}
    cols = sorted({json.dumps(s.get(col_axis)) for s in settings}, key=lambda v: _sort_key(json.loads(v))) \
        if col_axis else ["null"]
    rows_keys: list[str] = []
    for s in settings:
        k = json.dumps([s.get(a) for a in row_axes])
        if k not in rows_keys:
            rows_keys.append(k)
    if not members:
        return None
    tiles_rows = []
    shown = rows_keys[:MAX_SHEET_ROWS]
    for rk in shown:
        rvals = dict(zip(row_axes, json.loads(rk)))
        tiles = [captioned(np.full((THUMB, 150, 3), BG, np.uint8), _label(rvals, row_axes)[:28], 11)]
        for ck in cols:
            values = dict(rvals, **({col_axis: json.loads(ck)} if col_axis else {}))
            key = json.dumps([values.get(a) for a in axes])
            cells, s = members.get(key, []), by_setting.get(key, {})
            caption = (f"{col_axis}={_show(values.get(col_axis))}" if col_axis else "")
            if isinstance(s.get(metric), (int, float)):
                caption += f"  {metric[:8]} {s[metric]:.3g}"
            thumb = _setting_tile(out, cells, pooled) if cells else None
            if thumb is None:
                thumb = np.full((THUMB, THUMB, 3), 60, np.uint8)
                caption += "  (failed)" if cells else "  (missing)"
            tiles.append(captioned(thumb, caption, 11))
        tiles_rows.append(hstack(tiles))
    title = doc["spec"].get("title") or f"sweep of {Path(doc['spec']['model']).name}"
    if len(rows_keys) > len(shown):
        title += f"  (the first {len(shown)} of {len(rows_keys)} rows)"
    return captioned(vstack(tiles_rows), title, 14)


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, json.dumps(v))


def write_report(out) -> list[Path]:
    """Write the tables, the plots and the contact sheet of the sweep in ``out``; returns their paths."""
    out = Path(out).expanduser().resolve()
    doc = load_sweep(out)
    results = cell_results(out, doc)
    settings = summarise(out, doc, results)
    axes = [a for a in doc["spec"]["axes"]]
    setting_axes = doc.get("setting_axes", [])
    scalar = metric_names(settings, exclude=())
    files: dict[Path, object] = {}
    cell_rows = [dict(r["values"], key=r["key"], status=r["status"], error=r.get("error"), seconds=r.get("seconds"),
                      worker=r.get("worker"), **r.get("metrics", {})) for r in results]
    per_cell = [m for m in scalar + list(VECTOR) if any(m in r for r in cell_rows)]
    files[out / "results.csv"] = _text_writer(_csv_text(["key", *axes, "status", *per_cell, "seconds", "worker",
                                                         "error"], cell_rows))
    setting_cols = [m for m in scalar + list(VECTOR) if any(m in s for s in settings)]
    files[out / "settings.csv"] = _text_writer(_csv_text([*setting_axes, "cells", "failed", "images", *setting_cols],
                                                         settings))
    files[out / "results.json"] = _text_writer(json.dumps({"spec": doc["spec"], "cells": results,
                                                           "settings": settings}, indent=1) + "\n")
    title = doc["spec"].get("title") or f"sweep of {Path(doc['spec']['model']).name}"
    if len({s.get("nfe") for s in settings if s.get("nfe") is not None}) > 1:
        for m in metric_names(settings):
            fig = line_plot(settings, setting_axes, "nfe", m, title)
            if fig is not None:
                files[out / "plots" / f"{m}_vs_nfe.png"] = _figure_writer(fig)
    if "scale" in setting_axes and len({s.get("scale") for s in settings}) > 1:
        for m in metric_names(settings):
            fig = line_plot(settings, setting_axes, "scale", m, title)
            if fig is not None:
                files[out / "plots" / f"{m}_vs_scale.png"] = _figure_writer(fig)
    sheet = contact_sheet(out, doc, results, settings)
    if sheet is not None:
        files[out / "contact_sheet.png"] = _image_writer(sheet)
    (out / "plots").mkdir(exist_ok=True)
    for path, writer in files.items():  # each file replaced whole (a reader never sees half a table)
        write_files({path: writer}, overwrite=True)
    return list(files)
