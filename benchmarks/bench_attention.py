"""The cost of capturing cross-attention maps (``--attention``), as ratios measured in the same run.

1. on: one sampling step as a ``--attention`` run makes it (the capturing processors installed, a CFG
   evaluation of the UNet, the processors restored, the step's maps aggregated and stored as float16:
   ``CrossAttentionCapture.take_step`` + ``AttentionMaps.append``) over the same evaluation without
   capture; target ≤ 1.15.
2. off: the same evaluation on a UNet that has had a capture opened and closed (its processors restored,
   the pre-hook removed) over a copy of it that was never touched (the code path before capture existed);
   target: 1.00, "capture off costs nothing".

Each ratio is the median of per-pair ratios of interleaved repeats (A B A B …, ``common.interleaved``); the
two arms use two copies of the same weights, so neither sees the other's processors. Models: the shipped
digits-text and "mid" (bench_text's SD-1-shaped UNet at reduced width, 32×32×4 latents).

    python -m benchmarks.bench_attention [--repeats 30] [--batch 2] [--out benchmarks/attention_results.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import warnings
from pathlib import Path

import torch

from .common import interleaved, machine

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red seven on a blue background"


def bench_model(name: str, model, repeats: int, batch: int) -> dict:
    from studio.core.attention import CrossAttentionCapture, cross_attention_layers, prompt_tokens
    from studio.session.attention_maps import AttentionMaps

    info = model.info
    untouched = copy.deepcopy(model.unet)
    cond, uncond, _ = model.conditions(PROMPT, None, batch, info.image_size, info.image_size)
    both = cond.join(uncond).unet_kwargs(model.dtype)
    f = info.vae_scale_factor
    x = torch.randn(2 * batch, info.in_channels, info.image_size // f, info.image_size // f,
                    generator=torch.Generator().manual_seed(0))
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.full((2 * batch,), 500.0)
    ids, strings, _ = prompt_tokens(model, PROMPT)
    capture = CrossAttentionCapture(model.unet, batch=batch, tokens=len(ids))
    maps = AttentionMaps(strings, ids, steps=10 ** 6, limit_bytes=1 << 40)
    step = [0]

    @torch.no_grad()
    def plain():
        untouched(x, t, **both)

    @torch.no_grad()
    def captured():  # as a Run does it: the processors installed around the step, the maps stored after it
        with capture:
            model.unet(x, t, **both)
        maps.append(step[0], capture.take_step())
        step[0] += 1

    on = interleaved(plain, captured, repeats=repeats)

    @torch.no_grad()
    def after():
        model.unet(x, t, **both)

    off = interleaved(plain, after, repeats=repeats)
    return {"model": name, "batch": batch, "latents": list(x.shape[1:]), "tokens": len(ids),
            "cross_attention_layers": len(cross_attention_layers(model.unet)),
            "resolutions": [list(r) for r in maps.resolutions], "step_ms": on["baseline_s"] * 1e3,
            "capture_on_over_off": on["ratio"], "capture_on_range": [on["ratio_min"], on["ratio_max"]],
            "map_bytes_per_step": maps.nbytes // max(len(maps), 1),
            "off_over_untouched": off["ratio"], "off_range": [off["ratio_min"], off["ratio_max"]], "repeats": repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--only", choices=("digits-text", "mid"), help="one model only")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from studio.core.pipeline import load_pipeline_folder

    from .bench_text import _mid_pipeline

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"digits-text": lambda: load_pipeline_folder(ROOT / "assets/models/digits-text", torch.device("cpu"),
                                                              torch.float32, name="digits-text"),
                  "mid": lambda: load_pipeline_folder(_mid_pipeline(Path(tmp) / "mid"), torch.device("cpu"),
                                                      torch.float32)}
        for name, load in models.items():
            if args.only and name != args.only:
                continue
            r = bench_model(name, load(), args.repeats, args.batch)
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
