"""Per-sampler overhead: each registered sampler's time per network evaluation against the bare forward loop.

For every sampler of the registry (samplers added later join on the next run), on the digits model at batch 8
(its shipped weights if present, else the same architecture with random weights: the same cost), the studio's
whole loop (``Run``: the sampler, x̂₀, records, the trajectory store's frames) against the network's forward
passes alone, the same number of them (the NFE the run makes, counted by the studio's denoiser), interleaved
A B A B in the same process (``common.interleaved``: median of the per-pair ratios). Equal NFE makes the ratio
the ratio of time per evaluation. Steps: the most whose evaluations fit in ``NFE`` (``bench_accuracy.steps_for``).
Target ≤ 1.05, as for the engine (RESULTS.md §1–3).

    python -m benchmarks.bench_sampler_overhead            # writes benchmarks/sampler_overhead.json
    python -m benchmarks.bench_sampler_overhead --quick    # 2 pairs per sampler: a smoke run
    python -m benchmarks.bench_sampler_overhead --samplers euler heun
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from studio.core.engine import make_plan, schedule_for
from studio.core.samplers import SAMPLERS
from studio.session.recipe import Recipe
from studio.session.runner import Run

from .bench_accuracy import steps_for
from .bench_engine import bare_loop, digits_like_unet, studio_loop, wrap
from .common import interleaved, machine

NFE = 20
BATCH = 8
REPEATS = 7
HERE = Path(__file__).parent


def plan_for(model, spec):
    sched = schedule_for(model)
    return lambda steps: make_plan(spec, sched, steps, None, False)


def run_nfe(model, sampler: str, steps: int) -> int:
    """The evaluations a run of ``steps`` steps makes, as the studio's denoiser counts them."""
    rec = None
    for rec in Run(Recipe(model="bench", sampler=sampler, steps=steps, batch=1, seed=0), model=model):
        pass
    return rec.nfe


def run(device="cpu", quick=False, samplers=None) -> dict:
    repeats = 2 if quick else REPEATS
    torch.manual_seed(0)
    unet = digits_like_unet().to(device).eval()
    model = wrap(unet, device)  # the studio's layout (channels-last on CPU); the bare loop uses the same network
    rows = []
    for name in samplers or SAMPLERS:
        spec = SAMPLERS[name]
        steps = steps_for(spec, NFE, plan_for(model, spec))
        if steps is None:
            rows.append({"sampler": name, "skipped": f"no step count fits in {NFE} evaluations"})
            continue
        nfe = run_nfe(model, name, steps)
        r = interleaved(bare_loop(unet, BATCH, nfe, device, label=model.info.null_label),
                        studio_loop(model, BATCH, steps, sampler=name), repeats, device)
        r.update(sampler=name, group=spec.group, steps=steps, nfe=nfe, batch=BATCH,
                 baseline_ms_per_eval=1000 * r["baseline_s"] / nfe, studio_ms_per_eval=1000 * r["studio_s"] / nfe)
        rows.append(r)
        print(f"{name:14s} {steps:3d} steps {nfe:3d} NFE  bare {r['baseline_ms_per_eval']:6.2f} ms/eval  studio "
              f"{r['studio_ms_per_eval']:6.2f}  ratio {r['ratio']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})",
              file=sys.stderr, flush=True)
    return {"machine": machine(), "nfe": NFE, "batch": BATCH, "repeats": repeats, "rows": rows}


def markdown(res: dict) -> str:
    lines = ["| sampler | group | steps | NFE | bare ms/eval | studio ms/eval | ratio (min–max) | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['sampler']} | | | | | | {r['skipped']} | |")
            continue
        lines.append(f"| {r['sampler']} | {r['group']} | {r['steps']} | {r['nfe']} | {r['baseline_ms_per_eval']:.2f} | "
                     f"{r['studio_ms_per_eval']:.2f} | **{r['ratio']:.3f}** ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) "
                     "| ≤ 1.05 |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = argv[argv.index("--samplers") + 1:] if "--samplers" in argv else None
    unknown = [n for n in names or () if n not in SAMPLERS]
    if unknown:
        print(f"unknown sampler {unknown[0]!r}; choose from {', '.join(SAMPLERS)}", file=sys.stderr)
        return 2
    res = run(quick=quick, samplers=names)
    if not quick and not names:
        (HERE / "sampler_overhead.json").write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
