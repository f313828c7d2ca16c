"""Single-file checkpoints: the cost of opening one, and of changing a LoRA's weight (issue #27).

1. open: the same checkpoint opened three ways, interleaved A B C A B C …, each open in a fresh Python
   process (the time of the open alone, not of the imports), medians and the median of per-round ratios:
   A. the studio's single file (``open_checkpoint``: header, family, architecture and memory checks,
      diffusers' ``from_single_file`` with the shipped local config, the finite-weights pass, the model);
   B. the studio's converted folder (``studio convert``'s output, opened by ``load_model``: SHA256SUMS
      verified, ``from_pretrained`` per component);
   C. diffusers' own ``from_single_file`` with the same local config folder (``local_files_only``),
      moved to the device: the baseline. Target A / C ≤ 1.10.
2. lora: with the model open and a LoRA loaded, the time from a weight change (alternately 0.5 and 1.0:
   every round is a real change) to the first step of the next run (``Run`` re-weights with
   ``set_adapters`` and re-encodes the prompt), against opening the model afresh with the LoRA at that
   weight up to the same first step. Interleaved. Two clocks stop: when the first step's UNet evaluation
   begins (a forward pre-hook; what the change costs, target change / fresh ≤ 0.1), and when that step is
   done (which adds the same evaluation to both arms).

Checkpoints: "tiny" (the tests' SD 1.x-like pipeline written as a single file in the original layout,
with its own config folder; timing of the code path only), "sd15" (a full-size SD 1.5 header over a
zero-filled sparse data region, opened with the shipped config: real sizes, no real weights; about
6.5 GB of memory in float32), or ``--file`` (a real checkpoint; ``--lora`` a real LoRA for it, else a
random rank-4 PEFT LoRA is written for it).

    python -m benchmarks.bench_checkpoints [--model tiny|sd15] [--file F [--lora L]] [--repeats 5]
                                           [--size PX] [--dtype float32] [--device cpu] [--out JSON]

Prints each result as JSON and the RESULTS.md section (markdown) at the end; writes ``--out``.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from .common import machine, timed

ROOT = Path(__file__).resolve().parents[1]
TARGET_OPEN, TARGET_LORA = 1.10, 0.10
PROMPT = "a lighthouse at dusk"
SIZES = {"tiny": 16, "sd15": 512, "file": 512}  # image side of the LoRA runs' first step


def ratio(times: dict, num: str, den: str) -> dict:
    r = [a / b for a, b in zip(times[num], times[den])]
    return {"ratio": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r)}


# == the checkpoints ========================================================================================
def tiny_checkpoint(tmp: Path) -> tuple[Path, Optional[Path], object]:
    """(file, config root, diffusers pipeline) of the tests' tiny SD 1.x-like checkpoint."""
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoint_files import make_tiny_checkpoint

    pipe, path, configs = make_tiny_checkpoint("sd1", tmp / "tiny")
    return path, configs, pipe


