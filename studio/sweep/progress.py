"""The sweep's progress line on stderr: cells done / total, cells per minute, time left.

On a terminal one line is rewritten in place; into a file (an overnight run's log) a line is
written at most every ``every_s`` seconds and at the end, so the log stays readable.
Every line starts ``studio:``, as the command's errors (``studio: error: …``) and warnings do.
"""
from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 20m``."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class SweepProgress:
    def __init__(self, total: int, already: int = 0, stream=None, every_s: float = 30.0, label: str = "studio"):
        self.total, self.already = total, already
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if not self.tty else 0.2
        self.label = label
        self.t0 = time.perf_counter()
        self.done = 0
        self.failed = 0
        self._last = -1e9
        self._open = False

    def text(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / elapsed * 60
        left = self.total - self.already - self.done
        eta = duration(left / rate * 60) if rate > 0 else "?"
        before = f" ({self.done} now, {self.already} from an earlier run)" if self.already else ""
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self.label}: {self.already + self.done}/{self.total} cells{before}{failed}, "
                f"{rate:.1f} cells/min, ETA {eta}")

    def update(self, done: int, failed: int = 0, force: bool = False) -> None:
        self.done, self.failed = done, failed
        now = time.perf_counter()
        finished = self.already + done >= self.total
        if not (force or finished) and now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.text() + " \x1b[K")
            self._open = not finished
            if finished:
                self.stream.write("\n")
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        """End an open in-place line before another message is printed."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def note(self, message: str) -> None:
        self.end_line()
        self.stream.write(f"{self.label}: {message}\n")
        self.stream.flush()
