"""Opening models from the window: picker, folder dialog, loading in a worker, recent models."""
from __future__ import annotations

import gc
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFileDialog

from ..core.loading import BUILTINS
from . import jobs, pickle_consent
from .panel import OPEN_FOLDER

MAX_RECENT = 8


def settle_heap() -> None:
    """Collect, then move every live object to the collector's permanent generation (``gc.freeze``).

    After start-up and a model load the heap holds hundreds of thousands of long-lived objects
    (torch, Qt, pyqtgraph, diffusers). A full collection walks all of them while holding the GIL, and
    one in the worker thread during a run stalls the window (``python -m benchmarks.profile_gui_stalls``
    attributes the stalls; ``--unfrozen`` shows them without the freeze). Frozen objects are not
    walked. Unfreezing first lets the next load reclaim whatever was frozen and has since died.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHandling:
    """MainWindow's model methods (a mixin: uses the window's panel, settings, views and workers)."""

    def _model_requested(self, spec: str) -> None:
        if spec == OPEN_FOLDER:
            self.open_model_dialog()
        elif spec != self.model_spec:
            self.open_model(spec)

    def _device_changed(self, *_) -> None:
        if self.model_spec:
            self.load_model(self.model_spec)

    def open_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a diffusers model folder", str(Path.home()))
        if folder:
            self.open_model(folder)

    def open_checkpoint_dialog(self) -> None:
        """File → Open checkpoint file: a single-file SD 1.x/2.x/SDXL checkpoint (docs/checkpoints.md)."""
        from ..checkpoints import CHECKPOINT_SUFFIXES

        patterns = " ".join(f"*{s}" for s in CHECKPOINT_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self, "Open a single-file checkpoint", str(Path.home()),
                                              f"Checkpoints ({patterns});;All files (*)")
        if path:
            self.open_model(path)

    def open_model(self, spec: str) -> None:
        """The user opens a model (the picker, File menu, a drop, the command line): a prediction type
        chosen for another model (a recipe's ``prediction_type``) does not carry over to it."""
        recipe = self.current_recipe()
        if recipe.prediction_type is not None and spec != self.model_spec:
            self.panel.set_recipe(recipe.replace(prediction_type=None))
        self.load_model(spec)

    def load_model(self, spec: str) -> None:
        """Open a model in the worker thread; the window stays usable, a failure keeps the previous model.
        A load that a newer one replaces ends quietly: the newer one decides (and starts a queued run).
        A pickled file is opened only once the user agrees (pickle_consent.py); "No" keeps the model."""
        self.hide_error()  # opening a model is the user's next action (the load at start-up has none to hide)
        if not pickle_consent.consent(self, spec):
            pickle_consent.declined(self, spec)
            return

        def start():
            recipe = self.panel.recipe(model=spec)
            self._loading = (recipe.device, recipe.dtype)
            self.loadBar.show()
            self.statusBar().showMessage(f"Loading model {spec}…")
            if self.trajectory is None:
                self.mainView.clear("loading model…")
            self._start(jobs.load_job, self.cache, recipe, kind="load",
                        on_end=lambda w: self._load_ended(spec, w))
        self._after_current(start)

    def _load_ended(self, spec: str, w) -> None:
        if w.outcome == "done":
            self._model_ready(w.result)
        elif w.outcome == "aborted" and self._pending is not None:
            self.loadBar.hide()  # replaced by the load that starts next: not a failure, nothing to report
        else:
            self._model_error(spec, w.message or "cancelled")

    def _model_ready(self, summary: jobs.ModelSummary) -> None:
        self.loadBar.hide()
        self.summary = summary
        self.model_spec = summary.spec
        self.setWindowTitle(f"Sampling Studio — {summary.info.name}")
        self._good_device = self._loading
        self.panel.show_model(summary.spec)
        self.panel.set_model_info(summary.info, summary.device)
        if summary.info.text_conditioned:
            self.panel.set_default_preview(summary.preview, summary.decode_share)
        self.schedulePlot.set_schedule(summary)
        if summary.spec not in BUILTINS:
            self._remember_model(summary.spec)
        self.settings.setValue("model", summary.spec)
        self.statusBar().showMessage(f"Model {summary.info.name} ready ({summary.info.source})", 5000)
        # an error on show stays until it is dismissed or the user acts again (run, open, pick a model):
        # a load that finishes is not the user's action
        if self.trajectory is None:
            self.mainView.clear()
        self._set_busy(self.busy)
        settle_heap()
        self.modelLoaded.emit(summary)
        self.check_recipe_weights()
        if self._queued_run:
            self._queued_run = False
            QTimer.singleShot(0, self.run)

    def _model_error(self, spec: str, msg: str) -> None:
        self.loadBar.hide()
        self._queued_run = False
        self._recipe_weights = None
        good = self._good_device
        if good is not None:  # the previous model stays, with its device and precision
            for combo, value in zip((self.panel.deviceCombo, self.panel.dtypeCombo), good):
                combo.setCurrentIndex(max(combo.findData(value), 0))
        self.panel.show_model(self.model_spec or "gmm")
        keep = f"; still using {self.model_spec}" if self.model_spec else ""
        self.show_error(f"Could not open model {spec}: {msg}{keep}")
        if self.trajectory is None:
            self.mainView.clear("no model loaded — pick one in the Model box" if not self.summary else
                                "press Run (Ctrl+R) to sample")
        self.modelFailed.emit(msg)

    def _remember_model(self, path: str) -> None:
        recent = [p for p in self._recent() if p != path]
        recent.insert(0, path)
        self.settings.setValue("recent_models", recent[:MAX_RECENT])
        self.panel.set_recent(recent[:MAX_RECENT])

    def _recent(self) -> list[str]:
        v = self.settings.value("recent_models", [])
        if isinstance(v, str):
            v = [v]
        return [str(p) for p in (v or [])]
