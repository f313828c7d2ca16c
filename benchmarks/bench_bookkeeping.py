"""Per-step bookkeeping of the sampling loop: the finiteness check and the uint8 frame conversion,
each against the implementation it replaced (2026-11-23), timed in the same run, interleaved.

    python -m benchmarks.bench_bookkeeping      # prints JSON; 1 thread, batch 8, 3×32×32

Two checks and two frames happen per step, so ``saved_ms_per_step`` = 2 × (old − new) summed over both.
"""
from __future__ import annotations

import json
import statistics
import timeit

import numpy as np
import torch

from studio.core.records import check_finite
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


def run(batch: int = 8, size: int = 32) -> dict:
    torch.set_num_threads(1)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(old_to_uint8(x), to_uint8(x))
    out = {"finite": pair(lambda: old_check_finite(x), lambda: check_finite(x, 0)),
           "frames": pair(lambda: old_to_uint8(x), lambda: to_uint8(x)), "batch": batch, "size": size}
    out["saved_ms_per_step"] = 2 * sum(out[k]["old_us"] - out[k]["new_us"] for k in ("finite", "frames")) / 1000
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
