"""The timestep scrubber: a slider over trajectory positions, with play/pause and step buttons.

The slider spans the run's planned steps (0 … total) from the start, so its
handle shows how far the run has come; positions not computed yet cannot be
selected (the handle stops at the newest step, ``available``). During a run it
follows the newest step until the user grabs it (presses the slider or steps
back); moving it to the newest step (or pressing play) follows again.
"""
from __future__ import annotations

from PySide6.QtCore import QTimer, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QStyle, QToolButton, QWidget


class ScrubberBar(QWidget):
    positionChanged = Signal(int)
    touched = Signal()  # the user moved it (press, step buttons, keys, play)

    def __init__(self, slider_name: str = "scrubber", parent=None):
        super().__init__(parent)
        self.total = 0  # planned steps
        self.available = 0  # the newest position computed so far
        self.following = True
        st = self.style()
        self.backButton = QToolButton(icon=st.standardIcon(QStyle.StandardPixmap.SP_MediaSeekBackward))
        self.backButton.setToolTip("Step back (Left)")
        self.playButton = QToolButton(icon=st.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.playButton.setToolTip("Play / pause the trajectory (Space)")
        self.forwardButton = QToolButton(icon=st.standardIcon(QStyle.StandardPixmap.SP_MediaSeekForward))
        self.forwardButton.setToolTip("Step forward (Right)")
        for b in (self.backButton, self.playButton, self.forwardButton):
            b.setAutoRaise(True)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName(slider_name)
        self.slider.setRange(0, 0)
        self.slider.setToolTip("Scrub through the steps of the run (0 = initial noise)")
        self.label = QLabel("step 0 / 0")
        self.label.setMinimumWidth(110)
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        for w in (self.backButton, self.playButton, self.forwardButton):
            lay.addWidget(w)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self._timer = QTimer(self, interval=80)
        self._timer.timeout.connect(self._tick)
        self.backButton.clicked.connect(lambda: self.step(-1))
        self.forwardButton.clicked.connect(lambda: self.step(+1))
        self.playButton.clicked.connect(self.toggle_play)
        self.slider.sliderPressed.connect(self._grabbed)
        self.slider.actionTriggered.connect(lambda *_: self.touched.emit())
        self.slider.valueChanged.connect(self._changed)

    # -- state ----------------------------------------------------------------------------
    @property
    def value(self) -> int:
        return self.slider.value()

    def reset(self, total: int) -> None:
        self.total = total
        self.available = 0
        self.following = True
        self.stop_play()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(total, 0))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self._update_label()

    def set_available(self, last: int) -> None:
        """Positions 0..last exist; follow the newest unless the user holds the slider."""
        self.available = last
        if last > self.slider.maximum():  # more steps than planned (never expected): widen
            self.slider.setMaximum(last)
        if self.following and not self.slider.isSliderDown():
            self.slider.setValue(last)
        self._update_label()

    def set_position(self, pos: int) -> None:
        self.slider.setValue(min(pos, self.available))

    def step(self, delta: int) -> None:
        self.touched.emit()
        self.following = False
        self.slider.setValue(min(self.slider.value() + delta, self.available))
        if self.slider.value() == self.available and delta > 0:
            self.following = True

    # -- playback -------------------------------------------------------------------------
    def toggle_play(self) -> None:
        self.touched.emit()
        if self._timer.isActive():
            self.stop_play()
        else:
            if self.slider.value() >= self.available:
                self.slider.setValue(0)
            self.following = False
            self._timer.start()
            self.playButton.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPause))

    def stop_play(self) -> None:
        self._timer.stop()
        self.playButton.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))

    @property
    def playing(self) -> bool:
        return self._timer.isActive()

    def _tick(self) -> None:
        if self.slider.value() >= self.available:
            self.stop_play()
            self.following = True
            return
        self.slider.setValue(self.slider.value() + 1)

    # -- internals ------------------------------------------------------------------------
    def _grabbed(self) -> None:
        self.touched.emit()
        self.following = False
        self.stop_play()

    def _changed(self, v: int) -> None:
        if v > self.available:  # not computed yet: the handle stops at the newest step
            self.slider.setValue(self.available)
            return
        if self.slider.isSliderDown():
            self.following = v == self.available
        self._update_label()
        self.positionChanged.emit(v)

    def _update_label(self) -> None:
        self.label.setText(f"step {self.slider.value()} / {self.total}")
