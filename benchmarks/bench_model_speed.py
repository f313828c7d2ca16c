"""Sampling speed of the two built-in models, in the window and in the CLI.

Steps per second of one 50-step DDIM run with classifier-free guidance (w = 3, batch 1 or --batch):
``default`` (the class-conditional 32×32 pixel UNet, label 7) and ``digits-text`` (the latent text
model, its sample prompt). The class model is the baseline; the figure reported is the median of
per-pair ratios text/class, pairs interleaved.

* window: a real ``MainWindow`` (offscreen Qt), Run pressed, timed to ``runFinished`` (the run
  streams its previews and, for the text model, decodes the final image);
* CLI: ``studio sample`` in a subprocess, timed from start to exit: start-up, model load, the
  run and writing its outputs (the steps/s figure is therefore a lower bound on the loop's).

    QT_QPA_PLATFORM=offscreen python -m benchmarks.bench_model_speed [--repeats 3] [--threads N] [--batch B]

* ``--threads N``: torch's intra-op threads in the window's process and ``OMP_NUM_THREADS`` of the
  CLI processes (default: torch's own choice, one per core); results in ``model_speed_threadsN.json``.
* ``--batch B``: B samples per run instead of 1 (``_batchB`` in the file name).
* ``--compare-threads A B``: the window only, A against B torch threads, interleaved repeat by
  repeat (``model_speed_threads_A_vs_B_batchB.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS, SCALE = 50, 3.0
MODELS = ("default", "digits-text")
TEXT_PROMPT = "a red 7 on a blue background"


def recipe_args(model: str, batch: int) -> list[str]:
    extra = ["--prompt", TEXT_PROMPT] if model == "digits-text" else ["--label", "7"]
    return ["--model", model, "--sampler", "ddim", "--steps", str(STEPS), "--batch", str(batch),
            "--guidance", "cfg", "--scale", str(SCALE), "--seed", "0", *extra]


def cli_once(model: str, batch: int, threads: int | None = None) -> float:
    """Wall seconds of one ``studio sample`` process (start-up and load included)."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "studio", "sample", *recipe_args(model, batch), "--out",
                        str(Path(tmp) / "run")], check=True, capture_output=True, env=env)
        return time.perf_counter() - t0


def window_runs(repeats: int, batch: int, thread_counts: tuple | None = None) -> dict:
    """Seconds per window run of each model: ``{model: [s, …]}``; with ``thread_counts``, each
    repeat runs every model at each of those torch thread counts in turn (interleaved), keyed
    ``{(model, threads): [s, …]}``."""
    from PySide6.QtWidgets import QApplication

    from benchmarks.bench_gui import open_window, run_once
    from studio.session.recipe import Recipe

    QApplication.instance() or QApplication([])
    windows = {}
    for m in MODELS:
        w = open_window(m)
        r = dict(model=w.model_spec, sampler="ddim", steps=STEPS, batch=batch, seed=0, guidance="cfg", scale=SCALE)
        if m == "digits-text":
            r["prompt"] = TEXT_PROMPT
        else:
            r["label"] = 7
        w.panel.set_recipe(Recipe(**r))
        run_once(w)  # warm-up
        windows[m] = w
    import torch

    counts = thread_counts or (None,)  # None: leave torch's thread count as it is
    times = {(m, t): [] for m in MODELS for t in counts}
    for _ in range(repeats):
        for t in counts:
            if t is not None:
                torch.set_num_threads(t)
            for m in MODELS:
                times[m, t].append(run_once(windows[m])[1])
    for w in windows.values():
        w.close()
    return times if thread_counts else {m: times[m, None] for m in MODELS}


def compare_threads(repeats: int, batch: int, a: int, b: int) -> dict:
    """The window at ``a`` against ``b`` torch threads, interleaved: per model, the median of the
    per-repeat time ratios a / b (below 1: ``a`` threads is faster)."""
    times = window_runs(repeats, batch, (a, b))
    out = {}
    for m in MODELS:
        ta, tb = times[m, a], times[m, b]
        out[m] = {f"seconds_{a}_threads": [round(x, 3) for x in ta], f"seconds_{b}_threads": [round(x, 3) for x in tb],
                  f"time_ratio_{a}_over_{b}": round(statistics.median(x / y for x, y in zip(ta, tb)), 3)}
    return out


def summarise(times: dict) -> dict:
    out = {m: {"seconds_median": round(statistics.median(v), 3), "steps_per_s": round(STEPS / statistics.median(v), 1),
               "seconds": [round(x, 3) for x in v]} for m, v in times.items()}
    ratios = [t / c for t, c in zip(times["digits-text"], times["default"])]
    out["text_over_class_time_ratio"] = round(statistics.median(ratios), 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_model_speed", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--compare-threads", type=int, nargs=2, metavar=("A", "B"), default=None,
                   help="the window only: A against B torch threads, interleaved")
    args = p.parse_args()
    if args.compare_threads and args.compare_threads[0] == args.compare_threads[1]:
        p.error("--compare-threads needs two different thread counts, e.g. --compare-threads 1 2")
    repeats, threads, batch = args.repeats, args.threads, args.batch
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    res = {"steps": STEPS, "cfg_scale": SCALE, "batch": batch, "repeats": repeats, "cores": os.cpu_count()}
    if args.compare_threads:
        a, b = args.compare_threads
        res["window"] = compare_threads(repeats, batch, a, b)
        name = f"model_speed_threads_{a}_vs_{b}_batch{batch}"
    else:
        if threads:
            import torch

            torch.set_num_threads(threads)
        res["torch_threads"] = threads or "default"
        res["window"] = summarise(window_runs(repeats, batch))
        for m in MODELS:
            cli_once(m, batch, threads)  # warm the file cache
        cli = {m: [] for m in MODELS}
        for _ in range(repeats):
            for m in MODELS:
                cli[m].append(cli_once(m, batch, threads))
        res["cli_process"] = summarise(cli)
        name = "model_speed" + (f"_threads{threads}" if threads else "") + (f"_batch{batch}" if batch != 1 else "")
    print(json.dumps(res, indent=1))
    Path(__file__).with_name(name + ".json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
