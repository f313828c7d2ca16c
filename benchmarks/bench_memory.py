"""Figure 6: resident memory of a long run that keeps every step, and across many consecutive runs.

RSS is read from ``/proc/self/status`` (VmRSS). The model is the exact Gaussian mixture with 64×64×3
means (cheap per step, so a 1000-step run finishes in seconds) driven through ``Run`` — the same path
the GUI and CLI take; every x_t and x̂₀ is kept by the Trajectory (uint8 RGB previews in memory, the
float32 full state in memory up to ``memory_limit_bytes`` and spilled to disk beyond it).

* ``long_run``: RSS growth over one 1000-step run at 64×64, batch 4 (target ≤ 200 MB). The expected
  bound is reported beside it: previews 2 frames × 1 byte × steps × B·H·W·3, plus the float32 full state
  (x, x̂₀, sampler carry) capped at the Trajectory's memory limit.
* ``repeated_runs``: RSS after each of 50 consecutive runs (100 steps each, trajectories dropped,
  ``gc.collect()`` between); slope (least squares, MB/run) over the last 40 runs and total change.
  Target: no growth (slope ≈ 0).
* ``gui``: the long run again through the window (offscreen), whose view also caches uint8 frames of
  every step, then repeated runs in the same window (``--no-gui`` skips it).
"""
from __future__ import annotations

import gc
import time

import numpy as np
import torch

