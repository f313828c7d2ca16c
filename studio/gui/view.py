"""A trajectory view: x_t and x̂₀ canvases side by side, a caption, its prompt's attention strip
(attention_view.py; text-to-image runs only) and its own scrubber."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ..session.decodes import FULL, shown
from ..session.latent_views import channel_mosaic
from .attention_view import AttentionStrip
from .canvas import ImageCanvas
from .full_decode import shared_decoder
from .scrubber import ScrubberBar


SETTLE_MS = 250  # a position shown this long without moving gets its full decode (latent models)


def _t(v: float) -> str:
    return "0" if v < 0 else f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def start_state(traj) -> str:
    """What position 0 holds: the image an inversion starts from, an image-to-image run's noised image, or
    noise."""
    r = traj.recipe
    if getattr(r, "inversion", None) is not None and r.init_noise is None:
        return "image"
    return "noised image" if getattr(r, "init_image", None) is not None else "noise"


def xt_caption(traj, pos: int) -> str:
    if not traj.meta:
        return f"x_T: initial {start_state(traj)}" if start_state(traj) == "noise" else start_state(traj)
    if pos == 0:
        m = traj.meta[0]
        return f"{start_state(traj)}  t={_t(m.t)}  σ={m.sigma:.3g}  ᾱ={m.alpha_bar:.4g}"
    m = traj.meta[pos - 1]
    return f"step {m.index + 1}  t={_t(m.t_next)}  σ={m.sigma_next:.3g}  ᾱ={m.alpha_bar_next:.4g}"


def x0_caption(traj, pos: int) -> str:
    if pos == 0 or not traj.meta:
        return ""
    m = traj.meta[pos - 1]
    return f"at step {m.index + 1}  t={_t(m.t)}  σ={m.sigma:.3g}  ᾱ={m.alpha_bar:.4g}"


class TrajectoryView(QWidget):
    """Shows one trajectory; ``add_step`` during a run, repainted at most ~30 times a second."""

    positionChanged = Signal(int)

    def __init__(self, names: tuple[str, str, str] = ("xtCanvas", "x0Canvas", "scrubber"), parent=None):
        super().__init__(parent)
        self.xtCanvas = ImageCanvas("x_t  noisy state")
        self.xtCanvas.setObjectName(names[0])
        self.x0Canvas = ImageCanvas("predicted x₀")
        self.x0Canvas.setObjectName(names[1])
        self.scrubberBar = ScrubberBar(names[2])
        self.scrubber = self.scrubberBar.slider
        self.header = QLabel()
        self.header.setStyleSheet("color: #b8b8c4; padding: 2px 4px;")
        self.channelsCheck = QCheckBox("x_t as latent channels")
        self.channelsCheck.setObjectName(names[0] + "Channels")
        self.channelsCheck.setToolTip("Show the latent state's channels side by side (grey, −3..3) instead of "
                                      "its RGB preview")
        self.channelsCheck.hide()
        self.plan_t = None
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.xtCanvas)
        row.addWidget(self.x0Canvas)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        top.addWidget(self.channelsCheck)
        lay.addLayout(top)
        lay.addLayout(row, 1)
        self.attentionStrip = AttentionStrip(self)  # follows positionChanged: the overlay moves with the scrubber
        lay.addWidget(self.attentionStrip)
        lay.addWidget(self.scrubberBar)
        self.traj = None
        self.total = 0
        self.xt: dict[int, np.ndarray] = {}
        self.x0: dict[int, np.ndarray] = {}
        self.latest = 0
        self._dirty = False
        self.paused = False  # set by the window while a run streaming here is paused
        self._timer = QTimer(self, interval=33)
        self._timer.timeout.connect(self.refresh)
        # a latent run's frames are previews; the position a person settles on gets the full decode
        self._settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(self._decode_settled)
        self.decoder = shared_decoder()
        self.decoder.ready.connect(self._decoded)
        self.channelsCheck.toggled.connect(lambda _: self._paint(self.position))
        self.scrubberBar.positionChanged.connect(self.show_position)
        self.xtCanvas.soloChanged.connect(self.x0Canvas.set_solo)  # both canvases show the same sample
        self.x0Canvas.soloChanged.connect(self.xtCanvas.set_solo)
        self.clear()

    # -- feeding -----------------------------------------------------------------------------
    def clear(self, message: str = "press Run (Ctrl+R) to sample") -> None:
        self.traj = None
        self.xt.clear()
        self.x0.clear()
        self.latest = 0
        self.scrubberBar.reset(0)
        self.xtCanvas.set_frames(None, "", message)
        self.x0Canvas.set_frames(None, "", "")
        self.attentionStrip.refresh()

    def begin(self, traj, total: int) -> None:
        """A new run starts: its trajectory holds the initial state at position 0."""
        self.traj = traj
        self.total = total
        self.xt = {0: traj.frame_xt(0)}
        self.x0 = {}
        self.latest = 0
        self.paused = False
        self.channelsCheck.setVisible(traj.decodes is not None)
        self.scrubberBar.reset(total)
        self.show_position(0)
        self._timer.start()

    def add_step(self, pos: int, xt: np.ndarray, x0: np.ndarray) -> None:
        self.xt[pos] = xt
        self.x0[pos] = x0
        self.latest = max(self.latest, pos)
        self._dirty = True

    def end(self) -> None:
        self._timer.stop()
        self._dirty = True
        self.refresh()
        self._settle.start()  # the final image gets its full decode

    def set_trajectory(self, traj) -> None:
        """Show a finished trajectory (e.g. a comparison or a reloaded one)."""
        self.begin(traj, traj.steps)
        self.latest = len(traj)
        self.end()

    # -- display -------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.traj is None or not self._dirty:
            return
        self._dirty = False
        before = self.scrubberBar.value
        self.scrubberBar.set_available(self.latest)
        if self.scrubberBar.value == before:
            self.show_position(before)

    def frames_at(self, pos: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        if self.traj is None:
            return None, None
        xt = self.xt.get(pos)
        if xt is None and pos < len(self.traj.xt):
            xt = self.xt[pos] = self.traj.frame_xt(pos)
        x0 = None
        if pos >= 1:
            x0 = self.x0.get(pos)
            if x0 is None and pos - 1 < len(self.traj.x0):
                x0 = self.x0[pos] = self.traj.frame_x0(pos - 1)
        return xt, x0

    def show_position(self, pos: int) -> None:
        if self.traj is None:
            return
        self._paint(pos)
        self.positionChanged.emit(pos)
        if self.traj.decodes is not None:
            self._settle.start()

    def _paint(self, pos: int) -> None:
        """Put position ``pos`` on the canvases: a latent run's full decode when there is one, else its
        previews (or x_t's latent channels)."""
        if self.traj is None:
            return
        xt, x0 = self.frames_at(pos)
        xt_note = x0_note = ""
        decodes = self.traj.decodes
        if decodes is not None:  # the caption says what is shown: the full decode, else the run's preview
            full_xt = decodes.peek(pos, "xt")
            full_x0 = decodes.peek(pos - 1, "x0") if pos >= 1 else None
            xt, xt_note = (full_xt, FULL) if full_xt is not None else (xt, shown(self.traj))
            x0, x0_note = (full_x0, FULL) if full_x0 is not None else (x0, shown(self.traj))
            xt_note, x0_note = f"  · {xt_note}", f"  · {x0_note}"
            if self.channelsCheck.isChecked():
                xt, xt_note = channel_mosaic(self.traj.full_state(pos - 1)["x"]), "  · latent channels"
        self.xtCanvas.set_frames(xt, xt_caption(self.traj, pos) + xt_note)
        start = start_state(self.traj)
        self.x0Canvas.set_frames(x0, x0_caption(self.traj, pos) + (x0_note if pos else ""),
                                 f"no prediction yet ({'initial noise' if start == 'noise' else 'the ' + start})")

    def _decode_settled(self) -> None:
        """The position has stayed put: decode it, unless it is the head of a run still streaming."""
        if self.traj is None or self.traj.decodes is None:
            return
        pos = self.position
        if self.live and pos >= self.latest and not self.paused:
            return
        if pos < len(self.traj.xt):
            self.decoder.request(self.traj, pos)

    def _decoded(self, traj, pos: int) -> None:
        if traj is self.traj and pos == self.position:
            self._paint(pos)

    @property
    def live(self) -> bool:
        """A run is streaming steps into this view (between ``begin`` and ``end``)."""
        return self._timer.isActive()

    @property
    def position(self) -> int:
        return self.scrubberBar.value

    def meta_at(self, pos: int):
        if self.traj is None or not self.traj.meta:
            return None
        return self.traj.meta[max(pos - 1, 0)]
