"""Text-to-image latent pipelines: the cost of seeing latents, and the studio's loop vs diffusers'.

1. preview: the linear latent→RGB preview of one step (x_t and x̂₀) as a fraction of one UNet forward
   (the CFG batch), measured interleaved; target ≤ 2 %.
2. loop: a studio run (engine + trajectory kept with previews of every step, prompts encoded once) against
   ``StableDiffusionPipeline.__call__(output_type="latent")`` on the same pipeline, DDIM 20 steps, CFG,
   interleaved; the ratio studio / diffusers, target ≤ 1.00.

3. memory: RSS growth over a 1000-step latent run with every step kept (tiny pipeline).
4. window: event-loop stalls while scrubbing a finished run of the mid pipeline and stopping long enough on
   each position for its full decode to run in the background (targets: longest ≤ 50 ms, p99 ≤ 20 ms).

Pipelines: "tiny" (the tests' size: 8×8×4 latents), "mid" (an SD-1-shaped UNet at reduced width:
32×32×4 latents, 4 levels, cross-attention dim 256) and the shipped digits-text model when present.

    python -m benchmarks.bench_text [--repeats 5] [--out benchmarks/text_results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .common import interleaved, machine

ROOT = Path(__file__).resolve().parents[1]


def _mid_pipeline(folder: Path) -> Path:
    """An SD-1-shaped pipeline at reduced width (random weights: timing only)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from text_pipelines import SD_SCHEDULER, _tokenizer_files, text_config, write_clip_tokenizer

    tok_dir = folder.parent / "mid-tokenizer"
    vocab = write_clip_tokenizer(tok_dir, max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256, 256),
                                layers_per_block=2, cross_attention_dim=256, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 64, 64, 64], latent_channels=4,
                        norm_num_groups=32, sample_size=256)
    cfg = text_config(vocab, hidden=256)
    cfg.max_position_embeddings, cfg.num_hidden_layers, cfg.intermediate_size = 77, 4, 1024
    text = CLIPTextModel(cfg)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
                                   unet=unet, scheduler=DDIMScheduler.from_config(SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _tokenizer_files(tok_dir, folder / "tokenizer")
    return folder


def _tiny_pipeline(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from text_pipelines import make_sd_pipeline

    return make_sd_pipeline(folder)


def bench_pipeline(name: str, folder: Path, repeats: int, steps: int = 20, batch: int = 2) -> dict:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from studio.core import engine
    from studio.core.guidance import Guidance
    from studio.core.pipeline import load_pipeline_folder
    from studio.session.trajectory import Trajectory

    model = load_pipeline_folder(folder, torch.device("cpu"), torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    info = model.info
    shape = (batch, info.in_channels, info.sample_size, info.sample_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    prompt = info.sample_prompt or "a red seven on a blue background"
    model.preview_weights()  # fitted (or read from the cache) once per model, as when a model is opened

    cond, uncond, _ = model.conditions(prompt, None, batch, info.image_size, info.image_size)
    t = torch.full((2 * batch,), 500.0)
    both = cond.join(uncond)
    x2 = torch.cat([x_T, x_T])

    def forward():
        model.predict(x2, t, both, 0.0)

    def preview():
        model.preview(x_T)
        model.preview(x_T)  # x_t and x̂₀ of one step

    pre = interleaved(forward, preview, repeats=max(repeats * 4, 20))

    def studio():
        traj = Trajectory(None, x_T, steps, render=model.preview)
        for rec in engine.sample(model, "ddim", steps, batch=batch, init_noise=x_T, guidance=Guidance("cfg", 5.0),
                                 prompt=prompt):
            traj.append(rec, 5.0)
        traj.close()

    def diffusers_loop():
        with torch.no_grad():
            pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=5.0, latents=x_T.clone(),
                 num_images_per_prompt=batch, output_type="latent")

    loop = interleaved(diffusers_loop, studio, repeats=repeats)
    params = sum(p.numel() for p in model.unet.parameters())
    return {"pipeline": name, "unet_params": params, "latents": list(shape[1:]), "batch": batch, "steps": steps,
            "preview_over_forward": pre["ratio"], "forward_ms": pre["baseline_s"] * 1e3,
            "preview_ms": pre["studio_s"] * 1e3, "studio_over_diffusers": loop["ratio"],
            "studio_over_diffusers_range": [loop["ratio_min"], loop["ratio_max"]],
            "diffusers_s": loop["baseline_s"], "studio_s": loop["studio_s"], "repeats": repeats}


def memory_long_run(folder: Path, steps: int = 1000, batch: int = 4) -> dict:
    """RSS growth over a 1000-step latent run with every step kept (previews, latents, x̂₀), as
    bench_memory measures the pixel models."""
    from studio.session.recipe import Recipe
    from studio.session.runner import ModelCache, Run

    from .bench_memory import MB, rss_bytes, trim

    cache = ModelCache()
    recipe = Recipe(model=str(folder), sampler="euler", steps=steps, batch=batch, prompt="a red 7", guidance="cfg",
                    scale=3.0)
    Run(recipe.replace(steps=2), cache=cache).run_to_end().close()  # model open, preview fitted, prompt encoded
    trim()
    before = rss_bytes()
    run = Run(recipe, cache=cache)
    peak = before
    for rec in run:
        if rec.index % 50 == 0:
            peak = max(peak, rss_bytes())
    traj = run.trajectory
    after = rss_bytes()
    latents = sum(x.numel() * 4 for x in (traj.final(),)) * (2 * steps + 1)
    previews = sum(f.nbytes for f in traj.xt) + sum(f.nbytes for f in traj.x0)
    traj.close()
    del traj, run
    trim()
    return {"steps": steps, "batch": batch, "growth_mb": (after - before) / MB, "peak_growth_mb": (peak - before) / MB,
            "previews_mb": previews / MB, "latents_mb_if_all_in_memory": latents / MB,
            "released_mb": (after - rss_bytes()) / MB}


def scrub_with_decodes(folder: Path, steps: int = 30, dwell_ms: int = 400, positions: int = 40, seed: int = 0) -> dict:
    """Event-loop stalls while a person scrubs a finished latent run and stops on positions long enough
    (``dwell_ms`` > the view's settle time) for full decodes to run in the background thread."""
    import random

    from studio.gui.full_decode import shared_decoder
    from studio.gui.view import SETTLE_MS

    from .bench_gui import Heartbeat, configure, make_app, open_window, run_once, wait

    make_app()
    w = open_window(str(folder))
    w.resize(1280, 800)
    try:
        configure(w, steps, 4)
        traj, _ = run_once(w)
        shared_decoder().idle()
        rng = random.Random(seed)
        hb = Heartbeat()
        hb.start()
        t0 = time.perf_counter()
        for _ in range(positions):
            w.scrubber.setValue(rng.randrange(0, len(traj) + 1))
            wait(seconds=dwell_ms / 1000, timeout=dwell_ms / 1000 + 5)
        stalls = hb.stop()
        decoded = sum(traj.decodes.peek(p, "xt") is not None for p in range(len(traj) + 1))
        shared_decoder().idle()
    finally:
        w.close()
        w.deleteLater()
    return {"steps": steps, "positions_visited": positions, "dwell_ms": dwell_ms, "settle_ms": SETTLE_MS,
            "positions_decoded": decoded, "seconds": time.perf_counter() - t0,
            "longest_ms": stalls["longest_ms"], "p99_ms": stalls["p99_ms"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="+", choices=("tiny", "mid", "digits-text"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "text_results.json"))
    ap.add_argument("--no-window", action="store_true", help="skip the window's scrub-with-decodes measurement")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from studio.core.loading import TEXT_MODEL_DIR

    results, extra = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        todo = {"tiny": lambda: _tiny_pipeline(Path(tmp) / "tiny"), "mid": lambda: _mid_pipeline(Path(tmp) / "mid")}
        if (TEXT_MODEL_DIR / "model_index.json").exists():
            todo["digits-text"] = lambda: TEXT_MODEL_DIR
        for name, make in todo.items():
            if args.only and name not in args.only:
                continue
            folder = make()
            r = bench_pipeline(name, folder, args.repeats)
            print(json.dumps(r), flush=True)
            results.append(r)
            if name == "tiny":
                extra["memory_tiny"] = memory_long_run(folder)
                print(json.dumps(extra["memory_tiny"]), flush=True)
            if name == "mid" and not args.no_window:
                extra["scrub_with_decodes_mid"] = scrub_with_decodes(folder)
                print(json.dumps(extra["scrub_with_decodes_mid"]), flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": results, **extra}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
