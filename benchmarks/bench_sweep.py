"""Sweep throughput: cells per minute on 1 and 2 local workers and on Ray with 2 workers, and what
limits it.

Two kinds of cell:
- *digits cells*: the shipped digits model, DDIM 10 steps, CFG, batch 4, with the evaluator's
  metrics — a cell of real work (about half a second on one core);
- *small cells*: the exact ``gmm``, one step, batch 1, time and NFE only — next to no work, so
  their rate is the executor's and the driver's own per-cell cost.

Each configuration runs the same spec into a fresh folder; configurations are interleaved
(1 local, 2 local, Ray 2, then again) and ratios are taken to the 1-worker run of the same round,
median over rounds. "Steady" rates count the cells written after the first one over the time
between the first and the last write (the workers' start-up and model load excluded); "wall" is
the whole ``run_sweep``. Ray's per-cell overhead is the difference of the steady sweep time per
cell (60 000 / cells per minute, ms) between Ray and the local pool, both with 2 workers. The driver's own ceiling is measured by
writing small cells' folders in a loop (the atomic write each result costs the driver).

    python -m benchmarks.bench_sweep [--rounds 2] [--json out.json] [--figure benchmarks/sweep_scaling.png]

Ray is started in this process (``address="local"``, the machine's cores, no dashboard).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from studio.sweep.driver import run_sweep
from studio.sweep.spec import parse_spec

from .common import machine

DIGITS = """\
model = "default"
metrics = ["seconds_per_image", "nfe", "accuracy", "diversity", "class_fractions"]
[fixed]
sampler = "ddim"
steps = 10
batch = 4
guidance = "cfg"
scale = 3.0
[axes]
label = {start = 0, count = 10}
seeds = {start = 0, count = %d}
"""

SMALL = """\
model = "gmm"
metrics = ["seconds_per_image", "nfe"]
[fixed]
sampler = "ddim"
steps = 1
batch = 1
[axes]
seeds = {start = 0, count = %d}
"""


def steady_rate(stats) -> float:
    t = stats.written_at
    return 60.0 * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else float("nan")


def one_run(spec, workdir: Path, workers: int, ray: bool, cpus_per_worker: float = 1.0) -> dict:
    out = workdir / f"run-{time.perf_counter_ns()}"
    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        stats = run_sweep(spec, out, workers=workers, ray="auto" if ray else None, stream=quiet, report=False,
                          cpus_per_worker=cpus_per_worker)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    assert stats.computed == len(spec.cells) and not stats.errors
    return {"steady_cells_per_min": steady_rate(stats), "wall_cells_per_min": 60.0 * len(spec.cells) / wall,
            "wall_s": wall}


def driver_write_ms(workdir: Path, n: int = 200) -> float:
    """Milliseconds the driver spends writing one small cell (atomic folder write of its four files)."""
    from studio.sweep.cells import write_cell

    out = workdir / "writes"
    payload = {"key": "", "values": {"seed": 0}, "status": "ok", "metrics": {"nfe": 1}}
    png, npz = b"\x89PNG" + b"\0" * 600, b"\0" * 400
    t0 = time.perf_counter()
    for i in range(n):
        write_cell(out, f"{i:016x}", payload, "{}", png, npz)
    ms = (time.perf_counter() - t0) / n * 1000
    shutil.rmtree(out, ignore_errors=True)
    return ms


def _matmuls(seconds: float = 3.0) -> float:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    return n / (time.perf_counter() - t0)


def cpu_capacity() -> float:
    """Throughput of two single-threaded processes over one (a 256² matmul loop): the parallel
    capacity the machine gives this benchmark right now (2.0 on two free cores)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as p:
        one = p.apply(_matmuls)
    with ctx.Pool(2) as p:
        two = sum(p.map(_matmuls, [3.0, 3.0]))
    return two / one


CONFIGS = (("1 local worker", 1, False), ("2 local workers", 2, False), ("Ray, 2 workers", 2, True))


