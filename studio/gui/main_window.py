"""The Sampling Studio main window: sampler panel, live canvases, scrubber, plots, branch, compare, export."""
from __future__ import annotations

import time
from typing import Callable, Optional

from PySide6.QtCore import QPoint, QRect, QSettings, QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QScrollArea, QSizePolicy, QSplitter, QTabWidget, QToolBar, QVBoxLayout, QWidget)

import shiboken6

from ..session.inversion import caption as inversion_caption
from ..session.recipe import Recipe, RecipeError
from ..session.runner import ModelCache
from . import jobs
from .branches import Branching
from .files import RecipeFiles
from .forward_view import install as install_forward_view
from .inversion_view import install as install_inversion
from .models import ModelHandling
from .panel import SamplerPanel
from .plots import GuidancePlot, SchedulePlot
from .sweep_view import open_sweep
from .throttle import Throttle
from .view import TrajectoryView
from .worker import GeneratorWorker

PROGRESS_INTERVAL_MS = 100
PLOT_INTERVAL_MS = 250

ORG, APP = "SamplingStudio", "studio"


def open_settings() -> QSettings:
    """The studio's settings (an INI file, so tests can redirect it with ``QSettings.setPath``)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


PREFERRED_SIZE = QSize(1280, 800)  # the first window's size where the screen has room for it
# what the window manager adds around the size resize() sets: a title bar above, thin borders elsewhere
TITLE_BAR = 40
FRAME_ALLOWANCE = QSize(16, TITLE_BAR + 8)


def first_geometry(available: QRect) -> QRect:
    """Where a window opens when no size was saved: ``PREFERRED_SIZE``, shrunk so that it and its frame
    fit the screen's available area (``QScreen.availableGeometry``: less task bars and docks), centred."""
    size = PREFERRED_SIZE.boundedTo(available.size() - FRAME_ALLOWANCE)
    rect = QRect(QPoint(0, 0), size)
    rect.moveCenter(available.center())
    rect.moveTop(max(rect.top(), available.top() + TITLE_BAR))  # the title bar on the screen too
    return rect


def describe(r: Recipe) -> str:
    parts = [r.sampler, f"{r.steps} steps"]
    if r.eta:
        parts.append(f"η={r.eta:g}")
    if r.karras:
        parts.append("Karras")
    if r.guidance != "none":
        parts.append(f"{'CFG' if r.guidance == 'cfg' else 'classifier'} {r.scale:g}")
    if r.init_image is not None:
        parts.append(f"from an image at plan step {r.first_step()}")
    if r.inversion is not None:  # an inversion or a run from its x_T: the caption says which; no seed is used
        return ", ".join(parts) + "; " + inversion_caption(r)
    parts.append(f"seed {r.seed}")
    return ", ".join(parts)


