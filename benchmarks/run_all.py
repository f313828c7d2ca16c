"""Run every benchmark and write benchmarks/RESULTS.md and benchmarks/results.json.

    python -m benchmarks.run_all            # full run (CPU: tens of minutes)
    python -m benchmarks.run_all --quick    # a smoke run
    python -m benchmarks.run_all --only engine accuracy
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

HERE = Path(__file__).resolve().parent
SUITES = ("engine", "accuracy", "gui", "memory", "startup")


def _fmt(v, nd=3):
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(res: dict) -> str:
    m = res["machine"]
    out = ["# Benchmark results", "",
           f"Measured {res['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), "
           f"torch {m['torch']}, device {m['device']}. Ratios are the studio's time over a baseline measured "
           "in the same run, interleaved (A B A B …), median of per-pair ratios. Reproduce with "
           "`python -m benchmarks.run_all`.", ""]
    eng = res.get("engine") or {}
    if eng:
        out += ["## 1–3. Engine cost", "", "| figure | model | batch | steps | baseline s | studio s | ratio | target |",
                "|---|---|---|---|---|---|---|---|"]
        targets = {"engine_overhead": ("studio loop / bare forward loop", "≤ 1.05"),
                   "vs_diffusers_ddim": ("studio ddim / diffusers DDIM loop", "≤ 1.00"),
                   "cfg_step": ("CFG step / forward at 2× batch", "≤ 1.05"),
                   "classifier_step": ("classifier-guided step / (forward + classifier fwd+bwd)", "≤ 1.10")}
        for key, (label, target) in targets.items():
            for r in eng.get(key, []):
                out.append(f"| {label} | {r['model']} | {r['batch']} | {r['steps']} | {r['baseline_s']:.3f} | "
                           f"{r['studio_s']:.3f} | **{r['ratio']:.3f}** ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {target} |")
        out.append("")
    for key, title in (("gui", "4. Responsiveness"), ("memory", "5. Memory"), ("startup", "6. Start-up")):
        if res.get(key):
            out += [f"## {title}", "", "```json", json.dumps(res[key], indent=2), "```", ""]
    acc = res.get("accuracy")
    if acc:
        out += ["## 7. Accuracy per cost on the exact gmm model", "",
                f"{acc['batch']} samples from the same noise per sampler. `ode err` = median per-sample RMS distance to a "
                "Heun 1000-step solve of the probability-flow ODE (meaningful for deterministic samplers); `flips` = "
                "fraction of samples ending in another component than the reference; `dist err` = L1 error of the "
                "component weights + mean relative error of the per-component spread (exact samples score "
                f"{acc['exact_sample_dist_err']:.3f}: the sampling-noise floor).", "",
                "![accuracy per cost](accuracy.png)", "",
                "| sampler | NFE | ode err | flips | dist err |", "|---|---|---|---|---|"]
        for r in acc["rows"]:
            out.append(f"| {r['sampler']} | {r['nfe']} | {r['ode_rmse']:.5f} | {r['flip_frac']:.3f} | {r['dist_err']:.3f} |")
        out.append("")
        best = {}
        for r in acc["rows"]:
            if r["deterministic"]:
                b = best.get(r["nfe_budget"])
                if b is None or r["ode_rmse"] < b["ode_rmse"]:
                    best[r["nfe_budget"]] = r
        out.append("Best deterministic sampler per budget: " + ", ".join(
            f"{k} NFE → {v['sampler']} ({v['ode_rmse']:.4f})" for k, v in sorted(best.items())) + ".")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=SUITES)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    from .common import machine

    out = Path(args.out)
    json_path = out / "results.json"
    res = json.loads(json_path.read_text()) if json_path.exists() and args.only else {}
    res.update({"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "quick": args.quick})
    for suite in args.only or SUITES:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{suite}")
        except ImportError as e:
            print(f"skipping {suite}: {e}", file=sys.stderr)
            continue
        print(f"running {suite} …", file=sys.stderr)
        res[suite] = mod.run(quick=args.quick)
        if suite == "accuracy":
            mod.plot(res[suite], out / "accuracy.png")
        print(f"  {suite} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        json_path.write_text(json.dumps(res, indent=2))
        (out / "RESULTS.md").write_text(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
