"""The window's inversion: invert the forward view's image to noise, regenerate (or edit) it from that noise,
and compare the result with the original.

- "Invert" (a row in the forward view's dock; Run → Invert image…, which opens an image first when none is
  open) builds ``session.inversion.inversion_recipe`` from the panel's settings (model, prompt, guidance,
  steps, spacing, a deterministic sampler) and the row's method and iterations (widgets made from the
  ``INVERSION`` / ``INVERSION_ITERS`` declarations). A setting an inversion cannot use (a stochastic sampler)
  is the recipe's one-line error, and the window keeps its run. The inversion runs on the window's worker
  thread like a run (Esc stops it, the progress bar counts its steps) and streams into the main view, which
  walks it forwards: position 0 is the image, the last one x_T. Its recipe's ``inversion`` field marks it,
  so branching from it "as a sampling run" is refused (``branch_refusal``).
- "Regenerate" starts an ordinary run (the window's ``run_recipe``) from the inverted x_T with the panel's
  current settings: the same ones regenerate the image, changed ones (prompt, guidance, sampler, LoRA
  weight) edit it (``session.inversion.regeneration_recipe``). x̂₀ stays unclipped unless the panel asks
  for a processing explicitly, and the run's caption says so (``session.inversion.caption``).
- When that run ends, ``RoundTripDialog`` shows the original and the regenerated image side by side with
  the round trip's PSNR (``session.inversion.round_trip``; for a latent model also the latent RMS error and
  the VAE's own round trip, the ceiling of the pixel PSNR), computed on the worker thread (a latent model
  decodes twice).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QPushButton,
                               QVBoxLayout, QWidget)

from ..core.inversion import INVERSION, INVERSION_ITERS
from ..core.samplers import OPTION_SCHEMA
from ..session.frames import to_uint8
from ..session.inversion import Inversion, RoundTrip, cached_x_T, caption, regeneration_recipe, round_trip
from ..session.recipe import Recipe, RecipeError
from . import jobs
from . import option_widgets as ow
from .canvas import ImageCanvas
from .files import IMAGE_FILTER

# fields of the panel's recipe a regeneration does not take from it: the inversion fixes the model, the one image
# (batch), where the run starts (x_T, not the seed's noise or an image) and what it records
NOT_FROM_PANEL = frozenset({"model", "device", "dtype", "classifier", "prediction_type", "batch", "seed",
                            "init_noise", "init_image", "init_image_sha256", "strength", "start_step", "inversion",
                            "x0_mode"})


def is_inversion(traj) -> bool:
    """``traj`` is an inversion's own trajectory (image → x_T), not a run (a regeneration starts at x_T)."""
    recipe = getattr(traj, "recipe", None)
    return recipe is not None and recipe.inversion is not None and recipe.init_noise is None


def branch_refusal(traj) -> Optional[str]:
    """Why "Continue from here" is not offered on ``traj``, or None where it is."""
    if is_inversion(traj):
        return ("this is an inversion, which walks from the image up to noise: continuing it as a sampling run "
                "would not retrace it; use Regenerate in the forward view to run back from its x_T")
    return None


def panel_changes(panel: Recipe, inverted: Recipe) -> dict:
    """What of the panel's recipe differs from the inversion's settings, as ``regeneration_recipe``'s changes:
    every field but ``NOT_FROM_PANEL``; with another sampler, all of its options (``regeneration_recipe``
    resets them); x̂₀ processing only where the panel names one (a regeneration is unclipped by default)."""
    changes = {}
    for name in (f.name for f in dataclasses.fields(panel)):
        if name in NOT_FROM_PANEL:
            continue
        mine = getattr(panel, name)
        if mine != getattr(inverted, name) or (name in OPTION_SCHEMA and panel.sampler != inverted.sampler):
            changes[name] = mine
    if panel.x0_mode is not None:
        changes["x0_mode"] = panel.x0_mode
    return changes


