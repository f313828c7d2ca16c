"""Figure 7's digits rows: every registered sampler at 10 and 20 NFE on the digits model, through `studio sweep`.

A sweep spec crosses its axes, so one spec cannot give Heun 5 steps where Euler gets 10. This script writes one
spec per set of step counts (``benchmarks/sampler_sweeps/steps-….toml``), generated from the registry so that
samplers added later join on the next run, runs ``studio sweep`` on each, and gathers the settings into
``benchmarks/sweep_samplers.json`` (RESULTS.md §7 reads it: ``bench_accuracy.digits_section``).

- NFE matching as in ``bench_accuracy``: each budget gets the most steps whose evaluations on the digits
  model's own plan (its scheduler's spacing) fit in it; a budget no step count comes near (less than half of
  it used) is left out. Samplers for consistency-distilled models (``for_consistency_models``: LCM) are left
  out: the digits model is not one.
- Each setting pools labels 0–9, ``PER_LABEL`` images each (one cell per label, one seed), unguided, with every
  sampler's default options.
- Accuracy: the fraction the evaluator reads as the requested digit, with a 95 % Wilson interval. Fréchet
  distance: the sweep's own ``frechet`` (the same formula and held-out reference) ± 1.96 bootstrap standard
  deviations over the samples (``BOOTSTRAP`` resamples; the reference fixed): its sampling spread. With fewer
  images than evaluator features the distance is biased upwards alike for every row: compare rows, not with
  `studio eval`'s figures. (A percentile interval would sit above the estimate: resampling adds that bias again.)

    python -m benchmarks.sweep_samplers --plan         # write the specs, count the cells, estimate the time
    python -m benchmarks.sweep_samplers                # … and run them (into out/sampler-sweeps/, resumable)
    python -m benchmarks.sweep_samplers --gather-only  # rebuild the JSON from finished sweeps
    python -m benchmarks.sweep_samplers --budgets 10 20 50   # other budgets (last on the line)
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from studio.core.engine import make_plan
from studio.core.loading import DEFAULT_MODEL_DIR
from studio.core.samplers import SAMPLERS
from studio.core.schedule import NoiseSchedule

from .bench_accuracy import is_solver, kind, steps_for

BUDGETS = (10, 20)  # 50 too with --budgets 10 20 50: the run then costs about three times as much
PER_LABEL = 10  # images per label and setting (the cell's batch)
LABELS = 10
FD_REFERENCE = 2000
BOOTSTRAP = 200
HERE = Path(__file__).parent
SPECS = HERE / "sampler_sweeps"
OUT = HERE.parent / "out" / "sampler-sweeps"  # git ignores out/
RESULT = HERE / "sweep_samplers.json"
COMMAND = "python -m benchmarks.sweep_samplers"


def digits_plan_for(spec):
    """``plan_for(steps)`` on the digits model's plan: its scheduler config's spacing, else the sampler's."""
    config = json.loads((DEFAULT_MODEL_DIR / "scheduler_config.json").read_text())
    sched = NoiseSchedule.from_config(config)
    spacing = config.get("timestep_spacing") or spec.default_spacing
    return lambda steps: make_plan(spec, sched, steps, spacing, False)


def plan_steps(budgets=BUDGETS) -> tuple[dict[tuple[int, ...], list[str]], list[dict]]:
    """{step counts for BUDGETS (None: left out): samplers}, and the samplers and budgets left out, with why."""
    groups: dict[tuple, list[str]] = {}
    left_out = []
    for name, spec in SAMPLERS.items():
        if not is_solver(spec):
            left_out.append({"sampler": name, "why": "meant for consistency-distilled models; the digits model is not one"})
            continue
        plan_for = digits_plan_for(spec)
        counts = []
        for budget in budgets:
            steps = steps_for(spec, budget, plan_for)
            used = spec.evals(steps, plan=plan_for(steps)) if steps else 0
            if steps is None or used < budget / 2:
                left_out.append({"sampler": name, "nfe_budget": budget, "why": "no step count comes near the budget"})
                counts.append(None)
            else:
                counts.append(steps)
        groups.setdefault(tuple(counts), []).append(name)
    return groups, left_out


def spec_text(steps: list[int], samplers: list[str]) -> str:
    def toml_list(xs):
        return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

    return "\n".join([
        f"# written by `{COMMAND}` from the sampler registry; edit the script, not this file",
        f"title = \"Samplers at steps {', '.join(map(str, steps))} on the digits model\"",
        "model = \"default\"",
        "metrics = [\"accuracy\", \"frechet\"]",
        "pool = [\"label\"]",
        f"fd_reference = {FD_REFERENCE}",
        "",
        "[fixed]",
        f"batch = {PER_LABEL}",
        "guidance = \"none\"",
        "",
        "[axes]",
        f"sampler = {toml_list(samplers)}",
        f"steps = {toml_list(steps)}",
        f"label = {{start = 0, count = {LABELS}}}",
        "seeds = [0]",
        "",
    ])


