"""How a run streams into the window: worker backpressure, throttled plot updates, the frozen heap."""
import gc
import os
import time
import weakref

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QCoreApplication  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401
from studio.gui import main_window  # noqa: E402
from studio.gui.models import settle_heap  # noqa: E402
from studio.gui.throttle import Throttle  # noqa: E402
from studio.gui.worker import GeneratorWorker  # noqa: E402


# -- backpressure ------------------------------------------------------------------------------------------
def test_worker_never_runs_more_than_max_ahead_values_ahead_of_its_handler(qtbot):
    handled = []
    ahead_seen = []

    def job():
        for i in range(40):
            ahead_seen.append(i - len(handled))  # values yielded so far that the handler has not finished
            yield i
        return "done"

    w = GeneratorWorker(job)
    w.deliver_to(lambda v: (handled.append(v), time.sleep(0.002)), max_ahead=3)
    with qtbot.waitSignal(w.done, timeout=10000) as blocker:
        w.start()
    w.wait()
    assert blocker.args == ["done"]
    assert handled == list(range(40))  # nothing dropped, in order
    assert max(ahead_seen) <= 3
    assert max(ahead_seen) >= 1  # the job did run ahead (it is not serialised with the handler)


def test_worker_blocked_by_backpressure_still_aborts():
    """No event loop runs, so nothing is handled: the job stops after max_ahead values and abort ends it."""
    produced = []

    def job():
        for i in range(1000):
            produced.append(i)
            yield i

    w = GeneratorWorker(job)
    w.deliver_to(lambda v: None, max_ahead=2)
    w.start()
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) == 2  # waiting for the handler, not running on
    w.abort()
    assert w.wait(5000)
    assert w.outcome == "aborted"
    QCoreApplication.processEvents()  # deliver the queued values: nothing may break after the thread ended


# -- throttle ------------------------------------------------------------------------------------------------
def test_throttle_runs_the_first_request_at_once_and_the_last_of_a_burst_once(qtbot):
    calls = []
    th = Throttle(100)
    th.request("a", lambda: calls.append("a0"))
    assert calls == ["a0"]  # nothing ran recently: at once
    th.request("a", lambda: calls.append("a1"))
    th.request("b", lambda: calls.append("b1"))
    th.request("a", lambda: calls.append("a2"))  # replaces a1
    assert calls == ["a0"] and th.pending
    qtbot.waitUntil(lambda: not th.pending, timeout=2000)
    assert calls == ["a0", "a2", "b1"]


def test_throttle_cancel_and_flush(qtbot):
    calls = []
    th = Throttle(10_000)
    th.request("x", lambda: calls.append(1))
    th.request("x", lambda: calls.append(2))
    th.cancel("x")
    th.request("y", lambda: calls.append(3))
    th.flush()
    assert calls == [1, 3] and not th.pending


# -- the window during a fast run --------------------------------------------------------------------------
def test_plot_markers_follow_a_fast_run_at_the_throttled_rate_and_land_on_the_last_step(qtbot):
    w = open_window(qtbot, steps=1000, batch=2)
    w.panel.labelCombo.setCurrentIndex(w.panel.labelCombo.findData(1))
    w.panel.guidanceModeCombo.setCurrentIndex(w.panel.guidanceModeCombo.findData("cfg"))  # a curve to plot
    calls = []
    orig = w._show_markers
    w._show_markers = lambda view, pos: (calls.append(pos), orig(view, pos))
    t0 = time.monotonic()
    with qtbot.waitSignal(w.runFinished, timeout=60000) as blocker:
        w.runButton.click()
    elapsed = time.monotonic() - t0
    qtbot.waitUntil(lambda: not w.busy)
    traj = blocker.args[0]
    assert len(traj) == 1000
    # the view follows the run ~30 times a second; the markers at most once per interval (+ first, last)
    assert len(calls) <= elapsed / (main_window.PLOT_INTERVAL_MS / 1000) + 3, (calls, elapsed)
    assert calls[-1] == 1000
    assert w.schedulePlot.current_t == pytest.approx(max(traj.meta[-1].t_next, 0.0))
    assert w.guidancePlot.line.value() == traj.meta[-1].index + 1
    steps, _ = w.guidancePlot.curve.getData()
    assert np.array_equal(steps, np.arange(1, 1001))  # the whole run is plotted at the end


def test_scrubbing_after_a_run_moves_the_markers_without_delay(qtbot):
    w = open_window(qtbot, steps=20)
    with qtbot.waitSignal(w.runFinished, timeout=15000):
        w.runButton.click()
    qtbot.waitUntil(lambda: not w.busy)
    for pos in (3, 4, 5):  # faster than the throttle interval: each must show at once
        w.scrubber.setValue(pos)
        assert w.guidancePlot.line.value() == w.trajectory.meta[pos - 1].index + 1


# -- the heap ----------------------------------------------------------------------------------------------
class _Cycle:
    def __init__(self):
        self.me = self


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


def test_no_full_collection_walks_the_start_up_heap_during_a_run(qtbot):
    """After the model load, a run's garbage collections see only what was made since."""
    w = open_window(qtbot, steps=300)
    sizes = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            sizes.append(len(gc.get_objects(generation=2)))

    gc.callbacks.append(watch)
    try:
        with qtbot.waitSignal(w.runFinished, timeout=60000):
            w.runButton.click()
        qtbot.waitUntil(lambda: not w.busy)
        gc.collect()
    finally:
        gc.callbacks.remove(watch)
    assert sizes  # the explicit collect at least
    assert max(sizes) < gc.get_freeze_count() / 4, (sizes, gc.get_freeze_count())
