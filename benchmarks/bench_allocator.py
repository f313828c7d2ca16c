"""The allocator tuning (studio/runtime.py): steps with and without it, in fresh processes.

mallopt settings are process-wide and cannot be undone cleanly, so each measurement is a fresh
Python process (``STUDIO_MALLOC_TUNING=0`` or ``1``), alternated A B A B …; each process warms up,
then times its steps and counts minor page faults and kernel time with getrusage. Workloads: the
digits UNet's bare forward loop (batch 8), the studio's ddim loop on it, and one training step of
the shipped recipe (batch 64, AdamW, channels-last), tuned as ``studio train`` tunes it
(``TRAIN_MMAP_MB``; until 2026-12-02 this row used the window's 32 MB thresholds by mistake).

    python -m benchmarks.bench_allocator [--pairs N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = {"forward": 20, "studio": 20, "train": 4}  # timed steps per process


def _child(workload: str) -> dict:
    import resource
    import time

    from studio.runtime import TRAIN_MMAP_MB, own_process

    # as each entry point does: `studio train` raises both thresholds further than the window and CLI
    applied = own_process(TRAIN_MMAP_MB, TRAIN_MMAP_MB) if workload == "train" else own_process()
    import torch

    from benchmarks.bench_engine import bare_loop, digits_like_unet, studio_loop, wrap

    n = WORKLOADS[workload]
    if workload == "train":
        from studio.training.diffusion import diffusion_loss
        from studio.training.unet_config import UNET_CONFIG, alphas_cumprod, make_unet

        torch.manual_seed(0)
        net = make_unet(dict(UNET_CONFIG)).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        ac = alphas_cumprod().float()

        def step():
            x0 = torch.rand(64, 3, 32, 32).mul_(2).sub_(1).contiguous(memory_format=torch.channels_last)
            noise = torch.randn_like(x0)
            loss = diffusion_loss(net, x0, torch.randint(0, 11, (64,)), torch.randint(0, 1000, (64,)), noise, ac)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def fn():
            for _ in range(n):
                step()
    else:
        unet = digits_like_unet().eval()
        model = wrap(unet, "cpu")
        fn = bare_loop(unet, 8, n, "cpu", label=model.info.null_label) if workload == "forward" \
            else studio_loop(model, 8, n)
    fn()  # warm-up
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "ms_per_step": wall / n * 1e3, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / n,
            "sys_ms_per_step": (r1.ru_stime - r0.ru_stime) / n * 1e3}


def _measure(workload: str, tuned: bool) -> dict:
    env = dict(os.environ, STUDIO_MALLOC_TUNING="1" if tuned else "0")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_allocator", "--child", workload], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, pairs: int | None = None) -> dict:
    pairs = pairs or (2 if quick else 5)
    res = {}
    for workload in WORKLOADS:
        plain, tuned = [], []
        for _ in range(pairs):
            plain.append(_measure(workload, False))
            tuned.append(_measure(workload, True))
        assert all(t["applied"] for t in tuned) and not any(p["applied"] for p in plain)
        med = statistics.median
        ratios = [t["ms_per_step"] / p["ms_per_step"] for p, t in zip(plain, tuned)]
        res[workload] = {
            "pairs": pairs,
            "plain_ms": med(p["ms_per_step"] for p in plain), "tuned_ms": med(t["ms_per_step"] for t in tuned),
            "ratio": med(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "plain_faults": med(p["faults_per_step"] for p in plain),
            "tuned_faults": med(t["faults_per_step"] for t in tuned),
            "plain_sys_ms": med(p["sys_ms_per_step"] for p in plain),
            "tuned_sys_ms": med(t["sys_ms_per_step"] for t in tuned),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=WORKLOADS)
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    print(json.dumps(run(args.quick, args.pairs), indent=1))


if __name__ == "__main__":
    main()
