"""The forward view: the user's image noised to any t, the model's x̂₀ from it, and the error against t.

A scrubber over the training timesteps shows x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε for the recipe seed's ε, and
beside it x̂₀(x_t, t): guided, and with guidance also unguided (both from one evaluation). The numbers
and pictures come from ``session.forward_view``; the network runs on ``ForwardWorker``'s thread, one
evaluation per position, each kept. A position the user scrubs to goes before the background fill
("Compute all"), and scrubbing while one evaluation runs collapses to the newest position, so moving the
slider never queues work. x_t of a pixel model is drawn at once on the GUI thread (a few array operations);
a latent model's needs a VAE decode and comes with x̂₀.

The view follows the panel's settings: when the model, seed, label or prompt, guidance or size change,
the next scrub (or ``refresh``) opens the image again under them. "Denoise from here" asks the window for
an ordinary image-to-image run from the plan step nearest the scrubbed t (``denoiseRequested``).
"""
from __future__ import annotations

import collections
import threading
from typing import Callable, Optional

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from ..core.images import ImageError
from ..session.forward_view import ForwardView, denoise_recipe, nearest_start, view_key
from ..session.frames import to_uint8
from ..session.recipe import RecipeError
from .canvas import ImageCanvas
from .plots import ACCENT, MARK, cache_axes
from .throttle import Throttle
from .worker import one_line

# a position not computed yet keeps the previous x̂₀ on screen this long before "computing…" replaces it:
# a fast model's result comes first, and the canvas is painted once instead of twice
PLACEHOLDER_MS = 60
PLOT_MS = 100  # the error plot repaints at most this often (gui/throttle.py), as the main window's plots
CANVAS_MIN = 110  # pixels a side: three canvases and their gaps fit a 1366-pixel screen beside the panel
UNGUIDED = (120, 220, 140)


