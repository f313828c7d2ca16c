"""The attention view: a run's cross-attention maps (``Trajectory.attention``, session/attention_maps.py)
shown over its images, in the window.

A strip under a trajectory view's canvases has one toggle per prompt token, start and end tokens included
(``<start>``, ``<end>``); a weighted token shows its weight (``(red:1.3)`` → ``red ×1.3``), tinted as the
prompt box tints it. Checking a token blends its map over x̂₀ and x_t at the scrubbed position (the
canvas's overlay, drawn as the attention export draws its PNGs); scrubbing or playing moves the overlay
with it, so one watches attention form over the run. Checking it again removes it.

- Layers: DAAM's average over heads and layers on the latent grid (Tang et al. 2023, Sec. 3), or only
  the layers of one resolution (their own average, at their resolution), so the layers can be told apart.
- Colours: from 0 to the map's maximum at the step (every step's shape shows), or to the token's maximum
  over the run's kept steps (attention is seen to grow and settle).
- The grid dialog shows every token's map at the scrubbed position, over the x̂₀ the view shows.

Positions and steps: position p ≥ 1 of a view shows step p (1-based): the x̂₀ predicted during it, with
the maps of that step, and x_t after it. Position 0 is the initial noise, before any attention. A run
whose maps were thinned (to stay within their memory cap) shows the last kept step at or before p, and
the strip says so. A text-to-image run without maps says how to get them; a run of a model without text
(class-conditional, gmm) has no prompt and no strip.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QGridLayout, QHBoxLayout, QLabel, QScrollArea, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)

from ..session.attention_maps import mib, token_label
from .canvas import ImageCanvas
from .prompt_box import weight_tint
from .throttle import Throttle

SCALES = {"step": ("step max", "Colours from 0 to the map's maximum at this step: every step's shape shows"),
          "run": ("run max", "Colours from 0 to the token's maximum over the run's kept steps: attention is "
                             "seen to form and settle as you scrub or play")}
ALL_LAYERS = "all"  # the resolution choice that averages every layer (DAAM)
GRID_SIDE = 128  # px: the grid's images are subsampled to at most this (its cells are small)
GRID_INTERVAL_MS = 150  # the grid redraws at most this often while a run streams or the scrubber plays
NO_MAPS = "No attention maps in this run: tick Attention maps (in the panel) and run again"
CHECKED_STYLE = "QToolButton:checked { border: 2px solid #e8a000; font-weight: bold; }"  # the overlaid token
def kept_step(maps, pos: int) -> Optional[int]:
    """The kept step (0-based) whose maps go with view position ``pos``; None at the initial noise or
    before any step is kept."""
    if maps is None or pos < 1 or not len(maps):
        return None
    return maps.nearest_step(pos - 1)


def heat_at(maps, step: int, token: int, resolution=ALL_LAYERS) -> np.ndarray:
    """(B, h, w) float32: token ``token``'s map at kept ``step`` for every sample, over the latent grid
    (all layers) or at ``resolution``'s own grid (that resolution's layers)."""
    if resolution == ALL_LAYERS:
        return np.stack([maps.map(step, token, b) for b in range(maps.batch)])
    return np.stack([maps.resolution_map(step, token, resolution, b) for b in range(maps.batch)])


class AttentionStrip(QWidget):
    """The token strip of one trajectory view (see the module's text); ``view`` is a ``TrajectoryView``."""

    def __init__(self, view, parent=None):
        super().__init__(parent)
        self.setObjectName("attentionStrip")
        self.view = view
        self.traj = None
        self.selected: Optional[int] = None  # the token whose map is overlaid
        self.buttons: list[QToolButton] = []
        self.grid: Optional[AttentionGrid] = None
        self._run_tops: dict = {}  # (token, resolution, steps kept) → (B,) maxima over the run
        self._grid_sync = Throttle(GRID_INTERVAL_MS, self)
        title = QLabel("Attention")
        title.setStyleSheet("color: #b8b8c4;")
        self.tokenBox = QWidget()
        self.tokenBox.setStyleSheet(CHECKED_STYLE)
        self.tokenRow = QHBoxLayout(self.tokenBox)
        self.tokenRow.setContentsMargins(0, 0, 0, 0)
        self.tokenRow.setSpacing(2)
        self.tokenScroll = QScrollArea(objectName="attentionTokens")
        self.tokenScroll.setWidget(self.tokenBox)
        self.tokenScroll.setWidgetResizable(True)
        self.tokenScroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.tokenScroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.hint = QLabel(NO_MAPS, objectName="attentionHint")
        self.hint.setStyleSheet("color: #9a9aa6;")
        self.hint.setWordWrap(False)
        self.status = QLabel(objectName="attentionStatus")
        self.status.setStyleSheet("color: #9a9aa6;")
        self.resolutionCombo = QComboBox(objectName="attentionResolution")
        self.resolutionCombo.setToolTip("Which cross-attention layers: all of them averaged over the latent grid "
                                        "(DAAM), or only those at one resolution (their own grid)")
        self.scaleCombo = QComboBox(objectName="attentionScale")
        for key, (text, tip) in SCALES.items():
            self.scaleCombo.addItem(text, key)
            self.scaleCombo.setItemData(self.scaleCombo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.scaleCombo.setCurrentIndex(self.scaleCombo.findData("run"))
        self.scaleCombo.setToolTip("\n".join(f"{text}: {tip}" for text, tip in SCALES.values()))
        self.gridButton = QToolButton(text="Grid…", objectName="attentionGridButton")
        self.gridButton.setToolTip("Every token's map at the scrubbed step, in a window of its own")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        lay.setSpacing(6)
        lay.addWidget(title)
        lay.addWidget(self.tokenScroll, 1)
        lay.addWidget(self.hint, 1)
        lay.addWidget(self.status)
        lay.addWidget(self.resolutionCombo)
        lay.addWidget(self.scaleCombo)
        lay.addWidget(self.gridButton)
        self.resolutionCombo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.scaleCombo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.gridButton.clicked.connect(self.open_grid)
        view.positionChanged.connect(lambda _: self.refresh())
        view.channelsCheck.toggled.connect(lambda _: self.refresh())
        for canvas in (view.xtCanvas, view.x0Canvas):
            canvas.soloChanged.connect(lambda _: self._request_grid())
        self.hide()  # until a text-to-image run is shown

    # -- the run ---------------------------------------------------------------------------------
    @property
    def maps(self):
        return None if self.traj is None else self.traj.attention

    def show_run(self, traj) -> None:
        """Show ``traj``'s tokens (None: nothing); a token selected before stays selected where the new
        run has it (a re-run with a changed weight shows the same token's new map)."""
        before = (self.selected, self.buttons[self.selected].property("token")) if self.selected is not None else None
        self.traj = traj
        self._run_tops.clear()
        while self.tokenRow.count():
            item = self.tokenRow.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.selected = None
        self.setVisible(traj is not None and traj.recipe.prompt is not None)
        maps = self.maps
        tokens = list(zip(maps.tokens, maps.token_weights)) if maps is not None else []
        self.buttons = [self._token_button(i, token, len(tokens), weight) for i, (token, weight) in enumerate(tokens)]
        for b in self.buttons:
            self.tokenRow.addWidget(b)
        self.tokenRow.addStretch(1)
        self._fit_height()
        if before is not None:  # the same position if it holds the same token, else that token's first
            same = [i for i, (token, _) in enumerate(tokens) if token == before[1]]
            keep = before[0] if before[0] in same else same[0] if same else None
            if keep is not None:
                self.selected = keep
                self.buttons[keep].setChecked(True)
        self._update_choices()
        self.refresh()

    def _token_button(self, i: int, token: str, count: int, weight: float) -> QToolButton:
        b = QToolButton(text=token_label(i, token, count, weight), objectName=f"attentionToken{i}")
        b.setCheckable(True)
        b.setProperty("token", token)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        tint = weight_tint(weight)
        if tint is not None:
            b.setStyleSheet(f"QToolButton {{ background: rgba({tint.red()}, {tint.green()}, {tint.blue()}, "
                            f"{tint.alpha()}); }} {CHECKED_STYLE}")
        weighted = f", weight {weight:.3g} (from the prompt's brackets)" if weight != 1.0 else ""
        b.setToolTip(f"token {i}: {token!r}{weighted}\nClick: overlay where the image attends to it at the "
                     "scrubbed step; click again: remove")
        b.clicked.connect(lambda checked, i=i: self.select(i if checked else None))
        return b

    def _fit_height(self) -> None:
        """The token row's height: one row of buttons, and a scroll bar when they are wider than the strip."""
        h = max((b.sizeHint().height() for b in self.buttons), default=self.hint.sizeHint().height())
        self.tokenScroll.setFixedHeight(h + self.tokenScroll.horizontalScrollBar().sizeHint().height())

    def _update_choices(self) -> None:
        """The resolution choice: all layers, then each resolution the run has (filled in by the first step)."""
        maps = self.maps
        resolutions = maps.resolutions if maps is not None else []
        if self.resolutionCombo.count() == len(resolutions) + 1 and self.resolutionCombo.count() > 0:
            return
        chosen = self.resolutionCombo.currentData()
        self.resolutionCombo.blockSignals(True)
        self.resolutionCombo.clear()
        self.resolutionCombo.addItem("all layers", ALL_LAYERS)
        for res in resolutions:
            n = maps.layers[res]
            self.resolutionCombo.addItem(f"{res[0]}×{res[1]} ({n} layer{'s' if n != 1 else ''})", res)
        i = self.resolutionCombo.findData(chosen)
        self.resolutionCombo.setCurrentIndex(max(i, 0))
        self.resolutionCombo.blockSignals(False)

    # -- choosing -------------------------------------------------------------------------------
    def select(self, token: Optional[int]) -> None:
        """Overlay ``token``'s map (None: no overlay); its button is the only one checked."""
        self.selected = token
        for i, b in enumerate(self.buttons):
            b.setChecked(i == token)
        self.refresh()

    @property
    def resolution(self):
        return self.resolutionCombo.currentData() or ALL_LAYERS

    def heat(self, step: int, token: int) -> np.ndarray:
        return heat_at(self.maps, step, token, self.resolution)

    def tops(self, token: int, heat: np.ndarray) -> np.ndarray:
        """(B,): the value at the colour map's top for ``heat`` (``token``'s map at a step), by the scale choice."""
        if self.scaleCombo.currentData() == "step":
            return heat.reshape(len(heat), -1).max(axis=1)
        maps = self.maps
        key = (token, self.resolution, len(maps.steps))
        if key not in self._run_tops:
            self._run_tops[key] = np.max([self.heat(s, token).reshape(maps.batch, -1).max(axis=1)
                                          for s in list(maps.steps)], axis=0)
        return self._run_tops[key]

    # -- showing --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Put the selected token's map at the view's position on its canvases, and say what is shown."""
        view = self.view
        if view.traj is not self.traj:
            self.show_run(view.traj)
            return
        maps = self.maps
        has_maps = maps is not None and (len(maps) > 0 or not maps.notes)
        self.tokenScroll.setVisible(has_maps)
        self.hint.setVisible(not has_maps)
        for w in (self.resolutionCombo, self.scaleCombo, self.gridButton):
            w.setVisible(has_maps)
        if not has_maps:
            self.hint.setText(NO_MAPS if maps is None else maps.notes[0])
        self._update_choices()
        pos = view.position
        step = kept_step(maps, pos)
        self.status.setText(self._status(maps, pos, step) if has_maps else "")
        self.status.setToolTip(self._details(maps))
        heat = top = None
        name = ""
        if step is not None and self.selected is not None:
            heat = self.heat(step, self.selected)
            top = self.tops(self.selected, heat)
            name = maps.tokens[self.selected]
        view.x0Canvas.set_overlay(heat, top, name)
        if view.channelsCheck.isChecked() and view.channelsCheck.isVisible():  # latent channels: not the image
            heat = None
        view.xtCanvas.set_overlay(heat, top, name)
        self._request_grid()

    @staticmethod
    def _status(maps, pos: int, step: Optional[int]) -> str:
        if pos == 0:
            return "initial noise: no attention yet"
        if step is None:
            return ""
        shown = f" · maps of step {step + 1}" if step != pos - 1 else ""
        thinned = f" · one step in {maps.stride} kept" if maps.stride > 1 else ""
        return f"step {pos}{shown}{thinned}"

    @staticmethod
    def _details(maps) -> str:
        if maps is None:
            return ""
        lines = [f"{len(maps.tokens)} tokens, {len(maps)} of {maps.total_steps} steps kept, {mib(maps.nbytes)} held"]
        return "\n".join(lines + list(maps.notes))

    # -- the grid -------------------------------------------------------------------------------
    def open_grid(self) -> "AttentionGrid":
        """Show the grid of every token's map (one per strip, kept in step with the scrubber)."""
        if self.grid is None:
            self.grid = AttentionGrid(self, self.window())
        self.grid.rebuild()
        self.grid.show()
        self.grid.raise_()
        return self.grid

    def _request_grid(self) -> None:
        if self.grid is not None and self.grid.isVisible():
            self._grid_sync.request("grid", self.grid.rebuild)


class AttentionGrid(QDialog):
    """Every token's map at the strip's view position, one cell (a canvas) per token, over the x̂₀ the
    view shows (the same samples: the whole batch, or the one shown alone)."""

    def __init__(self, strip: AttentionStrip, parent=None):
        super().__init__(parent)
        self.setObjectName("attentionGrid")
        self.setWindowTitle("Attention maps")
        self.strip = strip
        self.cells: list[ImageCanvas] = []
        self._tokens: Optional[list[str]] = None
        self.caption = QLabel(objectName="attentionGridCaption")
        self.cellBox = QWidget()
        self.cellGrid = QGridLayout(self.cellBox)
        self.cellGrid.setSpacing(2)
        self.cellGrid.setContentsMargins(0, 0, 0, 0)
        lay = QVBoxLayout(self)
        lay.addWidget(self.caption)
        lay.addWidget(self.cellBox, 1)
        self.resize(860, 480)

    def _make_cells(self, maps) -> None:
        for c in self.cells:
            c.deleteLater()
        self.cells = []
        tokens = list(maps.tokens) if maps is not None else []
        cols = max(1, math.ceil(math.sqrt(len(tokens) * 1.8)))
        for i, (token, weight) in enumerate(zip(tokens, maps.token_weights if maps is not None else ())):
            cell = ImageCanvas(token_label(i, token, len(tokens), weight))
            cell.setObjectName(f"attentionCell{i}")
            cell.setMinimumSize(90, 90)
            cell.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            self.cellGrid.addWidget(cell, i // cols, i % cols)
            self.cells.append(cell)
        self._tokens = tokens

    def rebuild(self) -> None:
        """Fill the cells for the view's position (and make them anew for another run's tokens)."""
        strip = self.strip
        maps, view = strip.maps, strip.view
        if self._tokens != (list(maps.tokens) if maps is not None else []):
            self._make_cells(maps)
        pos = view.position
        step = kept_step(maps, pos)
        frames = view.x0Canvas.frames
        if frames is not None and max(frames.shape[1:3]) > GRID_SIDE:  # small cells: blend fewer pixels
            k = math.ceil(max(frames.shape[1:3]) / GRID_SIDE)
            frames = np.ascontiguousarray(frames[:, ::k, ::k])
        solo = view.x0Canvas.solo
        self.caption.setText(f"{strip._status(maps, pos, step)} · {strip.resolutionCombo.currentText()} · colours "
                             f"to the {strip.scaleCombo.currentText()}" if maps is not None else NO_MAPS)
        for i, cell in enumerate(self.cells):
            cell.solo = solo
            heat = strip.heat(step, i) if step is not None and frames is not None else None
            cell.overlay = None  # set_overlay below blends once, over the frames set here
            cell.set_frames(frames, "", "no x̂₀ at the initial noise")
            cell.set_overlay(heat, strip.tops(i, heat) if heat is not None else None, maps.tokens[i])
