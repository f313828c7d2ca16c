"""Which GUI-thread work makes the event-loop stalls of figure 4 (a diagnosis, not a figure).

Wraps the window's handlers and the paint events of its canvases and plots so each call records a
(start, end) span, runs gmm 1000-step runs under the same 5 ms heartbeat as ``bench_gui``, and for
every heartbeat gap over ``--over`` ms prints the spans that overlapped it, plus a per-handler
summary. A full garbage collection (which holds the GIL in whichever thread triggered it) is
recorded as a span too. This is how the stalls were traced to pyqtgraph repaints at 30 Hz, their
GIL waits behind the worker, and a 117 ms collection in the worker (see the README).

    QT_QPA_PLATFORM=offscreen python -m benchmarks.profile_gui_stalls [--runs 3] [--over 12] [--unfrozen]

``--unfrozen`` skips the heap freeze after the model load (``gui.models.settle_heap``), to see the
full collections it prevents. ``--forward-scrub MODEL`` (``default`` or ``digits-text``) profiles, instead of
runs, sweeps of the forward view's scrubber as ``bench_gui.forward_scrub_stalls`` drives them (an image open, a
new t every 30 ms), with the forward view's handlers and its worker's evaluations recorded too.
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402

from . import bench_gui as bg  # noqa: E402

SPANS: list[tuple[str, float, float]] = []


def record(owner, attr: str, name: str) -> None:
    orig = getattr(owner, attr)

    def wrapped(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            SPANS.append((name, t0, time.perf_counter()))

    setattr(owner, attr, wrapped)


def instrument() -> None:
    import pyqtgraph as pg

    from studio.gui import canvas, main_window, plots, view

    record(main_window.MainWindow, "_on_step", "window._on_step")
    record(plots.GuidancePlot, "set_meta", "guidance.set_meta")
    record(plots.SchedulePlot, "set_current", "schedule.set_current")
    record(plots.GuidancePlot, "set_current", "guidance.set_current")
    record(view.TrajectoryView, "refresh", "view.refresh")
    record(canvas.ImageCanvas, "paintEvent", "canvas.paint")
    record(pg.PlotWidget, "paintEvent", "plot.paint")
    from studio.gui import forward_view
    from studio.session import forward_view as forward_session

    record(forward_view.ForwardPanel, "show_t", "forward.show_t")
    record(forward_view.ForwardPanel, "_point_ready", "forward._point_ready")
    record(forward_view.ErrorPlot, "set_current", "forward.error_plot.set_current")
    record(forward_view.ErrorPlot, "update_points", "forward.error_plot.update_points")
    record(forward_session.ForwardView, "point", "worker thread: forward view.point")

    started = [0.0]

    def collected(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            SPANS.append(("gc full collection", started[0], time.perf_counter()))

    gc.callbacks.append(collected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--over", type=float, default=12.0, help="report heartbeat stalls longer than this (ms)")
    ap.add_argument("--unfrozen", action="store_true", help="do not freeze the heap after the model load")
    ap.add_argument("--forward-scrub", metavar="MODEL", choices=tuple(bg.FORWARD_RECIPES),
                    help="profile sweeps of the forward view's scrubber on MODEL instead of runs")
    args = ap.parse_args()
    if args.unfrozen:
        from studio.gui import models

        models.settle_heap = lambda: None
    instrument()
    bg.make_app()
    w = bg.open_window(args.forward_scrub or "gmm")
    w.resize(1280, 800)
    if args.forward_scrub:
        scenario = forward_scrub(w, args.forward_scrub, sweeps=args.runs + 1)
    else:
        bg.configure(w, args.steps, 4)
        scenario = lambda rep: bg.run_once(w)[1]  # noqa: E731
    scenario(-1)  # warm-up
    for rep in range(args.runs):
        SPANS.clear()
        ticks: list[float] = []
        hb = bg.Heartbeat()
        hb.timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        hb.start()
        t_start = hb._t0
        dt = scenario(rep)
        s = hb.stop()
        print(f"run {rep}: {dt:.2f} s, stall longest {s['longest_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
              f"ticks {s['ticks']}/{s['expected_ticks']}")
        edges = [t_start] + ticks
        for a, b in zip(edges, edges[1:]):
            if (b - a) * 1000 - bg.HEARTBEAT_MS <= args.over:
                continue
            overlap = collections.defaultdict(float)
            for name, s0, s1 in SPANS:
                if min(b, s1) > max(a, s0):
                    overlap[name] += min(b, s1) - max(a, s0)
            top = sorted(overlap.items(), key=lambda kv: -kv[1])[:4]
            print(f"  stall {(b - a) * 1000 - bg.HEARTBEAT_MS:6.1f} ms at +{(a - t_start) * 1000:5.0f} ms: "
                  + (", ".join(f"{n} {v * 1000:.1f}" for n, v in top) or "nothing recorded (worker holds the GIL?)"))
        per = collections.defaultdict(list)
        for name, s0, s1 in SPANS:
            per[name].append((s1 - s0) * 1000)
        for name, v in sorted(per.items()):
            v = np.asarray(v)
            print(f"  {name:22s} calls {len(v):5d}  mean {v.mean():6.2f}  p99 {np.percentile(v, 99):6.2f}  "
                  f"max {v.max():6.2f} ms")
    w.close()


def forward_scrub(w, spec: str, sweeps: int):
    """An image opened in ``w``'s forward view; returns ``sweep(rep)``, one drag across t (seconds)."""
    import tempfile
    from pathlib import Path

    from studio.session.recipe import Recipe

    from .bench_forward_view import write_image

    w.panel.set_recipe(Recipe(model=w.model_spec, steps=20, seed=0, **bg.FORWARD_RECIPES[spec]))
    folder = tempfile.TemporaryDirectory(prefix="studio-profile-forward-")
    fp = w.forwardPanel
    fp.open_image(write_image(Path(folder.name) / "picture.png"))
    if not bg.wait(lambda: fp.view is not None and fp.worker.pending == 0, timeout=300):
        raise RuntimeError(f"the image did not open in the forward view ({w.errorLabel.text()})")

    def sweep(rep: int, folder=folder) -> float:
        return bg.drag(fp, bg.sweep_positions(fp.view.steps, 67, rep + 1, sweeps), 30)["seconds"]

    return sweep


if __name__ == "__main__":
    main()