def write_specs(budgets=BUDGETS) -> tuple[list[Path], list[dict], int, int]:
    """The spec files (old ones removed), what is left out, the cells and the network evaluations of one image."""
    groups, left_out = plan_steps(budgets)
    SPECS.mkdir(exist_ok=True)
    for old in SPECS.glob("*.toml"):
        old.unlink()
    paths, cells, evals = [], 0, 0
    for counts, samplers in groups.items():
        steps = sorted({s for s in counts if s is not None})
        if not steps:
            continue
        path = SPECS / f"steps-{'-'.join(map(str, steps))}.toml"
        path.write_text(spec_text(steps, samplers))
        paths.append(path)
        cells += len(samplers) * len(steps) * LABELS
        for name in samplers:
            spec, plan_for = SAMPLERS[name], digits_plan_for(SAMPLERS[name])
            evals += sum(spec.evals(s, plan=plan_for(s)) for s in steps)
    # a sampler with a budget left out still runs that spec's other step counts: counted above per spec
    return paths, left_out, cells, evals * LABELS


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def frechet_to(ref: np.ndarray):
    """``features.frechet(f, ref)`` with the reference's mean and covariance square root computed once:
    tr((Σ_f Σ_r)^{1/2}) = tr((Σ_r^{1/2} Σ_f Σ_r^{1/2})^{1/2})."""
    from studio.evaluation.features import _sqrtm_psd

    m2, c2 = ref.mean(0), np.cov(ref, rowvar=False)
    s2 = _sqrtm_psd(c2)

    def fd(f: np.ndarray) -> float:
        c1 = np.cov(f, rowvar=False)
        return float(((f.mean(0) - m2) ** 2).sum() + np.trace(c1) + np.trace(c2)
                     - 2 * np.trace(_sqrtm_psd(s2 @ c1 @ s2)))
    return fd


def gather(outs: list[Path], seconds: float, budgets=BUDGETS) -> dict:
    """One row per sampler and budget from the sweeps' cells (their per-image evaluator arrays)."""
    from studio.evaluation.features import frechet
    from studio.evaluation.reference import reference_features
    from studio.sweep.cells import read_arrays
    from studio.sweep.summary import cell_results, load_sweep

    rng = np.random.default_rng(0)
    rows, cells = [], 0
    for out in outs:
        doc = load_sweep(out)
        results = [r for r in cell_results(out, doc) if r["status"] == "ok"]
        cells += len(results)
        ref = reference_features(out, doc["spec"]["model"], int(doc["spec"]["fd_reference"]), list(range(LABELS)))
        fd_to_ref = frechet_to(ref)
        settings: dict[tuple, list[dict]] = {}
        for r in results:
            settings.setdefault((r["values"]["sampler"], r["values"]["steps"]), []).append(r)
        for (sampler, steps), members in settings.items():
            arrays = [read_arrays(out, r["key"]) for r in members]
            feats = np.concatenate([a["features"] for a in arrays]).astype(np.float64)
            pred = np.concatenate([a["pred"] for a in arrays])
            label = np.concatenate([np.full(len(a["pred"]), r["recipe"]["label"]) for a, r in zip(arrays, members)])
            nfe = members[0]["metrics"]["nfe"]
            budget = min((b for b in budgets if b >= nfe), default=nfe)
            n, k = len(pred), int((pred == label).sum())
            boots = [fd_to_ref(feats[rng.integers(n, size=n)]) for _ in range(BOOTSTRAP)]
            lo, hi = wilson(k, n)
            spec = SAMPLERS.get(sampler)
            fd, sd = frechet(feats, ref), float(np.std(boots, ddof=1))
            rows.append({"sampler": sampler, "label": sampler, "group": spec.group if spec else "?",
                         "kind": kind(spec) if spec else "?", "nfe_budget": budget, "steps": steps, "nfe": nfe,
                         "images": n, "accuracy": k / n, "accuracy_low": lo, "accuracy_high": hi,
                         "frechet": fd, "frechet_low": fd - 1.96 * sd, "frechet_high": fd + 1.96 * sd,
                         "seconds_per_image": float(np.mean([r["metrics"]["seconds_per_image"] for r in members]))})
    order = {name: i for i, name in enumerate(SAMPLERS)}
    rows.sort(key=lambda r: (order.get(r["sampler"], 99), r["nfe"]))
    return {"command": COMMAND, "budgets": list(budgets), "images_per_setting": PER_LABEL * LABELS,
            "fd_reference": FD_REFERENCE, "bootstrap": BOOTSTRAP, "cells": cells, "minutes": seconds / 60,
            "rows": rows}


def main(argv: list[str]) -> int:
    budgets = tuple(int(b) for b in argv[argv.index("--budgets") + 1:] if b.isdigit()) if "--budgets" in argv else BUDGETS
    paths, left_out, cells, evals = write_specs(budgets)
    print(f"{len(paths)} specs, {cells} cells, {evals} forward passes at batch {PER_LABEL} "
          f"({evals * PER_LABEL} image-evaluations)", file=sys.stderr)
    for s in left_out:
        print(f"left out: {s['sampler']}" + (f" at {s['nfe_budget']} NFE" if "nfe_budget" in s else "")
              + f": {s['why']}", file=sys.stderr)
    if "--plan" in argv:
        return 0
    outs = [OUT / p.stem for p in paths]
    started = time.perf_counter()
    if "--gather-only" not in argv:
        workers = argv[argv.index("--workers") + 1] if "--workers" in argv else "2"
        for path, out in zip(paths, outs):
            subprocess.run([sys.executable, "-m", "studio", "sweep", str(path), "--out", str(out),
                            "--workers", workers], check=True)
    res = gather([o for o in outs if o.exists()], time.perf_counter() - started, budgets)
    res["left_out"] = left_out
    if "--gather-only" in argv and RESULT.exists():  # keep the time the sweeps took
        res["minutes"] = json.loads(RESULT.read_text()).get("minutes", res["minutes"])
    RESULT.write_text(json.dumps(res, indent=1))
    for r in res["rows"]:
        print(f"{r['sampler']:14s} NFE {r['nfe']:3d}  FD {r['frechet']:7.3f} [{r['frechet_low']:.3f}, "
              f"{r['frechet_high']:.3f}]  acc {r['accuracy']:.3f} [{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
