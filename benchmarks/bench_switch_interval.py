"""Does the GUI thread stall waiting for the GIL behind the sampling worker? Streams 1000-step ``gmm``
runs to the offscreen window with CPython's switch interval alternating between values (default: 5 ms,
Python's default, and 1 ms), interleaved, and reports the heartbeat stalls of ``bench_gui`` per value.

    QT_QPA_PLATFORM=offscreen python -m benchmarks.bench_switch_interval [--repeats 6] [0.005 0.001]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv=None) -> int:
    from benchmarks import bench_gui as B

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_switch_interval")
    p.add_argument("intervals", nargs="*", type=float, default=[0.005, 0.001], help="seconds")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--steps", type=int, default=1000)
    a = p.parse_args(argv)
    B.make_app()
    w = B.open_window("gmm")
    w.resize(1280, 800)
    B.configure(w, a.steps, 4)
    B.run_once(w)  # warm-up
    old = sys.getswitchinterval()
    runs = {si: [] for si in a.intervals}
    try:
        for _ in range(a.repeats):
            for si in a.intervals:
                sys.setswitchinterval(si)
                hb = B.Heartbeat()
                hb.start()
                _, dt = B.run_once(w)
                r = hb.stop()
                runs[si].append({"longest_ms": r["longest_ms"], "p99_ms": r["p99_ms"], "steps_per_s": a.steps / dt})
    finally:
        sys.setswitchinterval(old)
        w.close()
    out = {f"{si * 1000:g} ms": {k: round(statistics.median(r[k] for r in rs), 1)
                                 for k in ("longest_ms", "p99_ms", "steps_per_s")}
           for si, rs in runs.items()}
    print(json.dumps({"repeats": a.repeats, "steps": a.steps, "median": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
