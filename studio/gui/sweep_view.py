"""File → Open sweep: a sweep's grid as a table of thumbnails, with a metric in each cell and its plots.

Two axes of the sweep are the table's rows and columns (chosen in the combo boxes); every other
axis is a filter showing one of its values. Each table cell shows that cell's final images and the
chosen metric: the cell's own value and, in brackets, its setting's (pooled over the seeds and any
pooled axis, from the sweep's report). The plots of that metric (against NFE, against the guidance
scale) are beside the table. Double-clicking a cell opens its recipe in the main window and runs it
there (recomputed from the recipe: a sweep keeps final images, not trajectories), where it can be
scrubbed, branched and compared like any run. Reading files only: no sampling, no torch here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QScrollArea,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..sweep.browse import SweepFolder, show_value

THUMB = 96


class SweepDialog(QDialog):
    cellOpened = Signal(str)  # the path of the double-clicked cell's recipe.json

    def __init__(self, folder, parent=None):
        super().__init__(parent)
        self.sweep = SweepFolder(folder)  # a ReportError (one line) for a folder without a sweep
        self.setWindowTitle(f"Sweep — {self.sweep.title}")
        self.setObjectName("sweepDialog")
        self._icons: dict[Path, QIcon] = {}
        rows, cols = self.sweep.default_axes()
        names = [a.name for a in self.sweep.axes]

        self.rowCombo = QComboBox(objectName="sweepRows")
        self.colCombo = QComboBox(objectName="sweepColumns")
        for combo, current in ((self.rowCombo, rows), (self.colCombo, cols)):
            combo.addItem("(none)", None)
            for n in names:
                combo.addItem(n, n)
            combo.setCurrentIndex(max(combo.findData(current), 0))
        self.metricCombo = QComboBox(objectName="sweepMetric")
        for m in self.sweep.metrics:
            self.metricCombo.addItem(m, m)
        self.filters: dict[str, QComboBox] = {}
        self.filterForm = QFormLayout()
        for a in self.sweep.axes:
            box = QComboBox(objectName=f"sweepFilter_{a.name}")
            for v in a.values:
                box.addItem(show_value(v), v)
            box.currentIndexChanged.connect(self.refresh)
            self.filters[a.name] = box

        self.table = QTableWidget(objectName="sweepTable")
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.cellDoubleClicked.connect(self._double_clicked)
        self.plots = QLabel(objectName="sweepPlots", alignment=Qt.AlignmentFlag.AlignTop)
        self.status = QLabel(objectName="sweepStatus")

        controls = QHBoxLayout()
        for label, w in (("Rows", self.rowCombo), ("Columns", self.colCombo), ("Metric", self.metricCombo)):
            controls.addWidget(QLabel(label))
            controls.addWidget(w)
        controls.addStretch(1)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.addLayout(controls)
        lv.addLayout(self.filterForm)
        lv.addWidget(self.table, 1)
        lv.addWidget(self.status)
        right = QScrollArea()
        right.setWidgetResizable(True)
        right.setWidget(self.plots)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(split)
        for combo in (self.rowCombo, self.colCombo, self.metricCombo):
            combo.currentIndexChanged.connect(self.refresh)
        self.resize(1200, 760)
        self.refresh()

    # -- state ------------------------------------------------------------------------------------
    @property
    def row_axis(self) -> Optional[str]:
        return self.rowCombo.currentData()

    @property
    def col_axis(self) -> Optional[str]:
        return self.colCombo.currentData()

    @property
    def metric(self) -> Optional[str]:
        return self.metricCombo.currentData()

    def filter_values(self) -> dict:
        return {n: box.currentData() for n, box in self.filters.items() if n not in (self.row_axis, self.col_axis)}

    def cell(self, row: int, col: int) -> Optional[dict]:
        return self._grid[row][col] if 0 <= row < len(self._grid) and 0 <= col < len(self._grid[row]) else None

    # -- drawing ----------------------------------------------------------------------------------
    def _icon(self, path: Optional[Path]) -> QIcon:
        if path is None:
            return QIcon()
        if path not in self._icons:
            pm = QPixmap(str(path))
            self._icons[path] = QIcon(pm.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                                Qt.TransformationMode.FastTransformation))
        return self._icons[path]

    def _text(self, cell: Optional[dict]) -> str:
        if cell is None:
            return ""
        r = self.sweep.result(cell)
        if r is None:
            return "not computed"
        if r.get("status") != "ok":
            return f"{r.get('status')}: {(r.get('error') or '')[:40]}"
        if self.metric is None:
            return ""
        own, pooled = self.sweep.metric(cell, self.metric)
        text = f"{own:.4g}" if own is not None else "–"
        if pooled is not None and (own is None or abs(pooled - own) > 1e-12):
            text += f" ({pooled:.4g})"
        return text

    def refresh(self) -> None:
        rows, cols = self.row_axis, self.col_axis
        for name, box in self.filters.items():  # the filter of an axis shown as rows or columns is idle
            box.setEnabled(name not in (rows, cols))
        while self.filterForm.rowCount():
            self.filterForm.takeRow(0)
        for name, box in self.filters.items():
            if name not in (rows, cols) and box.count() > 1:
                self.filterForm.addRow(name, box)
                box.show()
            else:
                box.hide()
        self._grid = self.sweep.grid(rows, cols, self.filter_values())
        ra, ca = self.sweep.axis(rows), self.sweep.axis(cols)
        self.table.clear()
        self.table.setRowCount(len(self._grid))
        self.table.setColumnCount(len(self._grid[0]) if self._grid else 0)
        self.table.setVerticalHeaderLabels([f"{rows}={show_value(v)}" for v in ra.values] if ra else [""])
        self.table.setHorizontalHeaderLabels([f"{cols}={show_value(v)}" for v in ca.values] if ca else [""])
        for i, line in enumerate(self._grid):
            for j, cell in enumerate(line):
                item = QTableWidgetItem(self._icon(self.sweep.image(cell)), self._text(cell))
                if cell is not None:
                    r = self.sweep.result(cell) or {}
                    item.setToolTip("\n".join([", ".join(f"{k}={show_value(v)}" for k, v in cell["values"].items())]
                                              + [f"{k}: {show_value(v)}" for k, v in r.get("metrics", {}).items()]
                                              + ["double-click: open and run in the main window"]))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        self._show_plots()
        self.status.setText(f"{self.sweep.done} of {len(self.sweep.cells)} cells computed — {self.sweep.folder}")

    def _show_plots(self) -> None:
        paths = self.sweep.plots(self.metric) if self.metric else []
        if not paths:
            self.plots.setPixmap(QPixmap())
            self.plots.setText("no plots for this metric yet (studio sweep --report DIR draws them)")
            return
        pms = [QPixmap(str(p)) for p in paths]
        width = 520
        pms = [pm.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation) for pm in pms]
        combined = QPixmap(width, sum(pm.height() for pm in pms))
        combined.fill(Qt.GlobalColor.white)
        from PySide6.QtGui import QPainter

        p = QPainter(combined)
        y = 0
        for pm in pms:
            p.drawPixmap(0, y, pm)
            y += pm.height()
        p.end()
        self.plots.setPixmap(combined)
        self.plots.setToolTip("\n".join(str(p) for p in paths))

    def _double_clicked(self, row: int, col: int) -> None:
        cell = self.cell(row, col)
        path = self.sweep.recipe_path(cell) if cell is not None else None
        if path is not None:
            self.cellOpened.emit(str(path))


def open_sweep(window, folder: Optional[str] = None) -> Optional[SweepDialog]:
    """Ask for a sweep folder (unless given) and show it; a double-clicked cell opens in ``window``
    (its recipe restored, then run). A folder that holds no sweep is one line in the window's error bar."""
    from ..sweep.summary import ReportError

    if folder is None:
        folder = QFileDialog.getExistingDirectory(window, "Open a sweep folder", str(Path.home()))
        if not folder:
            return None
    try:
        dialog = SweepDialog(folder, parent=window)
    except (ReportError, OSError, ValueError) as e:
        window.show_error(str(e).splitlines()[0] if str(e) else "cannot open this sweep")
        return None

    def open_cell(path: str) -> None:
        if window.open_recipe(path) is not None:
            window.run()

    dialog.cellOpened.connect(open_cell)
    dialog.show()
    return dialog
