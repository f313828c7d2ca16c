"""Full VAE decodes for the window, off the GUI thread.

A latent model's step frames are cheap previews; the frame a person stops on deserves the real
image. ``FullDecoder.request(trajectory, pos)`` decodes x_t and x̂₀ at that position in one background
thread (the trajectory's ``DecodeCache`` keeps every decode) and emits ``ready(trajectory, pos)``;
requests that pile up while one decode runs collapse to the newest, so scrubbing never queues work.
"""
from __future__ import annotations

import threading
from typing import Optional

from PySide6.QtCore import QObject, Signal


class FullDecoder(QObject):
    ready = Signal(object, int)  # trajectory, position
    failed = Signal(object, int, str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lock = threading.Condition()
        self._pending: Optional[tuple] = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="full-decode", daemon=True)
        self._thread.start()

    def request(self, traj, pos: int) -> None:
        """Decode position ``pos`` of ``traj`` (x_t at pos, x̂₀ of the step that made it) unless cached."""
        cache = getattr(traj, "decodes", None)
        if cache is None:
            return
        if cache.peek(pos, "xt") is not None and (pos == 0 or cache.peek(pos - 1, "x0") is not None):
            self.ready.emit(traj, pos)
            return
        with self._lock:
            self._pending = (traj, pos)
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                traj, pos = self._pending
                self._pending = None
                self._busy = True
            try:
                cache = traj.decodes
                cache.get(pos, "xt")
                if pos >= 1:
                    cache.get(pos - 1, "x0")
            except Exception as e:  # noqa: BLE001 - reported in the window, one line
                self.failed.emit(traj, pos, str(e).splitlines()[0] if str(e) else e.__class__.__name__)
            else:
                self.ready.emit(traj, pos)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until no decode is running or pending (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._busy and self._pending is None, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after the decode in progress, and wait for it."""
        with self._lock:
            self._closed = True
            self._pending = None
            self._lock.notify_all()
        self._thread.join(timeout)


_shared: Optional[FullDecoder] = None


def shared_decoder() -> FullDecoder:
    """The process's decoder (one background thread for every view), closed when the app quits."""
    global _shared
    if _shared is None:
        from PySide6.QtWidgets import QApplication

        _shared = FullDecoder()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(_close_shared)
    return _shared


def _close_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None