def sd15_checkpoint(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_checkpoint_layouts import sd15, write_sparse_safetensors

    return write_sparse_safetensors(tmp / "v1-5-pruned-emaonly.safetensors", sd15())


def write_lora(pipe, path: Path) -> Path:
    """A random rank-4 PEFT LoRA on ``pipe``'s UNet attention and first text encoder (the tests' builder)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_checkpoint_lora import peft_lora, save

    return save(peft_lora(pipe, seed=1), path)


# == 1. opening =============================================================================================
OPENERS = ("single_file", "folder", "diffusers")


def open_once(kind: str, path: str, converted: str, config_root: Optional[str], device: str, dtype: str) -> float:
    """Seconds to open the checkpoint one way (``kind`` of OPENERS), in this process."""
    import diffusers

    from studio.checkpoints import inspect_checkpoint
    from studio.checkpoints.configs import config_folder
    from studio.checkpoints.loading import _pipeline_kwargs, open_checkpoint
    from studio.checkpoints.models import load_model
    from studio.core.loading import resolve_device, resolve_dtype
    from studio.core.text_model import quiet_libraries

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    root = Path(config_root) if config_root else None
    info = inspect_checkpoint(path)
    folder_config = config_folder(info.family, info.prediction, root=root)
    cls = getattr(diffusers, info.family.pipeline)
    fns = {
        "single_file": lambda: open_checkpoint(path, dev, dt, config_root=root),
        "folder": lambda: load_model(converted, device, dtype),
        "diffusers": lambda: cls.from_single_file(str(path), config=str(folder_config), local_files_only=True,
                                                  torch_dtype=dt, **_pipeline_kwargs(info.family.pipeline)).to(dev),
    }
    with quiet_libraries():
        return timed(fns[kind], device)


def open_in_fresh_process(kind: str, path: Path, converted: Path, config_root: Optional[Path], device: str,
                          dtype: str) -> float:
    """``open_once`` in a new Python process: every open starts from the same memory state. (Opened one
    after another in one process, the same ``from_single_file`` call timed 0.56–2.3× itself, by how the
    previous model's 4 GB had been freed.)"""
    code = ("import json, warnings; warnings.filterwarnings('ignore'); "
            "from benchmarks.bench_checkpoints import open_once; "
            f"print(json.dumps(open_once({kind!r}, {str(path)!r}, {str(converted)!r}, "
            f"{str(config_root) if config_root else None!r}, {device!r}, {dtype!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_open(path: Path, config_root: Optional[Path], tmp: Path, repeats: int, device: str, dtype: str) -> dict:
    from studio.checkpoints import inspect_checkpoint
    from studio.checkpoints.convert import load_for_conversion, save_folder
    from studio.core.loading import resolve_dtype

    info = inspect_checkpoint(path)
    converted = tmp / "converted"
    _, configs, pipe = load_for_conversion(path, resolve_dtype(dtype), config_root=config_root)
    save_folder(pipe, converted, configs)
    del pipe
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in OPENERS}
    for round_ in range(repeats + 1):  # the first round warms the page cache and is not counted
        for name in OPENERS:
            t = open_in_fresh_process(name, path, converted, config_root, device, dtype)
            if round_:
                times[name].append(t)
    return {"figure": "open", "checkpoint": path.name, "family": info.family.title, "dtype": dtype, "device": device,
            "repeats": repeats, **{f"{k}_s": statistics.median(v) for k, v in times.items()},
            "single_file_over_diffusers": ratio(times, "single_file", "diffusers"),
            "folder_over_diffusers": ratio(times, "folder", "diffusers"),
            "target": TARGET_OPEN, "raw": times}


# == 2. a LoRA weight change ================================================================================
class FirstEvaluation:
    """The clock time at which a UNet's first forward of a measurement begins (a forward pre-hook)."""

    def __init__(self):
        self.at = None

    def hook(self, unet) -> None:
        unet.register_forward_pre_hook(self._mark)

    def _mark(self, *_) -> None:  # returns None: the inputs are left as they are
        if self.at is None:
            self.at = time.perf_counter()


def bench_lora(path: Path, config_root: Optional[Path], lora: Path, size: int, repeats: int, device: str,
               dtype: str) -> dict:
    from studio.checkpoints.loading import open_checkpoint
    from studio.core.loading import resolve_device, resolve_dtype
    from studio.session.recipe import Recipe
    from studio.session.runner import Run

    from .common import sync

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    recipe = Recipe(model=str(path), sampler="ddim", steps=20, batch=1, prompt=PROMPT, width=size, height=size,
                    device=device, dtype=dtype)
    clock = FirstEvaluation()

    def first_step(model, weight: float) -> None:
        run = Run(recipe.replace(loras=[f"{lora}:{weight}"]), model=model)
        next(iter(run))
        run.stop()
        run.trajectory.close()

    model = open_checkpoint(path, dev, dt, config_root=config_root)
    clock.hook(model.unet)
    first_step(model, 1.0)  # the LoRA loaded once, as in the window before the user moves its slider
    weights = [0.5, 1.0]
    turn = [0]

    def change():
        turn[0] += 1
        first_step(model, weights[turn[0] % 2])

    def fresh():
        fresh_model = open_checkpoint(path, dev, dt, config_root=config_root)
        clock.hook(fresh_model.unet)
        first_step(fresh_model, weights[turn[0] % 2])

    arms = {"change": change, "fresh": fresh}
    to_step: dict[str, list[float]] = {k: [] for k in arms}
    with_step: dict[str, list[float]] = {k: [] for k in arms}
    for fn in arms.values():  # warm-up round
        fn()
        gc.collect()
    for _ in range(repeats):
        for name, fn in arms.items():
            clock.at = None
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            with_step[name].append(time.perf_counter() - t0)
            to_step[name].append(clock.at - t0)
            gc.collect()
    return {"figure": "lora", "checkpoint": path.name, "lora": lora.name, "size": size, "dtype": dtype,
            "device": device, "repeats": repeats,
            **{f"{k}_to_step_s": statistics.median(v) for k, v in to_step.items()},
            **{f"{k}_s": statistics.median(v) for k, v in with_step.items()},
            "change_over_fresh_to_step": ratio(to_step, "change", "fresh"),
            "change_over_fresh": ratio(with_step, "change", "fresh"), "target": TARGET_LORA,
            "raw": {"to_step": to_step, "with_step": with_step}}


# == the RESULTS.md section ==================================================================================
def section(results: list[dict], command: str) -> str:
    def spread(r: dict) -> str:
        return f"**{r['ratio']:.3f}** ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})"

    lines = ["## Single-file checkpoints (`benchmarks/bench_checkpoints.py`)", "", f"`{command}`", "",
             "| figure | checkpoint | dtype | studio s | baseline s | ratio | target |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["figure"] == "open":
            lines.append(f"| open the single file / diffusers `from_single_file` (same local config) | {r['checkpoint']} "
                         f"| {r['dtype']} | {r['single_file_s']:.3f} | {r['diffusers_s']:.3f} | "
                         f"{spread(r['single_file_over_diffusers'])} | ≤ {r['target']:.2f} |")
            lines.append(f"| open the converted folder / diffusers `from_single_file` | {r['checkpoint']} | {r['dtype']} "
                         f"| {r['folder_s']:.3f} | {r['diffusers_s']:.3f} | {spread(r['folder_over_diffusers'])} | |")
        else:
            lines.append(f"| LoRA weight change → first step begins / fresh load → first step begins "
                         f"({r['size']}×{r['size']}) | {r['checkpoint']} | {r['dtype']} | {r['change_to_step_s']:.3f} | "
                         f"{r['fresh_to_step_s']:.3f} | {spread(r['change_over_fresh_to_step'])} | ≤ {r['target']:.2f} |")
            lines.append(f"| LoRA weight change → first step done / fresh load → first step done "
                         f"({r['size']}×{r['size']}) | {r['checkpoint']} | {r['dtype']} | {r['change_s']:.3f} | "
                         f"{r['fresh_s']:.3f} | {spread(r['change_over_fresh'])} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--file", help="a real single-file checkpoint instead (opened with the shipped configs)")
    ap.add_argument("--lora", help="a LoRA file for it (default: a random rank-4 PEFT LoRA written for it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, help="image side of the LoRA runs (default: 16 tiny, 512 otherwise)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="+", choices=("open", "lora"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "checkpoint_results.json"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    results = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-checkpoints-") as tmp:
        tmp = Path(tmp)
        pipe, config_root = None, None
        if args.file:
            path, kind = Path(args.file).expanduser().resolve(), "file"
        elif args.model == "tiny":
            path, config_root, pipe = tiny_checkpoint(tmp)
            kind = "tiny"
        else:
            path, kind = sd15_checkpoint(tmp), "sd15"
        if not args.only or "open" in args.only:
            results.append(bench_open(path, config_root, tmp, args.repeats, args.device, args.dtype))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "raw"}), flush=True)
        if not args.only or "lora" in args.only:
            lora = Path(args.lora).expanduser().resolve() if args.lora else None
            if lora is None:
                if pipe is None:
                    from studio.checkpoints.loading import open_checkpoint

                    pipe = open_checkpoint(path).pipeline()
                lora = write_lora(pipe, tmp / "lora.safetensors")
            del pipe
            gc.collect()
            results.append(bench_lora(path, config_root, lora, args.size or SIZES[kind], args.repeats, args.device,
                                      args.dtype))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "raw"}), flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(section(results, "python -m benchmarks.bench_checkpoints " + " ".join(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