class InversionBar(QWidget):
    """The forward view's inversion row: method, iterations and Regenerate (``install`` puts the Invert button
    beside "Denoise from here")."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("inversionBar")
        self.methodCombo = ow.make_widget(INVERSION)
        self.itersSpin = ow.make_widget(INVERSION_ITERS)
        self.itersSpin.setPrefix("K = ")
        self.invertButton = QPushButton("Invert", objectName="invertButton")
        self.invertButton.setToolTip("DDIM inversion: run the deterministic ODE from this image up to its noise x_T "
                                     "with the panel's model, prompt, guidance and steps; it appears in the main view")
        self.regenerateButton = QPushButton("Regenerate", objectName="regenerateButton")
        self.regenerateButton.setToolTip("Run from the inverted x_T with the panel's current settings (the same ones "
                                         "regenerate the image; a changed prompt, guidance, sampler or LoRA weight "
                                         "edits it) and compare the result with the original")
        self.regenerateButton.setEnabled(False)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel(INVERSION.label))
        lay.addWidget(self.methodCombo)
        lay.addWidget(self.itersSpin)
        lay.addStretch(1)
        lay.addWidget(self.regenerateButton)
        self.methodCombo.currentIndexChanged.connect(self._method_changed)
        self._method_changed()

    @property
    def method(self) -> str:
        return ow.value(self.methodCombo)

    @property
    def iters(self) -> Optional[int]:
        """K for fixed-point inversion; None for plain (``inversion_recipe`` then takes 0)."""
        return ow.value(self.itersSpin) if self.method == "fixed-point" else None

    def _method_changed(self, *_args) -> None:
        self.itersSpin.setEnabled(self.method == "fixed-point")


class RoundTripDialog(QDialog):
    """The original and the regenerated image side by side, with the round trip's numbers and caption."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("roundTripDialog")
        self.setWindowTitle("Inversion round trip")
        self.originalCanvas = ImageCanvas("original (fitted to the model)")
        self.originalCanvas.setObjectName("originalCanvas")
        self.regeneratedCanvas = ImageCanvas("regenerated")
        self.regeneratedCanvas.setObjectName("regeneratedCanvas")
        for c in (self.originalCanvas, self.regeneratedCanvas):
            c.setMinimumSize(200, 200)
        self.originalCanvas.soloChanged.connect(self.regeneratedCanvas.set_solo)
        self.regeneratedCanvas.soloChanged.connect(self.originalCanvas.set_solo)
        self.psnrLabel = QLabel(objectName="roundTripLabel")
        self.psnrLabel.setWordWrap(True)
        self.psnrLabel.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.captionLabel = QLabel(objectName="roundTripCaption")
        self.captionLabel.setWordWrap(True)
        self.captionLabel.setStyleSheet("color: #9a9aa6;")
        row = QHBoxLayout()
        row.addWidget(self.originalCanvas)
        row.addWidget(self.regeneratedCanvas)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addLayout(row, 1)
        lay.addWidget(self.psnrLabel)
        lay.addWidget(self.captionLabel)
        lay.addWidget(buttons)
        self.trip: Optional[RoundTrip] = None
        self.resize(560, 420)

    def show_round_trip(self, original: np.ndarray, regenerated: np.ndarray, trip: RoundTrip, recipe: Recipe,
                        edited: bool) -> None:
        self.trip = trip
        self.originalCanvas.set_frames(original, "")
        self.regeneratedCanvas.title = "edited" if edited else "regenerated"
        self.regeneratedCanvas.set_frames(regenerated, f"{recipe.sampler}, {recipe.steps} steps")
        what = "An edit: the settings differ from the inversion's; " if edited else ""
        self.psnrLabel.setText(what + trip.line()[:1].upper() + trip.line()[1:])
        self.captionLabel.setText(caption(recipe)[:1].upper() + caption(recipe)[1:])


