"""Training-step time of each ``studio train diffusion --unet`` preset (batch 64, forward + backward +
AdamW, channels-last, Min-SNR loss as shipped), interleaved across presets; ratios against the shipped
size (``UNET_CONFIG``) measured in the same run. The model card's "Sizes timed" line.

    python -m benchmarks.bench_unet_sizes [--steps 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    from studio.training.diffusion import diffusion_loss
    from studio.training.unet_config import UNET_PRESETS, alphas_cumprod, make_unet, unet_config

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_unet_sizes")
    p.add_argument("--steps", type=int, default=8, help="timed steps per preset (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ac = alphas_cumprod().float()
    nets = {}
    for name, over in UNET_PRESETS.items():
        m = make_unet(unet_config(over)).to(memory_format=torch.channels_last).train()
        nets[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4))

    def step(name):
        m, opt = nets[name]
        x0 = torch.rand(64, 3, 32, 32).mul_(2).sub_(1).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        loss = diffusion_loss(m, x0, torch.randint(0, 11, (64,)), torch.randint(0, 1000, (64,)),
                              torch.randn_like(x0), ac, 5.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times = {n: [] for n in nets}
    for i in range(2 + a.steps):  # interleaved: every preset once per round
        for n in nets:
            dt = step(n)
            if i >= 2:
                times[n].append(dt)
    shipped = next(n for n, over in UNET_PRESETS.items() if not over)
    base = statistics.median(times[shipped])
    out = {n: {"params": sum(q.numel() for q in nets[n][0].parameters()),
               "s_per_it_median": round(statistics.median(ts), 3),
               "s_per_it_range": [round(min(ts), 3), round(max(ts), 3)],
               "ratio_to_shipped": round(statistics.median(ts) / base, 3)} for n, ts in times.items()}
    print(json.dumps({"threads": a.threads, "batch": 64, "shipped": shipped, "presets": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
