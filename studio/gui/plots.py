"""pyqtgraph plots: the noise schedule with the current t, and the guidance scale over the run.

Both say in their title which run they follow (the main run or a branch: ``set_source``), since the
window can hold several."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

pg.setConfigOptions(antialias=True, background=(30, 30, 34), foreground=(200, 200, 210))

ACCENT = (90, 170, 255)
MARK = (255, 170, 60)


class SchedulePlot(QWidget):
    """log-SNR (or ᾱ_t) over the training timesteps, the plan's points, and a marker at the current t."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.kind = QComboBox()
        self.kind.addItem("log-SNR", "log_snr")
        self.kind.addItem("ᾱ_t", "alpha_bar")
        self.kind.setToolTip("What to plot over t")
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "t")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMouseEnabled(False, False)
        cache_axes(self.plot)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(ACCENT, width=2))
        self.points = pg.ScatterPlotItem(size=5, brush=pg.mkBrush(200, 200, 210, 160), pen=None)
        self.plot.addItem(self.points)
        self.line = pg.InfiniteLine(angle=90, pen=pg.mkPen(MARK, width=1.5))
        self.plot.addItem(self.line)
        self.dot = pg.ScatterPlotItem(size=10, brush=pg.mkBrush(*MARK), pen=None)
        self.plot.addItem(self.dot)
        self.title = QLabel("Noise schedule", objectName="schedulePlotTitle")
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.kind)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.plot, 1)
        self.summary = None
        self.plan_t: Optional[np.ndarray] = None
        self.current_t: Optional[float] = None
        self.kind.currentIndexChanged.connect(self.redraw)

    def set_source(self, source: str) -> None:
        """Name the run whose plan the points show (``main run``, ``branch #2 …``)."""
        self.title.setText(f"Noise schedule · {source}" if source else "Noise schedule")
        self.title.setToolTip(self.title.text())

    def set_schedule(self, summary) -> None:
        self.summary = summary
        self.redraw()

    def set_plan(self, plan_t: Optional[np.ndarray]) -> None:
        self.plan_t = plan_t
        self.redraw()

    def _values(self, t: np.ndarray) -> np.ndarray:
        y = getattr(self.summary, self.kind.currentData())
        return np.interp(t, self.summary.t, y)

    def redraw(self) -> None:
        if self.summary is None:
            return
        key = self.kind.currentData()
        self.plot.setLabel("left", "log SNR" if key == "log_snr" else "ᾱ_t")
        self.curve.setData(self.summary.t, getattr(self.summary, key))
        if self.plan_t is not None and len(self.plan_t):
            self.points.setData(self.plan_t, self._values(self.plan_t))
        else:
            self.points.setData([], [])
        self.set_current(self.current_t)

    def set_current(self, t: Optional[float]) -> None:
        if t is not None and t == self.current_t and self.line.isVisible():
            return
        self.current_t = t
        if t is None or self.summary is None:
            self.line.hide()
            self.dot.setData([], [])
            return
        t = max(float(t), 0.0)
        self.line.show()
        self.line.setValue(t)
        self.dot.setData([t], [float(self._values(np.array([t]))[0])])


def cache_axes(plot: pg.PlotWidget) -> None:
    """Render the axes through a pixmap cache, so moving a marker does not re-lay out tick labels."""
    from PySide6.QtWidgets import QGraphicsItem

    for name in ("left", "bottom"):
        plot.getPlotItem().getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)


class GuidancePlot(QWidget):
    """The guidance scale applied at each step (StepMeta.guidance_scale) and the current step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(False, False)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "guidance scale")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        cache_axes(self.plot)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(ACCENT, width=2), stepMode=None,
                                    symbol="o", symbolSize=4, symbolBrush=ACCENT, symbolPen=None)
        self.line = pg.InfiniteLine(angle=90, pen=pg.mkPen(MARK, width=1.5))
        self.plot.addItem(self.line)
        self.line.hide()  # no run yet: an empty 0..1 frame, not a marker on an arbitrary range
        self.note = pg.TextItem("", color=(160, 160, 172), anchor=(0.5, 0.5))
        self.plot.addItem(self.note)
        self.note.setPos(0.5, 0.55)
        self.plot.setXRange(0, 1, padding=0.02)
        self.plot.setYRange(0, 1.1, padding=0)
        self.title = QLabel("Guidance over the run", objectName="guidancePlotTitle")
        self.guided = True
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.plot, 1)

    def set_source(self, source: str) -> None:
        """Name the run whose guidance the curve shows (``main run``, ``branch #2 …``)."""
        self.title.setText(f"Guidance · {source}" if source else "Guidance over the run")
        self.title.setToolTip(self.title.text())

    def set_meta(self, meta: list, total: int, guided: bool = True) -> None:
        """The scale applied at each step so far; a run without guidance says so instead of a flat line."""
        self.guided = guided
        self.note.setText("" if guided else "no guidance in this run")
        if not guided:
            self.curve.setData([], [])
            self.plot.setYRange(0, 1.1, padding=0)
            self.plot.setXRange(0, max(total, 1), padding=0.02)
            self.note.setPos(max(total, 1) / 2, 0.55)
            return
        steps = np.array([m.index + 1 for m in meta], dtype=float)
        scales = np.array([m.guidance_scale for m in meta], dtype=float)
        self.curve.setData(steps, scales)
        top = float(scales.max()) if len(scales) else 1.0
        self.plot.setYRange(0, max(top, 1.0) * 1.1, padding=0)
        if total:
            lo = steps[0] - 1 if len(steps) else 0
            self.plot.setXRange(lo, lo + total, padding=0.02)

    def set_current(self, step: Optional[int]) -> None:
        if step is None:
            self.line.hide()
        else:
            self.line.show()
            self.line.setValue(step)
