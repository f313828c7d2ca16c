"""A finished (or partly finished) sweep read back for browsing: axes, cells, a 2-D slice of the grid.

Qt-free and without torch: the window's sweep view (gui/sweep_view.py) shows what this returns. It
reads ``sweep.json`` and the cells' ``result.json`` files; the pooled per-setting metrics come from
the report's ``results.json`` when it has been written (``studio sweep`` writes it at the end,
``studio sweep --report`` redraws it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..evaluation.metrics import METRICS
from ..core.file_reading import FileReadError, read_json
from .cells import BrokenCell, cell_folder, is_done, read_result
from .summary import SWEEP_LIMIT, load_sweep


@dataclass(frozen=True)
class BrowseAxis:
    name: str
    values: tuple  # as JSON values (pairs are lists)


def _k(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def show_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    return "–" if v is None else str(v)


class SweepFolder:
    def __init__(self, folder):
        self.folder = Path(folder).expanduser().resolve()
        self.doc = load_sweep(self.folder)
        spec = self.doc["spec"]
        self.title = spec.get("title") or f"sweep of {Path(spec['model']).name}"
        self.setting_axes: list[str] = list(self.doc.get("setting_axes", []))
        cells = self.doc["cells"]
        names = list(cells[0]["values"]) if cells else []
        self.axes = [BrowseAxis(n, tuple(json.loads(s) for s in dict.fromkeys(_k(c["values"].get(n)) for c in cells)))
                     for n in names]
        self.cells = cells  # [{key, values}]
        self.results: dict[str, dict] = {}
        self.broken: list[str] = []  # one line per damaged cell (shown as missing; a re-run recomputes them)
        for c in cells:
            if is_done(self.folder, c["key"]):
                try:
                    self.results[c["key"]] = read_result(self.folder, c["key"])
                except BrokenCell as e:
                    self.broken.append(str(e))
        self.settings: dict[str, dict] = {}
        report = self.folder / "results.json"
        if report.is_file():
            try:
                for row in read_json(report, SWEEP_LIMIT).get("settings", []):
                    self.settings[_k([row.get(a) for a in self.setting_axes])] = row
            except (FileReadError, AttributeError, TypeError):
                self.settings = {}
        self.metrics = [m for m in spec.get("metrics", []) if m in METRICS and METRICS[m].scalar]

    @property
    def done(self) -> int:
        return len(self.results)

    def default_axes(self) -> tuple[Optional[str], Optional[str]]:
        """(rows, columns): the two axes with the most values, columns the steps when they vary."""
        varying = [a for a in self.axes if len(a.values) > 1] or self.axes
        if not varying:
            return None, None
        cols = next((a.name for a in varying if a.name == "steps"), None)
        rest = sorted((a for a in varying if a.name != cols), key=lambda a: -len(a.values))
        if cols is None:
            cols = rest.pop(0).name if rest else None
        rows = rest[0].name if rest else None
        return rows, cols

    def axis(self, name: Optional[str]) -> Optional[BrowseAxis]:
        return next((a for a in self.axes if a.name == name), None)

    def cell_at(self, values: dict) -> Optional[dict]:
        """The cell (``{key, values}``) whose values include ``values``, or None."""
        want = {k: _k(v) for k, v in values.items()}
        for c in self.cells:
            if all(_k(c["values"].get(k)) == v for k, v in want.items()):
                return c
        return None

    def grid(self, rows: Optional[str], cols: Optional[str], filters: dict) -> list[list[Optional[dict]]]:
        """The cells of the slice: rows × columns along two axes, the other axes at ``filters``."""
        rv = self.axis(rows).values if rows else (None,)
        cv = self.axis(cols).values if cols else (None,)
        out = []
        for r in rv:
            line = []
            for c in cv:
                values = dict(filters)
                if rows:
                    values[rows] = r
                if cols:
                    values[cols] = c
                line.append(self.cell_at(values))
            out.append(line)
        return out

    def result(self, cell: Optional[dict]) -> Optional[dict]:
        return None if cell is None else self.results.get(cell["key"])

    def setting_row(self, cell: dict) -> Optional[dict]:
        return self.settings.get(_k([cell["values"].get(a) for a in self.setting_axes]))

    def metric(self, cell: Optional[dict], name: str) -> tuple[Optional[float], Optional[float]]:
        """(the cell's own value, its setting's pooled value) of a metric; None where there is none."""
        r = self.result(cell)
        own = (r or {}).get("metrics", {}).get(name)
        pooled = (self.setting_row(cell) or {}).get(name) if cell else None
        num = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
        return num(own), num(pooled)

    def image(self, cell: Optional[dict]) -> Optional[Path]:
        if cell is None:
            return None
        p = cell_folder(self.folder, cell["key"]) / "final.png"
        return p if p.is_file() else None

    def recipe_path(self, cell: dict) -> Optional[Path]:
        p = cell_folder(self.folder, cell["key"]) / "recipe.json"
        return p if p.is_file() else None

    def plots(self, metric: str) -> list[Path]:
        return [p for p in (self.folder / "plots" / f"{metric}_vs_nfe.png",
                            self.folder / "plots" / f"{metric}_vs_scale.png") if p.is_file()]
