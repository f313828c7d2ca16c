"""Helpers the tests share (not fixtures): tiny diffusers UNets, saved model folders, runs to the end,
and ``one_fast_case`` for parametrized tests whose cases each cost a process or a model.

Tests import these from here; fixtures live in conftest.py. The machines these run on have 2 cores
shared with other jobs; torch's intra-op thread pool thrashes under that contention (its threads
spin-wait for each other), so engine work here runs single-threaded (``single_thread``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from studio.core import engine


def one_fast_case(cases: list) -> list:
    """Parametrize ``cases`` with all but the first marked ``slow``: the fast lane (``-m "not slow"``) tries
    one case, CI tries them all. A case is a tuple of arguments (several argnames) or one value (one argname)."""
    return [case if i == 0 else pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
            for i, case in enumerate(cases)]


@contextlib.contextmanager
def single_thread():
    """torch on one intra-op thread inside the block, restored after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def final_x(model, sampler: str, steps: int, **kw) -> torch.Tensor:
    """Run a chain to the end keeping only the last state (records of big batches are large)."""
    last = None
    with single_thread():
        for rec in engine.sample(model, sampler, steps, **kw):
            last = rec
    return last.x


# -- tiny diffusers UNets ----------------------------------------------------
def make_unet(num_class_embeds: int | None = None, sample_size: int = 8, seed: int = 0):
    """A tiny diffusers UNet2DModel (≈165k parameters), initialised reproducibly."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    )


# A short linear schedule (β up to 0.006, so √ᾱ_T ≈ 0.22 instead of 0.006). With the usual β_end = 0.02 the
# ε → x̂₀ conversion at t ≈ T divides the network's ε error by √ᾱ_T ≈ 0.006: a briefly trained tiny UNet
# (ε-MSE ≈ 0.03) then predicts |x̂₀| ≈ 25–50 at the first step, never recovers, and runs end at |x| ≈ 30–80
# (measured), where float32 rounding alone is ~1e-5. With this schedule runs end at |x| ≈ 3.
TINY_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.006)


def train_tiny_unet(unet, steps: int = 200, seed: int = 0):
    """Teach a tiny UNet to denoise 4 fixed 8×8 ±0.8 patterns (ε-prediction, ``TINY_SCHEDULE``), so that
    sampling trajectories stay O(1) and float32 agreement at 1e-4 is meaningful (~13 s on one core)."""
    with single_thread():
        return _train(unet, steps, seed)


def _train(unet, steps, seed):
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = unet.config.sample_size
    pats = torch.sign(torch.rand(4, 3, size, size, generator=g) * 2 - 1) * 0.8
    ac = DDPMScheduler(**TINY_SCHEDULE).alphas_cumprod
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    unet.train()
    for _ in range(steps):
        k = torch.randint(0, 4, (64,), generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        eps = torch.randn(64, 3, size, size, generator=g)
        a = ac[t].sqrt().view(-1, 1, 1, 1)
        b = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
        loss = ((unet(a * pats[k] + b * eps, t).sample - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    return unet, float(loss.detach())


def save_model_folder(unet, folder: Path, scheduler_config: dict | None = None, class_names=None,
                      layout: str = "flat") -> Path:
    """Save like diffusers does: config.json + diffusion_pytorch_model.safetensors (+ scheduler_config.json)."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    unet_dir = folder / "unet" if layout == "pipeline" else folder
    unet.save_pretrained(unet_dir, safe_serialization=True)
    sched = DDPMScheduler(**(scheduler_config or {}))
    sched.save_pretrained(folder / "scheduler" if layout == "pipeline" else folder)
    if class_names is not None:
        (folder / "class_names.json").write_text(json.dumps(class_names))
    return folder