def measure(spec, workdir: Path, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGS}
    for _ in range(rounds):
        for name, workers, ray in CONFIGS:
            runs[name].append(one_run(spec, workdir, workers, ray))
    out = {}
    base = runs[CONFIGS[0][0]]
    for name, _, _ in CONFIGS:
        rs = runs[name]
        out[name] = {
            "steady_cells_per_min": statistics.median(r["steady_cells_per_min"] for r in rs),
            "wall_cells_per_min": statistics.median(r["wall_cells_per_min"] for r in rs),
            "steady_ratio": statistics.median(r["steady_cells_per_min"] / b["steady_cells_per_min"]
                                              for r, b in zip(rs, base)),
            "wall_ratio": statistics.median(r["wall_cells_per_min"] / b["wall_cells_per_min"] for r, b in zip(rs, base)),
            "runs": rs,
        }
    return out


def scaling(workdir: Path, spec, workers=(1, 2, 4)) -> dict:
    """Small-cell steady rate against the number of workers (local pool, and Ray with 2/N CPUs each)."""
    res = {"local": {}, "ray": {}}
    for n in workers:
        res["local"][n] = one_run(spec, workdir, n, False)["steady_cells_per_min"]
        res["ray"][n] = one_run(spec, workdir, n, True, cpus_per_worker=min(1.0, (os.cpu_count() or 2) / n))[
            "steady_cells_per_min"]
    return res


def figure(path: Path, scale: dict, ceiling: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.add_subplot()
    for name, pts in scale.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=f"{name} pool" if name == "local" else "Ray actors")
    ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1, label="driver's write ceiling")
    ax.set_xlabel("workers")
    ax.set_ylabel("small cells per minute (steady)")
    ax.set_title(f"Sweep scaling, small gmm cells ({os.cpu_count()} cores)", fontsize=10)
    ax.set_xticks(sorted(next(iter(scale.values()))))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--digits-seeds", type=int, default=3, help="seeds per label of the digits spec (10 labels)")
    p.add_argument("--small-cells", type=int, default=300)
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path, default=Path(__file__).with_name("sweep_scaling.png"))
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the local instance on loopback
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, object_store_memory=200 * 2**20)
    digits = parse_spec(DIGITS % args.digits_seeds, "digits.toml")
    small = parse_spec(SMALL % args.small_cells, "small.toml")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        res = {"machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "digits_cells": len(digits.cells), "small_cells": len(small.cells),
               "cpu_capacity_before": cpu_capacity()}
        res["digits"] = measure(digits, work, args.rounds)
        res["small"] = measure(small, work, args.rounds)
        res["driver_write_ms"] = driver_write_ms(work)
        res["scaling_small"] = scaling(work, small)
        res["cpu_capacity_after"] = cpu_capacity()
    ray.shutdown()
    for kind in ("small", "digits"):  # ms of sweep time per cell that Ray adds (negative: saves), per round
        rounds = zip(res[kind]["Ray, 2 workers"]["runs"], res[kind]["2 local workers"]["runs"])
        res[f"ray_overhead_ms_per_cell_{kind}"] = statistics.median(
            60_000.0 / r["steady_cells_per_min"] - 60_000.0 / loc["steady_cells_per_min"] for r, loc in rounds)
    res["driver_ceiling_cells_per_min"] = 60_000.0 / res["driver_write_ms"]
    figure(args.figure, res["scaling_small"], res["driver_ceiling_cells_per_min"])
    text = json.dumps(res, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    for kind in ("digits", "small"):
        print(f"\n{kind} cells:")
        for name, r in res[kind].items():
            print(f"  {name:<16} steady {r['steady_cells_per_min']:8.1f}/min (x{r['steady_ratio']:.2f})   "
                  f"wall {r['wall_cells_per_min']:8.1f}/min (x{r['wall_ratio']:.2f})")
    print(f"\nCPU capacity (2 processes / 1): {res['cpu_capacity_before']:.2f} before, "
          f"{res['cpu_capacity_after']:.2f} after")
    print(f"Ray vs the local pool (2 workers), ms per cell: small {res['ray_overhead_ms_per_cell_small']:+.1f}, "
          f"digits {res['ray_overhead_ms_per_cell_digits']:+.1f}; "
          f"driver write {res['driver_write_ms']:.2f} ms/cell (ceiling {res['driver_ceiling_cells_per_min']:.0f}/min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