class MainWindow(Branching, ModelHandling, RecipeFiles, QMainWindow):
    runFinished = Signal(object)  # the Trajectory of the main run (finished, stopped or failed)
    branchFinished = Signal(object)  # the Trajectory of a branch
    modelLoaded = Signal(object)  # jobs.ModelSummary
    modelFailed = Signal(str)
    errorShown = Signal(str)
    uncaught = Signal(object, object, object)  # (type, exception, traceback) from any thread: shown here

    def __init__(self, model: Optional[str] = None, settings: Optional[QSettings] = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Sampling Studio")
        self.setAcceptDrops(True)
        self.settings = settings if settings is not None else open_settings()
        self.cache = ModelCache()
        self.model_spec: Optional[str] = None
        self.summary: Optional[jobs.ModelSummary] = None
        self.worker: Optional[GeneratorWorker] = None
        self._workers: set[GeneratorWorker] = set()
        self._pending: Optional[Callable[[], None]] = None
        self._live_traj = None
        self._run_t0 = 0.0
        self._run_done = 0
        self._run_total = 0
        # during a run the progress text repaints at most 10 times a second, and the plots (markers,
        # guidance curve) at most 4 times, together: a pyqtgraph repaint costs several ms, far more
        # while the worker holds the GIL (python -m benchmarks.profile_gui_stalls)
        self._progress_sync = Throttle(PROGRESS_INTERVAL_MS, self)
        self._plot_sync = Throttle(PLOT_INTERVAL_MS, self)
        self._dialogs: list = []
        self.compareDialog = None  # the last comparison opened
        self.trajectory = None  # the main run's trajectory
        self._queued_run = False  # Run was pressed while a model loads: start once it is open
        self._loading: tuple[str, str] = ("auto", "float32")  # device, dtype of the model being opened
        self._good_device: Optional[tuple[str, str]] = None  # device, dtype of the last model that opened
        self._focus_view = None  # the view the user worked with last (branches.py)
        self._branch_count = 0
        self._plotted_view = None  # the view whose run the plots show (the main run or a branch)
        self._recipe_weights: Optional[tuple[str, dict]] = None  # (model, fingerprint) an opened recipe recorded
        self.uncaught.connect(self.report_exception)
        self._build()
        self._restore_settings()
        if model:  # named on the command line
            self.open_model(model)
        else:
            self.load_model(self.settings.value("model", "default", str) or "default")

    # == construction ===================================================================================
    def _build(self) -> None:
        self.panel = SamplerPanel()
        self.panel.loraList.model_source = lambda: self.cache.model  # a LoRA's family is checked against it
        scroll = QScrollArea(objectName="panelScroll")
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        # wide enough for the panel's widgets beside a vertical scrollbar: no horizontal scrolling
        need = self.panel.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth()
        scroll.setMinimumWidth(max(300, min(need, 440)))
        scroll.setMaximumWidth(max(380, min(need, 440)))

        self.runButton = self._button("Run", "runButton", "Sample with these settings (Ctrl+R)", self.run)
        self.runButton.setDefault(True)
        self.runButton.setStyleSheet("QPushButton:enabled { background: #2f6fd0; color: white; font-weight: bold; }")
        self.pauseButton = self._button("Pause", "pauseButton", "Pause / resume the run (Space)", self.toggle_pause)
        self.pauseButton.setCheckable(True)
        self.stepOnceButton = self._button("Step", "stepOnceButton", "Advance the paused run by one step", self.step_once)
        self.stopButton = self._button("Stop", "stopButton", "Stop the run after the current step (Esc)", self.stop)
        self.branchButton = self._button("Continue from here", "branchButton",
                                         "Run the rest of the chain from the scrubbed step with the panel's settings",
                                         self.branch)
        self.compareButton = self._button("Compare…", "compareButton",
                                          "Run 2–4 configurations from the same noise side by side", self.compare)
        self.exportButton = self._button("Export…", "exportButton", "Export frames, animations, sheets (Ctrl+E)",
                                         self.export_dialog)
        self.progress = QProgressBar(objectName="runProgress")
        self.progress.setTextVisible(True)
        self.progress.setFormat("%v / %m steps")
        self.progress.setMinimumWidth(120)
        self.progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.rateLabel = QLabel("", objectName="rateLabel")
        # a tool bar, not a row of widgets: on a narrow screen what does not fit moves into its »
        # overflow menu instead of widening the window past the screen
        bar = QToolBar("Run", objectName="runToolBar")
        bar.setMovable(False)
        bar.setFloatable(False)
        for b in (self.runButton, self.pauseButton, self.stepOnceButton, self.stopButton):
            bar.addWidget(b)
        bar.addSeparator()
        bar.addWidget(self.progress)
        bar.addWidget(self.rateLabel)
        bar.addSeparator()
        for b in (self.branchButton, self.compareButton, self.exportButton):
            bar.addWidget(b)
        self.runToolBar = bar

        self.errorLabel = QLabel(objectName="errorLabel")
        self.errorLabel.setWordWrap(True)
        self.errorLabel.setStyleSheet("background: #5a1f24; color: #ffd9dc; padding: 6px; border-radius: 4px;")
        self.errorLabel.hide()
        self.errorLabel.setToolTip("Click to dismiss")
        self.errorLabel.mousePressEvent = lambda event: self.hide_error()

        self.mainView = TrajectoryView()
        self.xtCanvas, self.x0Canvas, self.scrubber = self.mainView.xtCanvas, self.mainView.x0Canvas, self.mainView.scrubber
        self.branchTabs = QTabWidget(objectName="branchTabs")
        self.branchTabs.setTabsClosable(True)
        self.branchTabs.tabCloseRequested.connect(self._close_branch)
        self.branchTabs.hide()
        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.mainView)
        views.addWidget(self.branchTabs)
        views.setChildrenCollapsible(False)

        self.schedulePlot = SchedulePlot()
        self.guidancePlot = GuidancePlot()
        plots = QWidget()
        pl = QHBoxLayout(plots)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.schedulePlot, 3)
        pl.addWidget(self.guidancePlot, 2)
        plots.setMinimumHeight(150)
        self.vsplit = QSplitter(Qt.Orientation.Vertical)
        self.vsplit.addWidget(views)
        self.vsplit.addWidget(plots)
        self.vsplit.setStretchFactor(0, 3)
        self.vsplit.setStretchFactor(1, 1)

        center = QWidget()
        cl = QVBoxLayout(center)
        cl.setContentsMargins(6, 6, 6, 6)
        cl.addWidget(bar)
        cl.addWidget(self.errorLabel)
        cl.addWidget(self.vsplit, 1)
        root = QSplitter(Qt.Orientation.Horizontal)
        root.addWidget(scroll)
        root.addWidget(center)
        root.setStretchFactor(1, 1)
        self.setCentralWidget(root)

        self.loadBar = QProgressBar(objectName="loadingIndicator", maximumWidth=120)
        self.loadBar.setRange(0, 0)
        self.loadBar.hide()
        self.statusBar().addPermanentWidget(self.loadBar)
        self.forwardPanel = install_forward_view(self)  # a dock, shown once an image is opened
        self.inversionTool = install_inversion(self)  # Invert / Regenerate in that dock (gui/inversion_view.py)
        self._menus()

        self.panel.modelRequested.connect(self._model_requested)
        self.panel.promptEdit.submitted.connect(self.run)  # Enter / Ctrl+Enter in a prompt box runs
        self.panel.negativeEdit.submitted.connect(self.run)
        self.panel.deviceCombo.activated.connect(self._device_changed)
        self.panel.dtypeCombo.activated.connect(self._device_changed)
        self.mainView.positionChanged.connect(lambda pos: self._view_moved(self.mainView, pos))
        self.mainView.scrubberBar.touched.connect(lambda: self._touch(self.mainView))
        self._set_busy(False)

    def _button(self, text: str, name: str, tip: str, slot) -> QPushButton:
        b = QPushButton(text, objectName=name)
        b.setToolTip(tip)
        b.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        b.clicked.connect(slot)
        return b

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        a.triggered.connect(slot)
        menu.addAction(a)
        return a

    def _menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self._action(m, "Open model folder…", self.open_model_dialog, "Ctrl+O")
        self._action(m, "Open checkpoint file…", self.open_checkpoint_dialog)  # .safetensors, .ckpt (gui/models.py)
        self._action(m, "Open recipe…", self.open_recipe_dialog, "Ctrl+Shift+O")
        self._action(m, "Open image…", self.open_image_dialog, "Ctrl+I")  # the forward view (gui/files.py)
        self._action(m, "Open sweep…", lambda: open_sweep(self))  # gui/sweep_view.py
        self._action(m, "Save recipe…", self.save_recipe_dialog, "Ctrl+S")
        self._action(m, "Export…", self.export_dialog, "Ctrl+E")
        m.addSeparator()
        self._action(m, "Quit", self.close, "Ctrl+Q")
        m = self.menuBar().addMenu("&Run")
        self._action(m, "Run", self.run, "Ctrl+R")
        self._action(m, "Pause / play", self.space, "Space")
        self._action(m, "Step once", self.step_once, "Ctrl+Right")
        self._action(m, "Stop", self.stop, "Esc")
        m.addSeparator()
        self._action(m, "Continue from here", self.branch, "Ctrl+B")
        self._action(m, "Compare…", self.compare, "Ctrl+K")
        self._action(m, "Invert image…", self.inversionTool.invert_from_menu)  # gui/inversion_view.py
        self._action(m, "Regenerate from x_T", self.inversionTool.regenerate)
        m = self.menuBar().addMenu("&View")
        self._action(m, "Step back", lambda: self._active_view().scrubberBar.step(-1), "Left")
        self._action(m, "Step forward", lambda: self._active_view().scrubberBar.step(+1), "Right")
        self._action(m, "First step", lambda: self._active_view().scrubberBar.set_position(0), "Home")
        self._action(m, "Last step", lambda: self._active_view().scrubberBar.set_position(10**9), "End")
        m.addAction(self.forwardDock.toggleViewAction())
        self._action(m, "Attention grid…", lambda: self._active_view().attentionStrip.open_grid())  # attention_view.py
        m = self.menuBar().addMenu("&Help")
        self._action(m, "Keyboard shortcuts", self._shortcuts_help)

    def shortcuts(self) -> list[tuple[str, str]]:
        """(keys, what) for every keyboard shortcut the window has, read from its actions and shortcuts,
        so the Help list cannot drift from what the keys do."""
        rows: dict[str, str] = {}
        for a in self.findChildren(QAction):
            for seq in a.shortcuts():
                keys = seq.toString(QKeySequence.SequenceFormat.NativeText)
                if keys and a.text():
                    rows.setdefault(keys, a.text().replace("&", "").rstrip("…").strip())
        for sc in self.findChildren(QShortcut):
            keys = sc.key().toString(QKeySequence.SequenceFormat.NativeText)
            if keys:
                rows.setdefault(keys, sc.whatsThis() or sc.objectName() or "shortcut")
        return sorted(rows.items(), key=lambda kv: (len(kv[0]) > 5, kv[0]))

    def shortcuts_text(self) -> str:
        return "\n".join(f"{keys}\t{what}" for keys, what in self.shortcuts())

    def _shortcuts_help(self) -> None:
        rows = "".join(f"<tr><td><b>{keys}</b>&nbsp;&nbsp;</td><td>{what}</td></tr>" for keys, what in self.shortcuts())
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    # == jobs =============================================================================================
    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _start(self, fn, *args, on_yield=None, on_end=None, kind: str = "run", **kwargs) -> GeneratorWorker:
        """Run ``fn`` on a worker thread; ``on_end(worker)`` runs on the GUI thread once it has finished."""
        w = GeneratorWorker(fn, *args, kind=kind, **kwargs)
        self._live_traj = None
        if on_yield:
            w.deliver_to(on_yield)
        w.on_end = on_end
        w.finished.connect(self._reap)
        self.worker = w
        self._workers.add(w)
        self._set_busy(True)
        w.start()
        return w

    def _reap(self) -> None:
        for w in [w for w in self._workers if w.isFinished()]:
            w.wait()
            self._workers.discard(w)
            if self.worker is w:
                self.worker = None
                self._set_busy(False)
            try:
                if w.on_end is not None:
                    w.on_end(w)
            except Exception as e:  # noqa: BLE001 - a failing handler must not leave the window half-updated
                self.report_exception(type(e), e, e.__traceback__)
            w.deleteLater()
        if self._pending is not None and self.worker is None:
            action, self._pending = self._pending, None
            action()

    def _after_current(self, action: Callable[[], None]) -> None:
        """Run ``action`` now, or once the current job has stopped."""
        if self.worker is None:
            action()
        else:
            self._pending = action
            self.worker.abort()

    def _set_busy(self, busy: bool) -> None:
        loaded = self.summary is not None
        loading = self.worker is not None and self.worker.kind == "load"
        self.runButton.setEnabled((not busy and loaded) or loading)  # Run while loading: runs once it is open
        self._offer_branching(not busy and loaded and self.trajectory is not None)  # branches.py
        self.compareButton.setEnabled(loaded)
        self.exportButton.setEnabled(self.trajectory is not None and len(self.trajectory) > 0 and not busy)
        self.stopButton.setEnabled(busy)
        self.pauseButton.setEnabled(busy)
        self.stepOnceButton.setEnabled(busy)
        if not busy:
            self.pauseButton.setChecked(False)

    # == running ==========================================================================================
    def current_recipe(self) -> Recipe:
        return self.panel.recipe(model=self.model_spec)

    def _valid_recipe(self) -> Optional[Recipe]:
        try:
            return self.current_recipe().validate()
        except RecipeError as e:
            self.show_error(str(e))
            return None

    def run(self) -> None:
        if self.worker is not None and self.worker.kind == "load":
            self.hide_error()
            self._queued_run = True
            self.statusBar().showMessage("The run starts as soon as the model is open…")
            return
        if self.busy or self.summary is None:
            return
        recipe = self._valid_recipe()
        if recipe is None:
            return
        self.settings.setValue("recipe", recipe.to_json())
        self.run_recipe(recipe)

    def run_recipe(self, recipe: Recipe) -> bool:
        """Start the main run of ``recipe`` (validated; the panel's own, or the forward view's image-to-image
        run); False, with a message, while another job runs."""
        if self.busy or self.summary is None:
            self.show_error("Wait for the current run or model to finish (Esc stops a run), then try again")
            return False
        self.hide_error()
        self._start(jobs.run_job, self.cache, recipe, tag="main", preview=self.panel.preview_setting(),
                    on_yield=self._on_step,
                    on_end=lambda w: self._run_ended(self.mainView, w))
        return True

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.abort()
            self.statusBar().showMessage("Stopping…")

    def toggle_pause(self) -> None:
        w = self.worker
        if w is None:
            self.pauseButton.setChecked(False)
            return
        view = next((v for v in [self.mainView, *self.branch_views()] if v.traj is self._live_traj), self.mainView)
        if w.paused:
            w.resume()
            view.paused = False
            self.pauseButton.setChecked(False)
            self.statusBar().showMessage("Running…")
        else:
            w.pause()
            view.paused = True
            view.show_position(view.position)  # a paused latent run gets its full decode
            self.pauseButton.setChecked(True)
            self.statusBar().showMessage("Paused — Space resumes, Step advances one step")

    def step_once(self) -> None:
        if self.worker is not None:
            self.worker.step_once()
            self.pauseButton.setChecked(True)

    def space(self) -> None:
        """Space: pause/resume a run in progress, otherwise play/pause the scrubber."""
        if self.worker is not None and self._run_total:
            self.toggle_pause()
        else:
            self._active_view().scrubberBar.toggle_play()

    def _view_for(self, tag):
        if tag == "main":
            return self.mainView
        return tag  # a branch view is its own tag

    def _on_step(self, item) -> None:
        view = self._view_for(item.tag)
        if not shiboken6.isValid(view):
            return
        if isinstance(item, jobs.Started):
            view.plan_t = item.plan_t
            view.header.setText(("Run: " if view is self.mainView else "Branch: ") + describe(item.trajectory.recipe))
            view.begin(item.trajectory, item.total)
            self._live_traj = item.trajectory
            if view is self.mainView:
                self.trajectory = item.trajectory
            self.follow_in_plots(view)
            self._run_t0, self._run_done, self._run_total = time.monotonic(), 0, item.total
            self.progress.setRange(0, max(item.total, 1))
            self.progress.setValue(0)
            self.statusBar().showMessage("Running…" + "".join(f" — note: {n}" for n in item.notes))
            return
        view.add_step(item.pos, item.xt, item.x0)
        self._run_done = item.pos
        pos, traj, total = item.pos, item.trajectory, self._run_total
        self._progress_sync.request("progress", lambda: self._show_progress(pos))
        if view is self._plotted_view:
            guided = traj.recipe.guidance != "none"
            self._plot_sync.request("meta", lambda: self.guidancePlot.set_meta(traj.meta, total, guided))
        if pos == total:
            self._progress_sync.flush()
            self._plot_sync.flush()

    def _run_name(self, view: TrajectoryView) -> str:
        """``main run``, or ``branch #2 from step 14: ddim 20`` (its tab's title)."""
        if view is self.mainView:
            return "main run"
        i = self.branchTabs.indexOf(view)
        return f"branch {self.branchTabs.tabText(i)}" if i >= 0 else "branch"

    def follow_in_plots(self, view: TrajectoryView) -> None:
        """Show ``view``'s run in the plots (its plan's points, its guidance curve) and name it in their titles."""
        self._plotted_view = view
        source = self._run_name(view)
        self.schedulePlot.set_source(source)
        self.guidancePlot.set_source(source)
        self.schedulePlot.set_plan(view.plan_t)
        traj = view.traj
        if traj is None:
            self.guidancePlot.set_meta([], 0)
        else:
            self.guidancePlot.set_meta(traj.meta, view.total, traj.recipe.guidance != "none")

    def _show_progress(self, pos: int) -> None:
        self.progress.setValue(pos)
        el = time.monotonic() - self._run_t0
        if el > 0 and pos:
            rate = pos / el
            left = (self._run_total - pos) / rate if rate > 0 else 0
            self.rateLabel.setText(f"{rate:.1f} steps/s · {left:.0f} s left")

    def _run_ended(self, view: TrajectoryView, w: GeneratorWorker, what: str = "run") -> None:
        is_main = view is self.mainView
        if not shiboken6.isValid(view):  # its tab was closed during the run
            self._run_total = 0
            self._set_busy(self.busy)
            return
        if w.outcome == "error":
            self.show_error(f"The {what} failed: {w.message}")
            if not is_main and view.traj is None:  # failed before starting: drop the empty tab
                i = self.branchTabs.indexOf(view)
                if i >= 0:
                    self._close_branch(i)
        view.end()
        traj = self._live_traj
        el = time.monotonic() - self._run_t0
        if traj is not None and w.outcome != "error":
            n = len(traj)
            if w.outcome == "done":
                self.statusBar().showMessage(f"Finished {n} steps in {el:.1f} s", 10000)
            else:
                self.statusBar().showMessage(f"Stopped after {n} of {self._run_total} steps", 10000)
        self._plot_sync.cancel("meta")
        self._progress_sync.cancel("progress")
        if traj is not None:
            if view is self._plotted_view:
                self.guidancePlot.set_meta(traj.meta, self._run_total, traj.recipe.guidance != "none")
            self.progress.setValue(len(traj))
        self._run_total = 0
        self.rateLabel.setText("")
        self._set_busy(self.busy)
        if is_main:
            self.runFinished.emit(traj)
        else:
            self.branchFinished.emit(traj)

    # == compare, export =================================================================================
    def compare(self) -> None:
        from .compare import CompareDialog

        if self.summary is None:
            return
        try:
            base = self.current_recipe().validate()
        except RecipeError as e:
            self.show_error(str(e))
            return
        dlg = CompareDialog(base, self.summary, self)
        self._dialogs.append(dlg)
        dlg.finished.connect(lambda *_: self._dialogs.remove(dlg) if dlg in self._dialogs else None)
        dlg.show()
        self.compareDialog = dlg

    def export_source(self):
        """The trajectory of the view the user looked at last (a branch or the main run)."""
        v = self._active_view()
        if v.traj is not None and len(v.traj):
            return v.traj
        return self.trajectory

    def export_dialog(self) -> None:
        from .export_dialog import ExportDialog

        traj = self.export_source()
        if traj is None or len(traj) == 0:
            self.show_error("Nothing to export yet: run the sampler first")
            return
        view = self._active_view()
        source = self._run_name(view) if view.traj is traj else "main run"
        at = view.position if view.traj is traj and view.position >= 1 else None  # its attention heat maps' step
        dlg = ExportDialog(traj, self, self.settings, source=f"{source} ({describe(traj.recipe)})", attention_step=at)
        dlg.exported.connect(lambda p: self.statusBar().showMessage(f"Exported {p}", 10000))
        dlg.open()

    # == errors ===========================================================================================
    def show_error(self, msg: str) -> None:
        from .errors import log_shown

        log_shown(msg)
        self.errorLabel.setText(msg)
        self.errorLabel.show()
        self.statusBar().showMessage(msg, 15000)
        self.errorShown.emit(msg)

    def hide_error(self) -> None:
        self.errorLabel.hide()

    def report_exception(self, exc_type, exc, tb) -> None:
        """An exception nothing else handled (``sys.excepthook`` while the window runs, or a failing
        handler): logged with its traceback, shown as one line; the window stays usable."""
        from .errors import log_exception, one_line_report

        log_exception(exc_type, exc, tb)
        self.show_error(one_line_report(exc))

    # == closing ===========================================================================================
    def shutdown(self) -> None:
        """Stop every worker thread and wait for it (no 'QThread destroyed while running')."""
        self._pending = None
        self.forwardPanel.shutdown()
        for dlg in list(self._dialogs):
            dlg.shutdown()
        for w in list(self._workers):
            w.abort()
        for w in list(self._workers):
            w.wait()
        self._workers.clear()
        self.worker = None

    def closeEvent(self, event) -> None:  # noqa: N802
        try:
            self.save_settings()
        finally:
            self.shutdown()
        super().closeEvent(event)