class InversionTool(QObject):
    """The window's inversion (installed by ``install``): starts inversions and regenerations, keeps the
    last finished inversion, shows round trips."""

    inverted = Signal(object)  # the Inversion, once it has run to x_T (or stopped / failed: None)
    roundTripShown = Signal(object)  # RoundTrip

    def __init__(self, window, bar: InversionBar):
        super().__init__(window)
        self.window = window
        self.bar = bar
        self.inversion: Optional[Inversion] = None  # the last inversion that reached x_T
        self.dialog: Optional[RoundTripDialog] = None
        self._invert_when_open = False  # Run → Invert image… opened an image: invert it once it shows
        bar.invertButton.clicked.connect(self.invert)
        bar.regenerateButton.clicked.connect(self.regenerate)
        panel = window.forwardPanel
        panel.viewOpened.connect(self._view_opened)
        panel.errorRaised.connect(lambda _msg: setattr(self, "_invert_when_open", False))
        window.modelLoaded.connect(self._model_loaded)

    # -- inverting -------------------------------------------------------------------------------------------
    def invert_from_menu(self) -> None:
        """Run → Invert image…: invert the forward view's image, or ask for one first."""
        if self.window.forwardPanel.view is not None:
            self.invert()
            return
        path, _ = QFileDialog.getOpenFileName(self.window, "Open an image to invert", "", IMAGE_FILTER)
        if path:
            self.invert_path(path)

    def invert_path(self, path: str) -> None:
        """Open ``path`` in the forward view and invert it once it shows there."""
        self._invert_when_open = True
        self.window.open_image(path)

    def _view_opened(self, _view) -> None:
        if self._invert_when_open:
            self._invert_when_open = False
            self.invert()

    def recipe(self) -> Optional[Recipe]:
        """The inversion recipe of the forward view's image under the panel's settings and the row's method;
        None, with the one-line reason in the window's error bar, where there is none."""
        from ..session.inversion import inversion_recipe

        w = self.window
        view = w.forwardPanel.view
        if view is None:
            w.show_error("Invert: open an image first (File → Open image…, or drop one on the window)")
            return None
        try:
            return inversion_recipe(w.current_recipe().validate(), view.path, self.bar.method, self.bar.iters)
        except RecipeError as e:
            w.show_error(str(e))
            return None

    def invert(self) -> bool:
        """Start the inversion on the worker thread, streaming into the main view; False (with a message)
        where it cannot start: the window keeps its run."""
        w = self.window
        if w.busy or w.summary is None:
            w.show_error("Wait for the current run or model to finish (Esc stops a run), then invert")
            return False
        recipe = self.recipe()
        if recipe is None:
            return False
        w.hide_error()
        w._start(jobs.inversion_job, w.cache, recipe, tag="main", preview=w.panel.preview_setting(),
                 on_yield=self._on_step, on_end=self._ended)
        return True

    def _on_step(self, item) -> None:
        self.window._on_step(item)
        if isinstance(item, jobs.Started):
            r = item.trajectory.recipe
            self.window.mainView.header.setText(f"Inversion, {r.steps} steps (position 0 is the image, the last x_T): "
                                                f"{caption(r).removeprefix('inverted ')}")
            self.bar.regenerateButton.setEnabled(False)

    def _ended(self, worker) -> None:
        self.window._run_ended(self.window.mainView, worker, what="inversion")
        inv = worker.result if worker.outcome == "done" else None
        if inv is not None:
            self.inversion = inv
            self.window.statusBar().showMessage(f"Inverted to x_T in {inv.total_steps} steps: Regenerate runs back "
                                                "from it with the panel's settings", 15000)
        self.bar.regenerateButton.setEnabled(self.inversion is not None)
        self.inverted.emit(inv)

    def _model_loaded(self, _summary) -> None:
        """Another model: the inversion's x_T belongs to the old one (and would keep it in memory)."""
        if self.inversion is not None and self.inversion.model is not self.window.cache.model:
            self.inversion = None
            self.bar.regenerateButton.setEnabled(False)

    # -- regenerating ----------------------------------------------------------------------------------------
    def regeneration(self) -> Optional[tuple[Recipe, bool]]:
        """(the recipe of a run from the inverted x_T with the panel's settings, whether they differ from the
        inversion's: an edit); None, with a message, where there is none."""
        w, inv = self.window, self.inversion
        if inv is None:
            w.show_error("Regenerate: invert an image first (Invert in the forward view)")
            return None
        try:
            panel = w.current_recipe().validate()
            if panel.model != inv.recipe.model:
                raise RecipeError(f"the image was inverted with {inv.recipe.model}, and the panel now has "
                                  f"{panel.model}; invert it again with this model")
            changes = panel_changes(panel.resolved(), inv.recipe)
            recipe = regeneration_recipe(inv.recipe, cached_x_T(inv.x_T, inv.recipe), **changes)
            return recipe, bool(changes)
        except (RecipeError, OSError) as e:
            w.show_error(f"Regenerate: {e}")
            return None

    def regenerate(self) -> bool:
        """Start the regeneration as the window's main run; its round trip is shown when it ends."""
        made = self.regeneration()
        if made is None or not self.window.run_recipe(made[0]):
            return False
        edited = made[1]
        worker, inv = self.window.worker, self.inversion
        run_ended = worker.on_end

        def ended(w):
            run_ended(w)
            if w.outcome == "done" and w.result is not None:
                self._measure(inv, w.result, edited)

        worker.on_end = ended
        return True

    def _measure(self, inv: Inversion, traj, edited: bool) -> None:
        """The round trip of the regeneration ``traj``, computed off the GUI thread, then shown."""

        def job():
            trip = round_trip(inv, traj.final())
            shown = traj.decodes.final() if traj.decodes is not None else to_uint8(traj.final())
            return trip, to_uint8(inv.pixels), shown

        def done(w):
            if w.outcome == "done":
                trip, original, shown = w.result
                self._show(original, shown, trip, traj.recipe, edited)
            elif w.outcome == "error":
                self.window.show_error(f"The round trip could not be measured: {w.message}")

        self.window._start(job, kind="round trip", on_end=done)

    def _show(self, original, shown, trip: RoundTrip, recipe: Recipe, edited: bool) -> None:
        if self.dialog is None:
            self.dialog = RoundTripDialog(self.window)
        self.dialog.show_round_trip(original, shown, trip, recipe, edited)
        self.dialog.show()
        self.dialog.raise_()
        self.window.statusBar().showMessage(trip.line(), 15000)
        self.roundTripShown.emit(trip)


def install(window) -> InversionTool:
    """Put Invert beside the forward view's "Denoise from here" and the inversion row under it; return the
    window's ``InversionTool``."""
    bar = InversionBar()
    panel = window.forwardPanel
    panel.buttonRow.addWidget(bar.invertButton)
    panel.layout().addWidget(bar)
    # an inversion's or a regeneration's caption names the image and how it was inverted: it wraps rather
    # than widening the window past the screen
    window.mainView.header.setWordWrap(True)
    return InversionTool(window, bar)
