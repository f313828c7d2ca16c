"""Training-step time of the ``digits-text`` UNet (``text_model.UNET_CONFIG``, batch 64, 8x8x4
latents, cross-attention to a (64, 20, 96) context, ε-MSE with Min-SNR-γ 5, AdamW), eager against
``torch.compile`` and against channels-last, interleaved step by step; ratios of each variant's
time over eager's in the same run, plus the one-off compile time. Tells whether either would buy
the UNet more steps inside the training budget.

    python -m benchmarks.bench_text_train_step [--steps 10] [--threads 2] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    from studio.training.text_diffusion import text_diffusion_loss
    from studio.training.text_model import UNET_CONFIG, alphas_cumprod, make_unet

    from .common import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_text_train_step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ac = alphas_cumprod()
    ctx = torch.randn(64, 20, 96)

    def context(ids):  # stands in for the frozen text encoder: a fixed context
        return (ctx,)

    variants, compile_s = {}, None
    for name in ("eager", "channels_last") + (() if a.no_compile else ("compiled",)):
        torch.manual_seed(0)
        m = make_unet(UNET_CONFIG).train()
        if name == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        variants[name] = (torch.compile(m) if name == "compiled" else m, opt)

    def step(name: str) -> float:
        m, opt = variants[name]
        z0 = torch.randn(64, 4, 8, 8)
        if name == "channels_last":
            z0 = z0.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        loss = text_diffusion_loss(m, context, None, z0, torch.randint(0, 1000, (64,)), torch.randn_like(z0),
                                   ac, 5.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    if "compiled" in variants:
        compile_s = step("compiled")  # the first call compiles forward and backward
    times = {n: [] for n in variants}
    for i in range(2 + a.steps):
        for n in variants:
            dt = step(n)
            if i >= 2:
                times[n].append(dt)
    out = {n: {"s_per_it_median": round(statistics.median(ts), 3),
               "ratio_to_eager": round(statistics.median([t / e for t, e in zip(ts, times["eager"])]), 3)}
           for n, ts in times.items()}
    print(json.dumps({"machine": machine(), "batch": 64, "steps": a.steps,
                      "compile_seconds": None if compile_s is None else round(compile_s, 1),
                      "variants": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
