"""Coalesce repaint-heavy updates: at most one per interval, and the latest request always lands."""
from __future__ import annotations

import math
import time
from typing import Callable

from PySide6.QtCore import QObject, QTimer


class Throttle(QObject):
    """Runs the pending update functions at most once per ``interval_ms``.

    ``request(key, fn)`` replaces the pending function for ``key``. When the last
    flush is older than the interval, everything pending runs at once (an isolated
    change shows without delay); otherwise it runs when the interval is over, so a
    burst of requests costs one repaint and the final state is never dropped.
    ``clock`` (seconds, monotonic) is what "older than the interval" is measured on.
    """

    def __init__(self, interval_ms: int, parent=None, clock: Callable[[], float] = time.monotonic):
        super().__init__(parent)
        self.interval_s = interval_ms / 1000.0
        self.clock = clock
        self._pending: dict[str, Callable[[], None]] = {}
        self._last = -math.inf
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    def request(self, key: str, fn: Callable[[], None]) -> None:
        self._pending[key] = fn
        if self._timer.isActive():
            return
        wait = self._last + self.interval_s - self.clock()
        if wait <= 0:
            self.flush()
        else:
            self._timer.start(max(1, math.ceil(wait * 1000)))

    def cancel(self, key: str) -> None:
        """Drop a pending update (an immediate one superseded it)."""
        self._pending.pop(key, None)

    def flush(self) -> None:
        """Run everything pending now."""
        self._timer.stop()
        pending, self._pending = self._pending, {}
        self._last = self.clock()
        for fn in pending.values():
            fn()

    @property
    def pending(self) -> bool:
        return bool(self._pending)
