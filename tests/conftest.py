"""Shared fixtures for the sampling-engine tests.

The machines these run on have 2 cores shared with other jobs; torch's intra-op
thread pool thrashes under that contention (its threads spin-wait for each other),
so the engine tests run single-threaded (``one_thread``; the setting is restored
after each test, so other suites keep theirs).
"""
from __future__ import annotations

import os

# Ray turns 127.0.0.1 into the machine's network address unless told it is not forming a cluster; the tests'
# Ray instance (and every process it starts) must stay on loopback. Set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import contextlib
import json
from pathlib import Path

import pytest
import torch

from studio.core import engine
from studio.core.gmm import GaussianMixtureModel


@pytest.fixture(autouse=True, scope="session")
def private_user_cache(tmp_path_factory):
    """Digests and the window's log go to a temporary cache folder, not the user's (inherited by subprocesses)."""
    import os

    old = os.environ.get("STUDIO_CACHE_DIR")
    os.environ["STUDIO_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        os.environ.pop("STUDIO_CACHE_DIR", None)
    else:
        os.environ["STUDIO_CACHE_DIR"] = old


@contextlib.contextmanager
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def gmm() -> GaussianMixtureModel:
    """The built-in exact 16×16×3 Gaussian mixture (π = .4/.3/.2/.1, s = .10/.15/.20/.10)."""
    return GaussianMixtureModel()


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
