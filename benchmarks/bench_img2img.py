"""Image-to-image (SDEdit) runs: the studio's against diffusers' ``StableDiffusionImg2ImgPipeline``, interleaved.

Both sides run on the same pipeline folder, from the same picture (written once as a PNG at the model's image
size, so neither side resizes it), with the same prompt, classifier-free guidance, sampler, steps, strength and
batch, as the loop benchmarks of section 9 (``bench_text.py``) compare text-to-image runs:

- studio: ``Run(recipe with init_image and strength).run_to_end()`` on the model opened once (as the window and
  a CLI sweep keep it): the image file read and hashed (the recipe records its SHA-256), fitted, encoded by the
  VAE (the mean), noised at the start of the tail plan, the plan's last int(N·s) steps run, every step kept with
  its previews; the trajectory closed.
- diffusers: ``pipe(prompt=…, image=PIL image (opened once), strength=s, num_inference_steps=N,
  guidance_scale=w, num_images_per_prompt=batch, output_type="latent")``: the prompt encoded, the image
  preprocessed and VAE-encoded (a sample of the latent distribution), noised, the same int(N·s) steps run; no
  decode on either side.

Schedulers: ``ddim`` against ``DDIMScheduler``, ``dpmpp_2m`` against ``DPMSolverMultistepScheduler``
(solver_order 2, dpmsolver++), each from the pipeline's own scheduler config. Per case: one warm-up pair (which
checks that both sides take the same number of steps and UNet calls), then A B A B … pairs; reported: the
median of the per-pair ratios studio / diffusers with its range. Target (issue 28): ≤ 1.00.

Pipelines: the built-in ``digits-text`` (when present), ``mid`` (bench_text's SD-1-shaped UNet at reduced width,
32×32×4 latents, random weights) and ``tiny`` (the tests' size; only with ``--only tiny``).
``--profile K`` runs K studio and K diffusers runs of each case under cProfile and prints where the time goes.

    python -m benchmarks.bench_img2img [--repeats 7] [--only digits-text mid] [--out benchmarks/img2img_results.json]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import warnings
from pathlib import Path

import torch

from .bench_forward_view import write_image
from .bench_text import ROOT, _mid_pipeline, _tiny_pipeline
from .common import interleaved, machine

SAMPLERS = {"ddim": ("DDIMScheduler", {}),
            "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"})}
STRENGTHS = (0.3, 0.8)
STEPS = 20
BATCH = 2
SCALE = 5.0
TARGET = 1.00


def open_both(folder: Path):
    """The studio's model and diffusers' img2img pipeline, each loaded from ``folder`` once."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from studio.core.pipeline import load_pipeline_folder

    model = load_pipeline_folder(folder, torch.device("cpu"), torch.float32)
    model.preview_weights()  # fitted (or read from the cache) once per model, as when a model is opened
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return model, pipe


class Case:
    """One sampler and strength on one pipeline: the two runs to time, built once."""

    def __init__(self, model, pipe, folder: Path, image: str, sampler: str, strength: float, prompt: str,
                 steps: int = STEPS, batch: int = BATCH, scale: float = SCALE):
        import diffusers
        from PIL import Image

        from studio.session.recipe import Recipe

        self.model, self.pipe, self.sampler, self.strength = model, pipe, sampler, strength
        self.steps, self.batch, self.scale, self.prompt = steps, batch, scale, prompt
        self.recipe = Recipe(model=str(folder), sampler=sampler, steps=steps, batch=batch, seed=0, prompt=prompt,
                             guidance="cfg", scale=scale, init_image=image, strength=strength)
        with Image.open(image) as im:
            self.picture = im.convert("RGB")
        cls, extra = SAMPLERS[sampler]
        self.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **extra)

    def studio(self) -> int:
        from studio.session.runner import Run

        traj = Run(self.recipe, model=self.model).run_to_end()
        steps = len(traj)
        traj.close()
        return steps

    def diffusers(self) -> int:
        self.pipe.scheduler = self.scheduler
        with torch.no_grad():
            self.pipe(prompt=self.prompt, image=self.picture, strength=self.strength, num_inference_steps=self.steps,
                      guidance_scale=self.scale, num_images_per_prompt=self.batch,
                      generator=torch.Generator().manual_seed(0), output_type="latent")
        return int(self.pipe.num_timesteps)

    def check(self) -> int:
        """Both sides take the same number of steps (diffusers' int(N·s)) and UNet calls; returns the steps."""
        calls = {"studio": 0, "diffusers": 0}
        hooks = [unet.register_forward_hook(lambda *_, side=side: calls.__setitem__(side, calls[side] + 1))
                 for side, unet in (("studio", self.model.unet), ("diffusers", self.pipe.unet))]
        try:
            ours, theirs = self.studio(), self.diffusers()
        finally:
            for h in hooks:
                h.remove()
        if (ours, calls["studio"]) != (theirs, calls["diffusers"]):
            raise RuntimeError(f"{self.sampler} strength {self.strength}: the studio ran {ours} steps with "
                               f"{calls['studio']} UNet calls, diffusers {theirs} with {calls['diffusers']}")
        return ours

    def profile(self, runs: int, top: int = 25) -> dict:
        """cProfile of ``runs`` runs of each side: the functions with the most cumulative time."""
        out = {}
        for side in ("studio", "diffusers"):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(runs):
                getattr(self, side)()
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).strip_dirs().sort_stats("cumulative").print_stats(top)
            out[side] = text.getvalue()
        return out


