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
SUITES = ("engine", "accuracy", "gui", "memory", "startup", "allocator")


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
                row = f"{label} ({r['baseline']})" if r.get("baseline") else label
                out.append(f"| {row} | {r['model']} | {r['batch']} | {r['steps']} | {r['baseline_s']:.3f} | "
                           f"{r['studio_s']:.3f} | **{r['ratio']:.3f}** ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {target} |")
        out.append("")
    gui = res.get("gui") or {}
    if gui:
        out += ["## 4. Responsiveness (offscreen window, 5 ms heartbeat timer)", "",
                "| model | steps/s | idle longest / p99 ms | run longest ms | run p99 ms | targets |",
                "|---|---|---|---|---|---|"]
        for key in ("responsiveness_gmm", "responsiveness_unet32"):
            r = gui.get(key)
            if r:
                out.append(f"| {key.split('_', 1)[1]} | {r['steps_per_s']:.1f} | {r['idle_longest_ms']:.1f} / "
                           f"{r['idle_p99_ms']:.1f} | **{r['run_longest_ms']:.1f}** | **{r['run_p99_ms']:.1f}** | "
                           "≤ 50 / ≤ 20 |")
        out += ["", "| scrubbing | canvases painted p50 / p99 ms | whole window visible p50 / p99 ms | target p99 |",
                "|---|---|---|---|"]
        for key in ("scrubbing_gmm", "scrubbing_unet32"):
            r = gui.get(key)
            if r:
                out.append(f"| {key.split('_', 1)[1]} ({r['steps']} steps) | {r['paint_p50_ms']:.1f} / "
                           f"**{r['paint_p99_ms']:.1f}** | {r['visible_p50_ms']:.1f} / {r['visible_p99_ms']:.1f} | ≤ 16 |")
        scrub = [(k.removeprefix("forward_scrub_"), r) for k, r in gui.items() if k.startswith("forward_scrub_")]
        if scrub:
            out += ["", "| scrubbing the forward view (a new t every 30 ms, CFG) | x̂₀ evaluations | idle longest / p99 ms | "
                    "scrub longest ms | scrub p99 ms | targets |", "|---|---|---|---|---|---|"]
            for name, r in scrub:
                out.append(f"| {name} ({r['moves_per_sweep']} moves a sweep, {r['repeats']} sweeps) | {r['evaluations']} | "
                           f"{r['idle_longest_ms']:.1f} / {r['idle_p99_ms']:.1f} | **{r['scrub_longest_ms']:.1f}** | "
                           f"**{r['scrub_p99_ms']:.1f}** | ≤ 50 / ≤ 20 |")
        out.append("")
    mem = res.get("memory") or {}
    if mem:
        out += ["## 5. Memory (resident set size)", ""]
        lr = mem.get("long_run")
        if lr:
            e = lr["expected"]
            out.append(f"- {lr['steps']}-step run at {lr['size']}×{lr['size']}, batch {lr['batch']}, every x_t and x̂₀ "
                       f"kept: **{lr['growth_mb']:.0f} MB** growth (target ≤ 200 MB); the store holds "
                       f"{e['previews_mb']:.0f} MB of uint8 previews + {e['full_state_in_memory_mb']:.0f} MB of float32 "
                       f"state in memory, {e['steps_spilled_to_disk']} steps' state on disk.")
        rr = mem.get("repeated_runs")
        if rr:
            out.append(f"- {rr['runs']} consecutive {rr['steps']}-step runs in one process: {rr['total_change_mb']:+.0f} MB "
                       f"in all ({rr['first_run_change_mb']:+.0f} MB of it on the first run), slope over the last "
                       f"{rr['slope_window']} runs **{rr['slope_mb_per_run_last']:+.2f} MB/run**.")
        out.append("")
    st = res.get("startup") or {}
    if st:
        out += ["## 6. Start-up", "",
                f"Model `{st.get('model_spec')}`; median of {st['repeats']} fresh processes.", "",
                "| from process start to | studio s | bare Qt window s | ratio |", "|---|---|---|---|",
                f"| window shown | {st['studio_shown_s']:.2f} | {st['baseline_shown_s']:.2f} | {st['shown_ratio']:.1f} |",
                f"| model loaded | {st['studio_loaded_s']:.2f} | | |",
                f"| first frame of a run | {st['studio_first_frame_s']:.2f} | {st['baseline_shown_s']:.2f} | "
                f"{st['first_frame_ratio']:.1f} |", ""]
    acc = res.get("accuracy")
    if acc:
        from .bench_accuracy import section  # the figure's text and tables, also printed by the benchmark itself

        out.append(section(acc))
    al = res.get("allocator")
    if al:
        out += ["## 8. Allocator tuning (studio/runtime.py)", "",
                "Fresh processes alternated, glibc's defaults (`STUDIO_MALLOC_TUNING=0`, what a plain torch or diffusers "
                "script gets) against the studio's tuned thresholds; ms per step, minor page faults and kernel time "
                "per step, median over pairs.", "",
                "| workload | plain ms | tuned ms | ratio | faults plain → tuned | kernel ms plain → tuned |",
                "|---|---|---|---|---|---|"]
        names = {"forward": "digits forward loop, batch 8", "studio": "studio ddim loop, digits, batch 8",
                 "train": "training step, batch 64"}
        for key, r in al.items():
            out.append(f"| {names.get(key, key)} | {r['plain_ms']:.1f} | {r['tuned_ms']:.1f} | **{r['ratio']:.3f}** "
                       f"({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {r['plain_faults']:.0f} → {r['tuned_faults']:.0f} | "
                       f"{r['plain_sys_ms']:.1f} → {r['tuned_sys_ms']:.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=SUITES)
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    from studio.runtime import own_process

    from .common import machine

    tuned = own_process()  # as the studio's own entry points do; baselines share the process

    out = Path(args.out)
    json_path = out / "results.json"
    res = json.loads(json_path.read_text()) if json_path.exists() and args.only else {}
    res.update({"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "quick": args.quick, "allocator_tuned": tuned})
    for suite in args.only or SUITES:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{suite}")
        except ImportError as e:
            print(f"skipping {suite}: {e}", file=sys.stderr)
            continue
        print(f"running {suite} …", file=sys.stderr)
        kept = standalone_sections(out / "RESULTS.md")
        res[suite] = mod.run(quick=args.quick)
        if suite == "accuracy":
            mod.plot(res[suite], out / "accuracy.png")
        print(f"  {suite} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        json_path.write_text(json.dumps(res, indent=2))
        (out / "RESULTS.md").write_text(markdown(res) + kept)
    return 0


STANDALONE_FROM = "## 9."  # sections measured by their own scripts (bench_text, bench_sweep), kept as written


def standalone_sections(path: Path) -> str:
    """The sections of an existing RESULTS.md that run_all does not generate, to keep them when it rewrites it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    i = text.find("\n" + STANDALONE_FROM)
    return "\n" + text[i + 1:] if i >= 0 else ""


if __name__ == "__main__":
    sys.exit(main())