TARGET_GROWTH_MB = 200.0
MB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def trim() -> None:
    """Give freed heap back to the OS where glibc allows (RSS then reflects live data, not fragmentation).
    The app never does this, so the headline figures are taken before it (after ``gc.collect()`` only)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def gmm64(size: int = 64):
    from studio.core.gmm import GaussianMixtureModel, template_images

    return GaussianMixtureModel(means=template_images(size))


def one_run(model, steps: int, batch: int, sampler: str = "ddim", seed: int = 0):
    from studio.session.recipe import Recipe
    from studio.session.runner import Run

    r = Run(Recipe(model="gmm", sampler=sampler, steps=steps, batch=batch, seed=seed), model=model)
    r.run_to_end()
    return r.trajectory


def expected_bytes(traj) -> dict:
    """What the trajectory should hold: uint8 previews + the float32 full state (bounded by the limit)."""
    per = traj.full_state(-1)["x"].numel()  # elements of one x_t (batch × C × H × W)
    steps = len(traj)
    previews = sum(a.nbytes for a in traj.xt) + sum(a.nbytes for a in traj.x0)
    in_mem_full = traj._bytes + per * 4  # + the initial state (not counted against the limit)
    spilled = sum(1 for e in traj._full if not isinstance(e, dict))
    return {"previews_mb": previews / MB, "full_state_in_memory_mb": in_mem_full / MB, "limit_mb": traj._limit / MB,
            "steps_spilled_to_disk": spilled, "steps": steps, "bound_mb": (previews + in_mem_full) / MB}


def long_run(steps: int = 1000, batch: int = 4, size: int = 64) -> dict:
    model = gmm64(size)
    one_run(model, 3, batch)  # warm-up: allocator pools, lazy imports
    gc.collect()
    before = rss_bytes()
    peak = before
    from studio.session.recipe import Recipe
    from studio.session.runner import Run

    t0 = time.perf_counter()
    r = Run(Recipe(model="gmm", sampler="ddim", steps=steps, batch=batch, seed=0), model=model)
    for i, _ in enumerate(r):
        if i % 50 == 0:
            peak = max(peak, rss_bytes())
    dt = time.perf_counter() - t0
    traj = r.trajectory
    gc.collect()
    after = rss_bytes()
    peak = max(peak, after)
    exp = expected_bytes(traj)
    traj.close()
    del r, traj
    gc.collect()
    released = rss_bytes()
    trim()
    released_trimmed = rss_bytes()
    return {"steps": steps, "batch": batch, "size": size, "run_s": dt,
            "rss_before_mb": before / MB, "rss_after_mb": after / MB, "rss_peak_mb": peak / MB,
            "growth_mb": (after - before) / MB, "peak_growth_mb": (peak - before) / MB,
            "after_release_mb": released / MB, "retained_after_release_mb": (released - before) / MB,
            "retained_after_malloc_trim_mb": (released_trimmed - before) / MB,
            "expected": exp, "growth_over_bound": (after - before) / MB / max(exp["bound_mb"], 1e-9),
            "meets_target": (after - before) / MB <= TARGET_GROWTH_MB}


def repeated_runs(runs: int = 50, steps: int = 100, batch: int = 4, size: int = 64, tail: int = 40,
                  trim_too: bool = True) -> dict:
    model = gmm64(size)
    one_run(model, 3, batch)
    gc.collect()
    start = rss_bytes()
    rss = []
    for i in range(runs):
        traj = one_run(model, steps, batch, seed=i)
        traj.close()
        del traj
        gc.collect()
        rss.append(rss_bytes())

    def slope(v):
        y = np.asarray(v[-tail:], dtype=np.float64) / MB
        return float(np.polyfit(np.arange(len(y), dtype=np.float64), y, 1)[0]) if len(y) >= 2 else 0.0

    out = {"runs": runs, "steps": steps, "batch": batch, "size": size,
           "rss_start_mb": start / MB, "rss_end_mb": rss[-1] / MB, "total_change_mb": (rss[-1] - start) / MB,
           "first_run_change_mb": (rss[0] - start) / MB,
           "slope_mb_per_run_last": slope(rss), "slope_window": min(tail, runs),
           "tail_change_mb": (rss[-1] - rss[-min(tail, runs)]) / MB, "rss_mb": [round(v / MB, 2) for v in rss]}
    if trim_too:  # after the last run: how much of the change is freed-but-unreturned heap
        trim()
        out["total_change_after_malloc_trim_mb"] = (rss_bytes() - start) / MB
    return out


def gui_runs(steps: int, batch: int = 4, size: int = 64, repeats: int = 10, repeat_steps: int = 50) -> dict:
    """The same through the window (offscreen): Run pressed, frames streamed to the view, which also keeps
    every step's uint8 x_t / x̂₀ frames — references to the trajectory's arrays, not copies, so the growth
    should match the trajectory's own bound (``view_frame_cache_mb`` counts those shared arrays). Then ``repeats`` more
    runs in the same window (each replaces the previous trajectory): RSS after each."""
    from . import bench_gui as bg

    app = bg.make_app()
    w = bg.open_window("gmm")
    try:
        model = gmm64(size)
        bg.configure(w, 3, batch)
        w.cache.put(w.current_recipe(), model)  # the window's model cache now holds the 64×64 mixture
        bg.run_once(w)  # warm-up (first-run imports, plots)
        bg.configure(w, steps, batch)
        gc.collect()
        before = rss_bytes()
        traj, dt = bg.run_once(w, timeout=3600)
        assert traj.xt[0].shape[2] == size and len(traj) == steps
        gc.collect()
        after = rss_bytes()
        exp = expected_bytes(traj)
        view_mb = sum(a.nbytes for d in (w.mainView.xt, w.mainView.x0) for a in d.values()) / MB
        del traj
        bg.configure(w, repeat_steps, batch)
        rss = []
        for i in range(repeats):
            bg.run_once(w)
            gc.collect()
            rss.append(rss_bytes())
        y = np.asarray(rss, dtype=np.float64) / MB
        slope = float(np.polyfit(np.arange(len(y), dtype=np.float64), y, 1)[0]) if len(y) >= 2 else 0.0
        trim()  # freed-but-unreturned heap vs memory still referenced by the window
        trimmed = rss_bytes()
        return {"steps": steps, "batch": batch, "size": size, "run_s": dt, "growth_mb": (after - before) / MB,
                "expected_trajectory": exp, "view_frame_cache_mb": view_mb,
                "meets_target": (after - before) / MB <= TARGET_GROWTH_MB,
                "repeats": repeats, "repeat_steps": repeat_steps,
                "rss_after_long_run_mb": after / MB, "repeat_rss_mb": [round(v, 2) for v in y.tolist()],
                "repeat_slope_mb_per_run": slope, "rss_before_long_run_mb": before / MB,
                "after_repeats_malloc_trim_mb": trimmed / MB,
                "retained_after_repeats_malloc_trim_mb": (trimmed - before) / MB}
    finally:
        w.close()
        w.deleteLater()
        app.processEvents()


def run(quick: bool = False, gui: bool = True) -> dict:
    from .common import machine

    # not a timing figure: one intra-op thread, since two thrash on a busy 2-core machine (≈3× slower)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {"machine": machine(), "target_growth_mb": TARGET_GROWTH_MB}
    out["long_run"] = long_run(steps=300 if quick else 1000)
    out["repeated_runs"] = repeated_runs(runs=15 if quick else 50, steps=50 if quick else 100,
                                         tail=10 if quick else 40)
    if gui:
        out["gui"] = gui_runs(steps=100 if quick else 1000, repeats=4 if quick else 10,
                              repeat_steps=20 if quick else 50)
    return out


if __name__ == "__main__":
    import json
    import sys

    from studio.runtime import own_process

    own_process()  # as the studio's entry points do (tuned allocator, periodic release in long runs)
    print(json.dumps(run(quick="--quick" in sys.argv, gui="--no-gui" not in sys.argv), indent=2))
