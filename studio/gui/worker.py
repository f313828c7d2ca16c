"""A generator worker on its own QThread (after napari/superqt ``_qthreading``).

The job is a plain generator function; each value it yields is emitted as
``yielded``. Pause and abort are checked after every yield: ``abort()`` closes the
generator (its ``finally`` blocks run in the worker thread), ``pause()`` blocks
the thread between two yields, ``step_once()`` lets one more value through.
The job's return value is emitted as ``done``; an exception is emitted on ``errored``
as the exception object (``message`` gives its one line for the window; never a
traceback). ``abort()`` also cancels work that yields nothing for a long time
(hashing a model's weights while it loads): the job runs inside ``cancel.cancellable``
and long loops stop at their next ``cancel.check()``.

Backpressure: a handler connected with ``deliver_to`` acknowledges each value, and
the job waits (without holding the GIL) while ``max_ahead`` values are still
unhandled. A fast job (the exact ``gmm`` model, whose steps are mostly Python; its rate is
in benchmarks/RESULTS.md, section 4) would otherwise keep the GIL busy while the GUI thread paints, and every Python
call of that paint would wait up to the interpreter's switch interval (5 ms).
"""
from __future__ import annotations

import inspect
import logging
import threading
from typing import Optional

from PySide6.QtCore import QThread, Signal

from ..core import cancel
from ..core.file_reading import FileReadError
from ..core.guidance import GuidanceError
from ..core.loading import ModelLoadError
from ..core.records import SamplingError
from ..core.schedule import ScheduleError
from ..session.atomic import OutputError
from ..session.recipe import RecipeError

log = logging.getLogger(__name__)

MAX_AHEAD = 4  # values a job may run ahead of its handler (see benchmarks/bench_gui.py)


# errors whose message is written for the user (one line naming the problem): shown as they are
USER_ERRORS = (ModelLoadError, RecipeError, SamplingError, GuidanceError, ScheduleError, OutputError, FileReadError,
               ValueError)


def one_line(exc: BaseException) -> str:
    """A short human message for any exception raised by a job."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out of memory: lower the batch size or the precision, or use another device"
    if isinstance(exc, USER_ERRORS):
        return text or exc.__class__.__name__
    name = exc.__class__.__name__
    return f"{name}: {text}" if text else name


class GeneratorWorker(QThread):
    yielded = Signal(object)
    done = Signal(object)
    errored = Signal(object)  # the exception
    aborted = Signal()

    def __init__(self, fn, *args, kind: str = "run", **kwargs):
        super().__init__()
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.kind = kind  # "load", "run" (main run or branch) or "compare": what the owner started it for
        self.view = None  # the view a branch run streams into (set by the owner)
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._abort = False
        self._paused = False
        self._credit = 0  # steps allowed through while paused
        self.held = threading.Event()  # set while the job waits between two values (paused, or its handler behind)
        self.max_ahead: Optional[int] = None  # set by deliver_to
        self._sent = 0  # values emitted
        self._handled = 0  # values the handler has finished with
        self.outcome = None  # "done" | "error" | "aborted"
        self.result = None
        self.error: Optional[BaseException] = None
        self.on_end = None  # called on the GUI thread once the thread has finished (set by the owner)

    @property
    def message(self) -> str:
        """The error as one line for the window ("" when there was none)."""
        return one_line(self.error) if self.error is not None else ""

    # -- control (any thread) ---------------------------------------------------
    def abort(self) -> None:
        self._cancel.set()
        with self._cond:
            self._abort = True
            self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def step_once(self) -> None:
        with self._cond:
            self._paused = True
            self._credit += 1
            self._cond.notify_all()

    def deliver_to(self, handler, max_ahead: int = MAX_AHEAD) -> None:
        """Connect ``handler`` to ``yielded``; the job stays at most ``max_ahead`` values ahead of it."""
        self.max_ahead = max_ahead
        self.yielded.connect(handler)
        self.yielded.connect(self._value_handled)  # runs on the GUI thread after ``handler``

    def _value_handled(self, _value=None) -> None:
        with self._cond:
            self._handled += 1
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def aborting(self) -> bool:
        return self._abort

    def _gate(self) -> bool:
        """Block while paused; False when the job must stop."""
        with self._cond:
            while not self._abort and ((self._paused and self._credit == 0) or self._ahead()):
                self.held.set()
                self._cond.wait(0.1)
            self.held.clear()
            if self._credit:
                self._credit -= 1
            return not self._abort

    def _ahead(self) -> bool:
        """The handler has ``max_ahead`` or more values still to handle (caller holds ``_cond``)."""
        return self.max_ahead is not None and self._sent - self._handled >= self.max_ahead

    # -- thread body ----------------------------------------------------------------
    def run(self) -> None:  # noqa: D401 - QThread API
        with cancel.cancellable(self._cancel):
            self._run()

    def _run(self) -> None:
        gen = None
        try:
            result = self._fn(*self._args, **self._kwargs)
            if not inspect.isgenerator(result):
                self.outcome, self.result = "done", result
                self.done.emit(result)
                return
            gen = result
            first = True
            while True:
                if self._abort or (not first and not self._gate()):
                    gen.close()
                    self.outcome = "aborted"
                    self.aborted.emit()
                    return
                try:
                    value = next(gen)
                except StopIteration as stop:
                    self.outcome, self.result = "done", stop.value
                    self.done.emit(stop.value)
                    return
                first = False
                with self._cond:
                    self._sent += 1
                self.yielded.emit(value)
        except BaseException as e:  # noqa: BLE001 - every failure becomes a message
            if gen is not None:
                try:
                    gen.close()
                except BaseException:  # noqa: BLE001
                    pass
            if isinstance(e, cancel.Cancelled):  # abort() stopped long work between two yields
                self.outcome = "aborted"
                self.aborted.emit()
                return
            log.debug("job failed", exc_info=True)
            self.outcome, self.error = "error", e
            self.errored.emit(e)