class ForwardWorker(QObject):
    """One background thread for the forward view: opening an image (decode, fit, VAE encode) and
    evaluating positions. Priority: an image to open, then the position last asked for, then the fill."""

    opened = Signal(object, object)  # token, ForwardView
    openFailed = Signal(object, str)  # token, one line
    pointReady = Signal(object, int)  # ForwardView, t
    failed = Signal(object, str)  # ForwardView, one line

    def __init__(self, parent=None):
        super().__init__(parent)
        self._cond = threading.Condition()
        self._open: Optional[tuple] = None
        self._wanted: Optional[tuple] = None
        self._fill: collections.deque = collections.deque()
        self._view: Optional[ForwardView] = None  # the newest view: fill work for older ones is dropped
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="forward-view", daemon=True)
        self._thread.start()

    def open(self, token, model, recipe, path: str) -> None:
        with self._cond:
            self._open = (token, model, recipe, path)
            self._wanted = None
            self._fill.clear()
            self._cond.notify_all()

    def request(self, view: ForwardView, t: int) -> None:
        """Compute position ``t`` next (replacing a request not started yet)."""
        with self._cond:
            self._view = view
            self._wanted = (view, int(t))
            self._cond.notify_all()

    def fill(self, view: ForwardView, ts: list[int]) -> None:
        """Compute positions ``ts`` in the background, after any requested position."""
        with self._cond:
            self._view = view
            self._fill.extend((view, int(t)) for t in ts)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._fill) + (self._wanted is not None) + (self._open is not None) + self._busy

    def _next(self):
        if self._open is not None:
            job, self._open = ("open", self._open), None
            return job
        if self._wanted is not None:
            job, self._wanted = ("point", self._wanted), None
            return job
        while self._fill:
            view, t = self._fill.popleft()
            if view is self._view:
                return "point", (view, t)
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._closed and (job := self._next()) is None:
                    self._cond.wait()
                if self._closed:
                    return
                self._busy = True
            try:
                self._do(*job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _do(self, kind: str, args: tuple) -> None:
        if kind == "open":
            token, model, recipe, path = args
            try:
                view = ForwardView.open(model, recipe, path)
            except (ImageError, RecipeError) as e:
                self.openFailed.emit(token, str(e))
            except Exception as e:  # noqa: BLE001 - a one-line message, never a traceback
                self.openFailed.emit(token, f"{path}: {one_line(e)}")
            else:
                with self._cond:
                    self._view = view
                self.opened.emit(token, view)
            return
        view, t = args
        if view.cached(t) is not None:
            self.pointReady.emit(view, t)
            return
        try:
            view.point(t)
        except Exception as e:  # noqa: BLE001 - a one-line message, never a traceback
            self.failed.emit(view, f"The forward view could not evaluate t={t}: {one_line(e)}")
        else:
            self.pointReady.emit(view, t)

    def idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing runs or waits (tests, benchmarks, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and self._open is None and self._wanted is None
                                       and not self._fill, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after the job in progress, and wait for it."""
        with self._cond:
            self._closed = True
            self._open, self._wanted = None, None
            self._fill.clear()
            self._cond.notify_all()
        self._thread.join(timeout)


class ErrorPlot(QWidget):
    """RMS(x̂₀ − x₀) against t, one point per computed position, and a marker at the scrubbed t."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(False, False)
        self.plot.setLabel("bottom", "t")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        cache_axes(self.plot)
        self.legend = self.plot.addLegend(offset=(-8, 8), labelTextSize="8pt")
        self.curve = self.plot.plot([], [], pen=pg.mkPen(ACCENT, width=2), symbol="o", symbolSize=4,
                                    symbolBrush=ACCENT, symbolPen=None, name="x̂₀")
        self.unguided = self.plot.plot([], [], pen=pg.mkPen(UNGUIDED, width=1.5), symbol="o", symbolSize=3,
                                       symbolBrush=UNGUIDED, symbolPen=None, name="unguided")
        self.line = pg.InfiniteLine(angle=90, pen=pg.mkPen(MARK, width=1.5))
        self.plot.addItem(self.line)
        self.title = QLabel("Reconstruction error", objectName="forwardErrorTitle")
        self.title.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.plot, 1)

    def set_view(self, view: ForwardView) -> None:
        space = "on the VAE's latents, not pixels" if view.latent else "pixels in [−1, 1]"
        self.title.setText(f"Reconstruction error RMS(x̂₀ − x₀) against t · {space}")
        self.title.setToolTip("How much of the image the model recovers from x_t at each noise level"
                              + (" (measured on the VAE's latents, not on decoded pixels)" if view.latent else ""))
        self.plot.setLabel("left", f"RMS error ({view.error_space})")
        self.plot.setXRange(0, view.steps - 1, padding=0.02)
        for item, name in ((self.curve, "guided x̂₀" if view.guided else "x̂₀"),
                           (self.unguided, f"{view.unguided_name} x̂₀")):
            label = self.legend.getLabel(item)
            if label is not None:
                label.setText(name)
        self.unguided.setVisible(view.guided)
        self.legend.setVisible(view.guided)
        self.update_points(view)

    def update_points(self, view: ForwardView) -> None:
        t, err, ung = view.errors()
        self.curve.setData(t, err)
        self.unguided.setData(t, ung if ung is not None else [])

    def set_current(self, t: int) -> None:
        self.line.setValue(t)


class ForwardPanel(QWidget):
    """The forward view's widget (the window puts it in a dock). ``model()`` and ``recipe()`` give the
    window's open model and the panel's recipe; ``open_image(path)`` starts it."""

    pointShown = Signal(int)  # x̂₀ of the scrubbed t is on the canvas
    viewOpened = Signal(object)  # the ForwardView now shown
    errorRaised = Signal(str)  # a one-line problem for the window's error bar
    notesShown = Signal(str)  # how the image was converted, for the status bar
    denoiseRequested = Signal(object, object)  # image-to-image Recipe, session.forward_view.StartStep

    def __init__(self, model: Callable[[], object], recipe: Callable[[], object], parent=None):
        super().__init__(parent)
        self.setObjectName("forwardPanel")
        self._model, self._recipe = model, recipe
        self.worker = ForwardWorker(self)
        self.worker.opened.connect(self._opened)
        self.worker.openFailed.connect(self._open_failed)
        self.worker.pointReady.connect(self._point_ready)
        self.worker.failed.connect(lambda view, msg: self.errorRaised.emit(msg) if view is self.view else None)
        self.view: Optional[ForwardView] = None
        self.path: Optional[str] = None  # the image shown (or being opened)
        self._token = 0
        self._failed_key = None  # settings that could not open the image: not retried until they change
        self._view_key = None  # what the shown view was opened with (``_key``)
        self._opening: Optional[tuple] = None  # (token, path, key) of the open in flight
        self._fill_after_open = False  # "Compute all" was pressed while the view was being opened again

        self.header = QLabel("File → Open image… (Ctrl+I) or drop an image on the window", objectName="forwardHeader")
        self.header.setWordWrap(True)
        self.header.setStyleSheet("color: #b8b8c4; padding: 2px 4px;")
        self.notes = QLabel("", objectName="forwardNotes")
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: #9a9aa6; padding: 0 4px;")
        self.notes.hide()
        self.xtCanvas = ImageCanvas("x_t  noised image")
        self.xtCanvas.setObjectName("forwardXtCanvas")
        self.x0Canvas = ImageCanvas("x̂₀  model's prediction")
        self.x0Canvas.setObjectName("forwardX0Canvas")
        self.unguidedCanvas = ImageCanvas("x̂₀  unguided")
        self.unguidedCanvas.setObjectName("forwardUnguidedCanvas")
        self.unguidedCanvas.hide()
        for c in (self.xtCanvas, self.x0Canvas, self.unguidedCanvas):
            c.setMinimumSize(CANVAS_MIN, CANVAS_MIN)
            c.soloChanged.connect(self._solo)
        row = QHBoxLayout()
        row.setSpacing(4)
        for c in (self.xtCanvas, self.x0Canvas, self.unguidedCanvas):
            row.addWidget(c)

        self.slider = QSlider(Qt.Orientation.Horizontal, objectName="forwardScrubber")
        self.slider.setRange(0, 0)
        self.slider.setToolTip("The timestep t of the forward process: 0 = the image, right = almost pure noise")
        self.slider.setEnabled(False)
        self.tLabel = QLabel("t = –", objectName="forwardTLabel")
        self.tLabel.setMinimumWidth(60)
        self.levelLabel = QLabel("", objectName="forwardLevel")
        self.levelLabel.setStyleSheet("color: #b8b8c4; padding: 0 4px;")
        scrub = QHBoxLayout()
        scrub.setContentsMargins(4, 0, 4, 0)
        scrub.addWidget(self.slider, 1)
        scrub.addWidget(self.tLabel)

        self.errorPlot = ErrorPlot()
        self.errorPlot.setMinimumHeight(120)
        self.errorPlot.setMaximumHeight(260)  # the pictures take the rest of a tall dock
        self.fillButton = QPushButton("Compute all", objectName="forwardFillButton")
        self.fillButton.setToolTip("Fill the error curve in the background: x̂₀ at evenly spaced t "
                                   "(one network evaluation each)")
        self.denoiseButton = QPushButton("Denoise from here", objectName="denoiseButton")
        self.denoiseButton.setToolTip("Image-to-image (SDEdit): run the panel's sampler, steps and guidance from this "
                                      "image noised to the plan step nearest this t; it appears in the main view")
        for b in (self.fillButton, self.denoiseButton):
            b.setEnabled(False)
        self.fillButton.clicked.connect(self.compute_all)
        self.denoiseButton.clicked.connect(self.denoise_from_here)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fillButton)
        buttons.addStretch(1)
        buttons.addWidget(self.denoiseButton)
        self.buttonRow = buttons  # inversion_view.py puts Invert beside "Denoise from here"

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.header)
        lay.addWidget(self.notes)
        lay.addLayout(row, 3)
        lay.addLayout(scrub)
        lay.addWidget(self.levelLabel)
        lay.addWidget(self.errorPlot, 2)
        lay.addLayout(buttons)
        self.slider.valueChanged.connect(self.show_t)
        self._placeholder = QTimer(self, singleShot=True, interval=PLACEHOLDER_MS)
        # the error plot's marker and points repaint at most every PLOT_MS while scrubbing or filling: a plot
        # repaint per move, beside the worker's evaluations, is what stalls the window
        self._plotSync = Throttle(PLOT_MS, self)
        self._placeholder.timeout.connect(self._show_computing)

    # -- opening ---------------------------------------------------------------------------------------
    def open_image(self, path: str) -> None:
        """Open ``path`` under the window's model and the panel's settings (off the GUI thread); a bad file
        is one line on ``errorRaised`` and the view keeps what it showed."""
        self._start_open(str(path))

    def _key(self, path: str, recipe) -> tuple:
        """What decides the view's contents: the image, the model object and the recipe's ``view_key``."""
        return path, id(self._model()), view_key(recipe)

    def _start_open(self, path: str) -> bool:
        model = self._model()
        if model is None:
            self.errorRaised.emit(f"{path}: open a model first; the image is shown as that model sees it")
            return False
        recipe = self._recipe()
        key = self._key(path, recipe)
        try:
            recipe = recipe.validate()
        except RecipeError as e:
            self._failed_key = key
            self.errorRaised.emit(f"The forward view needs valid settings: {e}")
            return False
        self.path = path
        self._token += 1
        self._opening = (self._token, path, key)
        self.header.setText(f"Opening {path}…")
        self.worker.open(self._token, model, recipe, path)
        return True

    def _opened(self, token, view: ForwardView) -> None:
        if token != self._token:
            return  # a newer image or settings replaced it
        keep_t = self.slider.value() if self.view is not None else 0
        self.view, self.path, self._failed_key = view, view.path, None
        self._view_key, self._opening = self._opening[2], None
        self.slider.blockSignals(True)
        self.slider.setRange(0, view.steps - 1)
        self.slider.setValue(min(keep_t, view.steps - 1))
        self.slider.blockSignals(False)
        self.slider.setEnabled(True)
        for b in (self.fillButton, self.denoiseButton):
            b.setEnabled(True)
        self.unguidedCanvas.setVisible(view.guided)
        self.x0Canvas.title = "x̂₀  guided" if view.guided else "x̂₀  model's prediction"
        self.unguidedCanvas.title = f"x̂₀  {view.unguided_name}"
        self.header.setText(f"{view.path} · {self._settings_text(view)}")
        self.header.setToolTip(view.path)
        notes = "; ".join(view.notes)
        self.notes.setText(f"Image: {notes}" if notes else "")
        self.notes.setVisible(bool(notes))
        self.errorPlot.set_view(view)
        self.viewOpened.emit(view)
        if notes:
            self.notesShown.emit(f"The image was {notes}")
        self.show_t(self.slider.value())
        if self._fill_after_open:
            self._fill_after_open = False
            self.compute_all()

    def _open_failed(self, token, msg: str) -> None:
        if token != self._token:
            return
        self._failed_key, self._opening = self._opening[2], None
        self.path = self.view.path if self.view is not None else None
        self._fill_after_open = False
        if self.view is not None:  # the view keeps the image it showed
            self.header.setText(f"{self.view.path} · {self._settings_text(self.view)}")
        else:
            self.header.setText("File → Open image… (Ctrl+I) or drop an image on the window")
        self.errorRaised.emit(msg)

    @staticmethod
    def _settings_text(view: ForwardView) -> str:
        r = view.recipe
        parts = [f"seed {r.seed}"]
        if r.label is not None:
            parts.append(f"label {r.label}")
        if r.prompt is not None:
            parts.append(f"prompt {r.prompt!r}")
        g = view.guidance
        if g.mode != "none":
            parts.append(f"{'CFG' if g.mode == 'cfg' else 'classifier'} {g.scale:g}")
        return ", ".join(parts)

    def refresh(self) -> bool:
        """Open the image again when the panel's settings or the model changed since it was opened; True
        when that started (the view shows the new contents once it has opened)."""
        if self.path is None:
            return False
        key = self._key(self.path, self._recipe())
        opening = self._opening[2] if self._opening is not None else None
        if key in (self._view_key, self._failed_key, opening):
            return False
        return self._start_open(self.path)

    # -- scrubbing --------------------------------------------------------------------------------------
    @property
    def t(self) -> int:
        return self.slider.value()

    def set_t(self, t: int) -> None:
        self.slider.setValue(int(t))

    def show_t(self, t: int) -> None:
        """Show position ``t``: its level and x_t at once, x̂₀ from the cache or once the worker has it."""
        view = self.view
        if view is None or self.refresh():
            return
        level = view.level(t)
        self.tLabel.setText(f"t = {t}")
        self.levelLabel.setText(level.caption())
        self._plotSync.request("marker", lambda: self.errorPlot.set_current(t))
        hit = view.cached(t)
        if hit is not None:
            self._placeholder.stop()
            self._paint(hit)
            self.pointShown.emit(t)
            return
        if not view.latent:  # a pixel model's x_t is a few array operations: drawn now
            self.xtCanvas.set_frames(to_uint8(view.xt(t)), f"t={t}")
        self.worker.request(view, t)
        if not self._placeholder.isActive():
            self._placeholder.start()

    def _show_computing(self) -> None:
        """The scrubbed position is still being computed: say so instead of showing another t's x̂₀."""
        view = self.view
        if view is None or view.cached(self.t) is not None:
            return
        if view.latent:
            self.xtCanvas.set_frames(None, "", "decoding…")
        for canvas in (self.x0Canvas, self.unguidedCanvas) if view.guided else (self.x0Canvas,):
            canvas.set_frames(None, "", f"computing x̂₀ at t={self.t}…")

    def _paint(self, p) -> None:
        view = self.view
        shown = f"  · {view.shown}" if view.shown else ""
        self.xtCanvas.set_frames(p.xt_frame, f"t={p.level.t}{shown}")
        self.x0Canvas.set_frames(p.x0_frame, f"RMS {p.error:.3g}{shown}")
        if p.unguided_frame is not None:
            self.unguidedCanvas.set_frames(p.unguided_frame,
                                           f"RMS {p.unguided_error:.3g}{shown}")

    def _point_ready(self, view: ForwardView, t: int) -> None:
        if view is not self.view:
            return
        self._plotSync.request("points", lambda: self.errorPlot.update_points(view))
        if t == self.t:
            self._placeholder.stop()
            self._paint(view.cached(t))
            self.pointShown.emit(t)

    def _solo(self, index) -> None:
        for c in (self.xtCanvas, self.x0Canvas, self.unguidedCanvas):
            c.set_solo(index)

    # -- actions ------------------------------------------------------------------------------------------
    def compute_all(self) -> None:
        """Fill the error curve: x̂₀ at ``FILL_POINTS`` evenly spaced t, in the background."""
        if self.view is None:
            return
        if self.refresh():
            self._fill_after_open = True
            return
        self.worker.fill(self.view, self.view.fill_positions())

    def denoise_from_here(self) -> None:
        """Ask for an image-to-image run from the plan step nearest the scrubbed t (``denoiseRequested``)."""
        if self.view is None:
            return
        model = self._model()
        if model is None:
            self.errorRaised.emit("open a model first")
            return
        try:
            recipe = self._recipe().validate()
            start = nearest_start(model, recipe, self.t)
            run = denoise_recipe(recipe, self.view.path, start)
        except (RecipeError, ValueError) as e:
            self.errorRaised.emit(f"Denoise from here: {e}")
            return
        self.denoiseRequested.emit(run, start)

    def shutdown(self) -> None:
        self.worker.close()


