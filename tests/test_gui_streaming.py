"""How a run streams into the window: worker backpressure, throttled plot updates, the frozen heap."""
import gc
import os
import threading
import weakref

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QCoreApplication  # noqa: E402

from _gui import open_window, run, temp_settings  # noqa: E402,F401
from studio.gui.models import settle_heap  # noqa: E402
from studio.gui.throttle import Throttle  # noqa: E402
from studio.gui.worker import GeneratorWorker  # noqa: E402


# -- backpressure ------------------------------------------------------------------------------------------
def test_worker_runs_exactly_max_ahead_values_ahead_of_a_slow_handler(qtbot):
    """The handler holds each value until the job has run as far ahead as it may: the job then has exactly
    ``max_ahead`` values out (the one being yielded included) that the handler has not finished, never more."""
    handled = []
    in_flight = []  # per value: values yielded so far, this one included, that the handler has not finished
    entered = threading.Condition()

    def job():
        for i in range(40):
            with entered:
                in_flight.append(i + 1 - len(handled))
                entered.notify_all()
            yield i
        return "done"

    def handler(v):
        with entered:  # the job gets to value v + 2 unless backpressure stops it early (the timeout: a hang guard)
            assert entered.wait_for(lambda: len(in_flight) >= min(v + 3, 40), timeout=10)
        handled.append(v)

    w = GeneratorWorker(job)
    w.deliver_to(handler, max_ahead=3)
    with qtbot.waitSignal(w.done, timeout=30000) as blocker:
        w.start()
    w.wait()
    assert blocker.args == ["done"]
    assert handled == list(range(40))  # nothing dropped, in order
    assert max(in_flight) == 3


def test_worker_blocked_by_backpressure_still_aborts():
    """No event loop runs, so nothing is handled: the job is held after max_ahead values and abort ends it."""
    produced = []

    def job():
        for i in range(1000):
            produced.append(i)
            yield i

    w = GeneratorWorker(job)
    w.deliver_to(lambda v: None, max_ahead=2)
    w.start()
    assert w.held.wait(10)  # waiting for the handler (the timeout: a hang guard)
    assert len(produced) == 2  # and nothing handled can release it
    w.abort()
    assert w.wait(5000)
    assert w.outcome == "aborted" and len(produced) == 2
    QCoreApplication.processEvents()  # deliver the queued values: nothing may break after the thread ended


# -- throttle ------------------------------------------------------------------------------------------------
class _Clock:
    """A throttle's clock that moves only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_runs_the_first_request_at_once_and_the_last_of_a_burst_once(qtbot):
    calls = []
    clock = _Clock()
    th = Throttle(100, clock=clock)
    th.request("a", lambda: calls.append("a0"))
    assert calls == ["a0"]  # nothing ran recently: at once
    th.request("a", lambda: calls.append("a1"))
    th.request("b", lambda: calls.append("b1"))
    th.request("a", lambda: calls.append("a2"))  # replaces a1
    assert calls == ["a0"] and th.pending
    qtbot.waitUntil(lambda: not th.pending, timeout=2000)  # the timer ends the interval
    assert calls == ["a0", "a2", "b1"]


def test_throttle_runs_a_request_at_once_only_once_the_interval_is_over(qtbot):
    calls = []
    clock = _Clock()
    th = Throttle(250, clock=clock)
    th.request("a", lambda: calls.append(0))
    clock.now += 0.249
    th.request("a", lambda: calls.append(1))
    assert calls == [0] and th.pending  # 249 ms after the last flush: waits for the rest of the interval
    qtbot.waitUntil(lambda: not th.pending, timeout=2000)
    assert calls == [0, 1]
    clock.now += 0.25
    th.request("a", lambda: calls.append(2))
    assert calls == [0, 1, 2] and not th.pending  # a whole interval since that flush: at once


def test_throttle_cancel_and_flush(qtbot):
    calls = []
    th = Throttle(100, clock=_Clock())
    th.request("x", lambda: calls.append(1))
    th.request("x", lambda: calls.append(2))
    th.cancel("x")
    th.request("y", lambda: calls.append(3))
    th.flush()
    assert calls == [1, 3] and not th.pending


# -- the window during a fast run --------------------------------------------------------------------------
def test_plot_markers_follow_a_fast_run_through_the_throttle_and_land_on_the_last_step(qtbot):
    w = open_window(qtbot, steps=1000, batch=2)
    w.panel.labelCombo.setCurrentIndex(w.panel.labelCombo.findData(1))
    w.panel.guidanceModeCombo.setCurrentIndex(w.panel.guidanceModeCombo.findData("cfg"))  # a curve to plot
    calls = []
    orig = w._show_markers
    w._show_markers = lambda view, pos: (calls.append(pos), orig(view, pos))
    plots = w._plot_sync
    plots.clock = _Clock()  # time stands still for the plots' throttle: every request waits for its timer
    plots.flush()
    at_once = []  # per request: marker updates it ran itself

    def request(key, fn, request=plots.request):
        before = len(calls)
        request(key, fn)
        at_once.append(len(calls) - before)

    plots.request = request
    traj = run(qtbot, w, timeout=60000)
    assert len(traj) == 1000
    assert at_once and not any(at_once)  # no request moved the markers itself: only the throttle's timer did
    assert calls[-1] == 1000
    assert w.schedulePlot.current_t == pytest.approx(max(traj.meta[-1].t_next, 0.0))
    assert w.guidancePlot.line.value() == traj.meta[-1].index + 1
    steps, _ = w.guidancePlot.curve.getData()
    assert np.array_equal(steps, np.arange(1, 1001))  # the whole run is plotted at the end


def test_scrubbing_after_a_run_moves_the_markers_without_delay(qtbot):
    w = open_window(qtbot, steps=20)
    run(qtbot, w)
    for pos in (3, 4, 5):  # faster than the throttle interval: each must show at once
        w.scrubber.setValue(pos)
        assert w.guidancePlot.line.value() == w.trajectory.meta[pos - 1].index + 1


# -- the heap ----------------------------------------------------------------------------------------------
class _Cycle:
    def __init__(self):
        self.me = self


@pytest.mark.slow
def test_settle_heap_freezes_the_heap_and_later_reclaims_what_died(qtbot):
    w = open_window(qtbot, steps=4)
    assert gc.get_freeze_count() > 1000  # the model load froze the start-up heap
    c = _Cycle()
    ref = weakref.ref(c)
    settle_heap()  # c is live: frozen
    del c
    gc.collect()
    assert ref() is not None  # frozen objects are not collected…
    settle_heap()
    assert ref() is None  # …until the next settle (a model load) unfreezes and collects
    w.close()


@pytest.mark.slow  # a 300-step run watched by the garbage collector
def test_no_full_collection_walks_the_start_up_heap_during_a_run(qtbot):
    """After the model load, a run's garbage collections see only what was made since."""
    w = open_window(qtbot, steps=300)
    sizes = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            sizes.append(len(gc.get_objects(generation=2)))

    gc.callbacks.append(watch)
    try:
        run(qtbot, w, timeout=60000)
        gc.collect()
    finally:
        gc.callbacks.remove(watch)
    assert sizes  # the explicit collect at least
    assert max(sizes) < gc.get_freeze_count() / 4, (sizes, gc.get_freeze_count())
