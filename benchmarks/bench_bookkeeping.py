"""Per-step bookkeeping of the sampling loop: the finiteness check and the uint8 frame conversion,
each against the implementation it replaced (2026-11-23), timed in the same run, interleaved.

    python -m benchmarks.bench_bookkeeping      # prints JSON; 1 thread, batch 8, 3×32×32

Two checks and two frames happen per step, so ``saved_ms_per_step`` = 2 × (old − new) summed over both.

``slab_maps``: what a step keeps (x_t and x̂₀ as float32, both as uint8 frames) written into fresh
slabs, with the slabs mapped as before 2026-12-02 (shared anonymous, 4 KiB pages) and as now
(private, transparent huge pages): time and page faults per step.
"""
from __future__ import annotations

import json
import mmap
import resource
import statistics
import time
import timeit

import numpy as np
import torch

from studio.core.records import check_finite
from studio.session import slabs as slabs_mod
from studio.session.frames import to_uint8


def old_check_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def old_to_uint8(x: torch.Tensor) -> np.ndarray:
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(img.permute(0, 2, 3, 1).cpu().numpy())


def per_call_us(fn, number: int = 1000) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def pair(old, new, repeats: int = 9) -> dict:
    olds, news = [], []
    for _ in range(repeats):
        olds.append(per_call_us(old))
        news.append(per_call_us(new))
    return {"old_us": statistics.median(olds), "new_us": statistics.median(news),
            "ratio": statistics.median(n / o for o, n in zip(olds, news))}


def keep_steps(x: torch.Tensor, steps: int, map_fn) -> tuple[float, float]:
    """(µs, page faults) per step of keeping x_t, x̂₀ and their frames in fresh slabs mapped by ``map_fn``."""
    store = slabs_mod.Slabs()
    store._map = map_fn
    b, _, h, w = x.shape
    kept = []
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        for src in (x, x):  # x_t and x̂₀
            kept.append(torch.from_numpy(store.array(tuple(src.shape), np.float32)).copy_(src))
            kept.append(to_uint8(src, out=store.array((b, h, w, 3), np.uint8)))
    dt = time.perf_counter() - t0
    return dt / steps * 1e6, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps


def slab_maps(x: torch.Tensor, steps: int = 200, repeats: int = 7) -> dict:
    old = lambda n: mmap.mmap(-1, n)  # noqa: E731 - the map the slabs used before
    new = slabs_mod.anonymous_map
    res = {"old": [], "new": []}
    for _ in range(repeats):
        res["old"].append(keep_steps(x, steps, old))
        res["new"].append(keep_steps(x, steps, new))
    out = {f"{k}_{name}": statistics.median(r[i] for r in v) for k, v in res.items()
           for i, name in enumerate(("us_per_step", "faults_per_step"))}
    out["ratio"] = statistics.median(n[0] / o[0] for o, n in zip(res["old"], res["new"]))
    return out


def run(batch: int = 8, size: int = 32) -> dict:
    torch.set_num_threads(1)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(old_to_uint8(x), to_uint8(x))
    out = {"finite": pair(lambda: old_check_finite(x), lambda: check_finite(x, 0)),
           "frames": pair(lambda: old_to_uint8(x), lambda: to_uint8(x)), "batch": batch, "size": size}
    out["saved_ms_per_step"] = 2 * sum(out[k]["old_us"] - out[k]["new_us"] for k in ("finite", "frames")) / 1000
    out["slab_maps"] = slab_maps(x)
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