DOCK_WIDTH = 400  # the dock's width when it first opens: three canvases of CANVAS_MIN and the plot's axis


def install(window) -> ForwardPanel:
    """Put the forward view in a dock on the right of ``window`` (a MainWindow), hidden until an image is
    opened; its errors go to the window's error bar, its notes to the status bar, and "Denoise from here"
    runs in the main view (``window.run_recipe``)."""
    from PySide6.QtWidgets import QDockWidget

    def open_model():
        cache = window.cache
        if window.summary is None or cache.model is None or cache.key is None or cache.key[0] != window.summary.spec:
            return None
        return cache.model

    panel = ForwardPanel(open_model, window.current_recipe)
    dock = QDockWidget("Forward process", window, objectName="forwardDock")
    dock.setWidget(panel)
    dock.setAllowedAreas(Qt.DockWidgetArea.RightDockWidgetArea | Qt.DockWidgetArea.LeftDockWidgetArea
                         | Qt.DockWidgetArea.BottomDockWidgetArea)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    dock.hide()
    panel.errorRaised.connect(window.show_error)
    panel.notesShown.connect(lambda text: window.statusBar().showMessage(text, 15000))

    def opened(_view):
        window.hide_error()
        if not dock.isVisible():
            dock.show()
            window.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)

    panel.viewOpened.connect(opened)

    def denoise(recipe, start):
        if window.run_recipe(recipe):
            window.statusBar().showMessage(f"Denoising the image from {start.describe()}", 15000)

    panel.denoiseRequested.connect(denoise)
    window.modelLoaded.connect(lambda _summary: panel.refresh())
    window.forwardDock = dock
    return panel