def bench_pipeline(name: str, folder: Path, image_dir: Path, repeats: int, profile_runs: int = 0) -> list[dict]:
    model, pipe = open_both(folder)
    info = model.info
    image = write_image(image_dir / f"{name}.png", size=info.image_size)
    prompt = info.sample_prompt or "a red seven on a blue background"
    params = sum(p.numel() for p in model.unet.parameters())
    rows = []
    for sampler in SAMPLERS:
        for strength in STRENGTHS:
            case = Case(model, pipe, folder, image, sampler, strength, prompt)
            taken = case.check()  # also the warm-up pair
            if profile_runs:
                for side, text in case.profile(profile_runs).items():
                    print(f"--- {name} {sampler} strength {strength}: {side}, {profile_runs} runs ---\n{text}",
                          flush=True)
            r = interleaved(case.diffusers, case.studio, repeats=repeats, warmup=0)
            row = {"pipeline": name, "unet_params": params, "image_size": info.image_size,
                   "latents": [info.in_channels, info.sample_size, info.sample_size], "sampler": sampler,
                   "strength": strength, "steps": STEPS, "steps_taken": taken, "batch": BATCH, "scale": SCALE,
                   "diffusers_s": r["baseline_s"], "studio_s": r["studio_s"], "studio_over_diffusers": r["ratio"],
                   "studio_over_diffusers_range": [r["ratio_min"], r["ratio_max"]], "repeats": repeats,
                   "meets_target": r["ratio"] <= TARGET}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as the Markdown table for RESULTS.md."""
    out = ["| pipeline | sampler | strength | steps run | diffusers s | studio s | studio / diffusers | target |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["studio_over_diffusers_range"]
        out.append(f"| {r['pipeline']} | {r['sampler']} | {r['strength']} | {r['steps_taken']} of {r['steps']} | "
                   f"{r['diffusers_s']:.3f} | {r['studio_s']:.3f} | **{r['studio_over_diffusers']:.3f}** "
                   f"({lo:.3f}–{hi:.3f}) | ≤ {TARGET:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", nargs="+", choices=("tiny", "mid", "digits-text"))
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="also profile K runs of each side per case (cProfile, cumulative time)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "img2img_results.json"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging

    from studio.core.loading import TEXT_MODEL_DIR

    diffusers_logging.set_verbosity_error()  # a long prompt's truncation notice on every diffusers call

    rows = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-img2img-") as tmp:
        todo = {"digits-text": lambda: TEXT_MODEL_DIR, "mid": lambda: _mid_pipeline(Path(tmp) / "mid"),
                "tiny": lambda: _tiny_pipeline(Path(tmp) / "tiny")}
        if not (TEXT_MODEL_DIR / "model_index.json").exists():
            del todo["digits-text"]
        for name, make in todo.items():
            if (args.only and name not in args.only) or (not args.only and name == "tiny"):
                continue
            rows += bench_pipeline(name, make(), Path(tmp), args.repeats, args.profile)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
