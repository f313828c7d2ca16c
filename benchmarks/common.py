"""Timing helpers for the benchmarks: interleaved A/B repeats, medians, machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = "cpu"
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": dev, "python": platform.python_version()}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device="cpu") -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int, device="cpu", warmup: int = 1) -> dict:
    """Run A B A B …; report medians and the median of per-pair ratios B/A."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    ratios = [y / x for x, y in zip(ta, tb)]
    return {"baseline_s": statistics.median(ta), "studio_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "repeats": repeats}
