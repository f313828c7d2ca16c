"""Where a step's time goes: the diagnoses behind figures 1–2 and 4 (not figures themselves).

    python -m benchmarks.profile_step_costs               # engine parts (digits, batch 8)
    QT_QPA_PLATFORM=offscreen python -m benchmarks.profile_step_costs --gil   # + plot update vs the GIL

- ``dtype_lookup_us``: one read of diffusers' ``ModelMixin.dtype`` on an unwrapped digits UNet (it
  walks every submodule) and on the studio's (``fix_dtype``: a stored value).
- ``loops``: the bare forward loop, diffusers' DDIM loop and the studio's ``ddim`` loop on the same
  channels-last network, interleaved; per step the time inside the network's forward and outside it.
- ``end_of_run_trim``: a studio run on a warm heap against one right after ``malloc_trim`` (every
  run ended with one until 2026-12-02): the trim's cost per run, per-pair median.
- ``--gil``: one guidance-plot update + schedule-marker move + repaint in the window, idle and with
  a pure-Python thread and a torch thread running beside it (the GIL handover cost a fast worker
  imposes on the GUI thread).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import timeit

import torch

from . import bench_engine as be

BATCH, STEPS = 8, 20


def dtype_lookup_us(unet, model) -> dict:
    import copy

    plain = copy.deepcopy(be.digits_like_unet())
    n = 500
    return {"diffusers_us": timeit.timeit(lambda: plain.dtype, number=n) / n * 1e6,
            "studio_us": timeit.timeit(lambda: model.unet.dtype, number=n) / n * 1e6}


def loops(unet, model, repeats: int) -> dict:
    fwd: list[float] = []
    cls = type(unet)
    orig = cls.forward

    def timed_forward(self, *a, **k):
        t0 = time.perf_counter()
        out = orig(self, *a, **k)
        fwd.append(time.perf_counter() - t0)
        return out

    runs = {"bare": be.bare_loop(unet, BATCH, STEPS, "cpu", label=model.info.null_label),
            "diffusers_ddim": be.diffusers_ddim(unet, BATCH, STEPS, "cpu"),
            "studio_ddim": be.studio_loop(model, BATCH, STEPS)}
    cls.forward = timed_forward
    try:
        for f in runs.values():
            f()
        got = {k: [] for k in runs}
        for _ in range(repeats):
            for k, f in runs.items():
                fwd.clear()
                t0 = time.perf_counter()
                f()
                total = time.perf_counter() - t0
                got[k].append((total, sum(fwd)))
    finally:
        cls.forward = orig
    med = statistics.median
    return {k: {"ms_per_step": med(t for t, _ in v) / STEPS * 1e3,
                "forward_ms_per_step": med(f for _, f in v) / STEPS * 1e3,
                "outside_ms_per_step": med(t - f for t, f in v) / STEPS * 1e3} for k, v in got.items()}


def end_of_run_trim(model, repeats: int) -> dict:
    """A run started on a warm heap (A) against one started right after a ``malloc_trim`` (B: the
    trim and the activations faulted back in, which is what the previous run's trim cost)."""
    from studio.runtime import release_free_memory

    run = be.studio_loop(model, BATCH, STEPS)

    trims = []

    def after_trim():
        t0 = time.perf_counter()
        release_free_memory()
        trims.append(time.perf_counter() - t0)
        run()

    run()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        after_trim()
        tb.append(time.perf_counter() - t0)
    return {"trim_call_ms": statistics.median(trims) * 1e3,
            "ms_per_run": statistics.median(b - a for a, b in zip(ta, tb)) * 1e3,
            "ratio": statistics.median(b / a for a, b in zip(ta, tb))}


def plot_update_vs_gil(samples: int = 30) -> dict:
    from . import bench_gui as bg

    app = bg.make_app()
    w = bg.open_window("gmm")
    w.resize(1280, 800)
    bg.configure(w, 1000, 4)
    traj, _ = bg.run_once(w)

    def update_ms() -> float:
        ts = []
        for i in range(samples):
            t0 = time.perf_counter()
            w.guidancePlot.set_meta(traj.meta[: 100 + i * 20], 1000)
            m = traj.meta[(i * 37) % len(traj.meta)]
            w.schedulePlot.set_current(m.t)
            w.guidancePlot.set_current(m.index + 1)
            app.processEvents()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    out = {"idle_ms": update_ms()}
    stop = threading.Event()

    def python_loop():
        x = 0
        while not stop.is_set():
            x += 1

    def torch_loop():
        a = torch.randn(4, 2)
        while not stop.is_set():
            a = a * 1.0001

    for name, target in (("beside_python_thread_ms", python_loop), ("beside_torch_thread_ms", torch_loop)):
        stop.clear()
        t = threading.Thread(target=target)
        t.start()
        out[name] = update_ms()
        stop.set()
        t.join()
    w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--gil", action="store_true", help="also time a plot update against a busy GIL (opens the window)")
    args = ap.parse_args()
    from studio.runtime import own_process

    own_process()  # as the studio's entry points do
    unet = be.digits_like_unet().eval()
    model = be.wrap(unet, "cpu")
    res = {"dtype_lookup_us": dtype_lookup_us(unet, model), "loops": loops(unet, model, args.repeats),
           "end_of_run_trim": end_of_run_trim(model, args.repeats)}
    if args.gil:
        res["plot_update"] = plot_update_vs_gil()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
