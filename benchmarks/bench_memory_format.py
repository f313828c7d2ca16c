"""Does a text-to-image UNet step faster channels-last on the CPU, and what does the layout cost at open?

The pixel models run channels-last on the CPU (RESULTS.md §14: 1.24× faster training steps for the
digits UNet). For text-to-image UNets the layout costs a copy of every convolution weight when the
model opens; this measures whether the steps pay it back.

For each UNet (the shipped SD 1.x config at full size with random weights; the built-in digits-text
UNet) and latent size: one CFG evaluation (batch 2) in the default layout (A) and channels-last (B),
interleaved A B A B …, the median of per-pair ratios B/A; and the time of the copy itself
(``unet.to(memory_format=torch.channels_last)``), median of ``--repeats``.

    python -m benchmarks.bench_memory_format [--models sd15 digits-text] [--latents 16 32 64] [--repeats 3]
                                             [--out benchmarks/memory_format.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

from .common import interleaved, machine, timed

ROOT = Path(__file__).resolve().parents[1]


def sd15_unet():
    """The shipped SD 1.x UNet config at full size, weights N(0, 0.02²) (timing does not depend on them)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(ROOT / "assets/configs/sd1/unet")))
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=g)
    return unet.eval(), 768


def digits_text_unet():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(ROOT / "assets/models/digits-text/unet")).float().eval()
    return unet, unet.config.cross_attention_dim


MODELS = {"sd15": sd15_unet, "digits-text": digits_text_unet}


def step_fn(unet, latent: int, context: int, channels_last: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, unet.config.in_channels, latent, latent, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 77, context, generator=g)

    @torch.no_grad()
    def step():
        unet(x, t, encoder_hidden_states=text)

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--latents", nargs="+", type=int, default=[16, 32, 64], help="latent sides for sd15 "
                    "(digits-text runs at its own 8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "memory_format.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = []
    for name in args.models:
        unet, context = MODELS[name]()
        copies = []
        for _ in range(args.repeats):
            copies.append(timed(lambda: unet.to(memory_format=torch.channels_last)))  # in place
            unet.to(memory_format=torch.contiguous_format)
        cl = copy.deepcopy(unet).to(memory_format=torch.channels_last)
        for latent in (args.latents if name == "sd15" else [unet.config.sample_size]):
            r = interleaved(step_fn(unet, latent, context, False), step_fn(cl, latent, context, True), args.repeats)
            r.update(model=name, latent=latent, copy_s=statistics.median(copies))
            results.append(r)
            print(json.dumps(r), flush=True)
        unet = cl = None  # freed before the next model
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print("| UNet | latent | default s/eval | channels-last s/eval | ratio (min–max) | copy at open s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['latent']}×{r['latent']} | {r['baseline_s']:.3f} | {r['studio_s']:.3f} | "
              f"**{r['ratio']:.3f}** ({r['ratio_min']:.3f}–{r['ratio_max']:.3f}) | {r['copy_s']:.3f} |")
    print("command: python -m benchmarks.bench_memory_format " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
