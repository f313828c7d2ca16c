"""DDPM (epsilon-prediction) training of the class-conditional digits UNet on CPU.

* MSE between predicted and true noise at uniformly random t in [0, 1000) (Ho et al. 2020,
  eq. 14), each sample's weighted by Min-SNR-γ (Hang et al. 2023) unless ``snr_gamma`` is None.
* Labels are replaced by the null class (10) with probability ``p_uncond`` so the
  same network serves as conditional and unconditional model (CFG).
* The loop, its schedule, checkpoints and resume are :func:`studio.training.fit.fit`'s; the
  recipe is :class:`DiffusionConfig`, whose defaults are the shipped model's.
* ``out_dir/samples/step_XXXXXX.png`` is a grid (rows = classes 0..9) made from the EMA
  weights with a built-in 25-step DDIM loop, CFG w=3, every ``grid_every`` steps and at the end.
* At the end the EMA weights are exported to ``out_dir/final`` in diffusers
  layout (``UNet2DModel.save_pretrained`` + ``scheduler_config.json``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from . import ckpt as C
from ..core.options import Option
from ..data.digits import grid, load_cached, to_float, to_uint8
from .fit import Clock, ProgressFn, Trainee, fit
from .settings import (EMA_DECAY, GRID_EVERY, GRID_STEPS, LR, NETWORK, P_UNCOND, SEED, STEPS, WARMUP_STEPS,
                       DataConfig, min_snr_setting, setting)
from .unet_config import NULL_CLASS, UNET_PRESETS, alphas_cumprod, make_scheduler, make_unet, unet_config


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def ddim_cfg_sample(model, labels: torch.Tensor, steps: int = 25, guidance: float = 3.0,
                    seed: int = 0, null_class: int = NULL_CLASS) -> torch.Tensor:
    """Deterministic DDIM (eta=0) with classifier-free guidance. Returns x0 in [-1, 1]."""
    ac = alphas_cumprod().float()
    T = ac.shape[0]
    g = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    size = model.config.sample_size
    x = torch.randn(n, model.config.in_channels, size, size, generator=g)
    ts = np.linspace(T - 1, 0, steps).round().astype(np.int64)
    was_training = model.training
    model.eval()
    null = torch.full_like(labels, null_class)
    for i, t in enumerate(ts):
        a = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        tt = torch.full((n,), int(t), dtype=torch.long)
        if guidance == 1.0:
            eps = model(x, tt, class_labels=labels).sample
        else:
            out = model(torch.cat([x, x]), torch.cat([tt, tt]),
                        class_labels=torch.cat([labels, null])).sample
            e_c, e_u = out.chunk(2)
            eps = e_u + guidance * (e_c - e_u)
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    model.train(was_training)
    return x.clamp(-1, 1)


def sample_grid(model, per_class: int = 8, steps: int = 25, guidance: float = 3.0, seed: int = 0):
    """PIL grid: one row per class 0..9, ``per_class`` samples per row."""
    labels = torch.arange(10).repeat_interleave(per_class)
    x = ddim_cfg_sample(model, labels, steps=steps, guidance=guidance, seed=seed)
    return grid(to_uint8(x), nrow=per_class)


# ----------------------------------------------------------------------------- loss
def min_snr_weights(abar: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample weights for Min-SNR-γ (Hang et al. 2023, eq. 9): the x₀-MSE weight min(SNR, γ)
    expressed for the loss actually computed, with ``SNR = ᾱ / (1 - ᾱ)``: ``min(SNR, γ) / SNR``
    for the ε-MSE (1 at high noise, < 1 where SNR > γ), ``min(SNR, γ) / (SNR + 1)`` for the v-MSE
    (finite at SNR 0, where a zero-terminal-SNR schedule ends)."""
    snr = abar / (1 - abar)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def diffusion_loss(model, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, ac: torch.Tensor, snr_gamma: float | None = None) -> torch.Tensor:
    """ε-prediction MSE (Ho et al. 2020, eq. 14); with ``snr_gamma`` each sample's MSE is
    weighted by :func:`min_snr_weights`."""
    a = ac[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = model(xt, t, class_labels=labels).sample
    if snr_gamma is None:
        return F.mse_loss(pred, noise)
    per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
    return (min_snr_weights(ac[t], snr_gamma) * per_sample).mean()


@torch.no_grad()
def fixed_batch_loss(model, x0: torch.Tensor, labels: torch.Tensor, seed: int = 1234) -> float:
    """Loss on a fixed batch with fixed t/noise (deterministic; for tests/monitoring)."""
    g = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod().float()
    t = torch.randint(0, ac.shape[0], (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    was = model.training
    model.eval()
    loss = diffusion_loss(model, x0, labels, t, noise, ac).item()
    model.train(was)
    return loss


# ----------------------------------------------------------------------------- export
def export_diffusers(model_or_state, out: Path, unet_config: dict | None = None) -> Path:
    """Write a diffusers folder (config.json, diffusion_pytorch_model.safetensors,
    scheduler_config.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model_or_state, dict):
        model = make_unet(unet_config)
        model.load_state_dict(model_or_state)
    else:
        model = model_or_state
    model.save_pretrained(str(out), safe_serialization=True)
    make_scheduler().save_pretrained(str(out))
    return out


def export_checkpoint(ckpt_dir: Path, out: Path, which: str = "ema") -> Path:
    """Export the EMA (or raw) weights of a checkpoint dir in diffusers layout."""
    ckpt_dir = Path(ckpt_dir)
    state = C.read_state(ckpt_dir)
    sd = load_file(str(ckpt_dir / f"{which}.safetensors"))
    return export_diffusers(sd, out, state["unet_config"])


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class DiffusionConfig(DataConfig):
    """The shipped model's recipe (assets/models/digits/README.md): its run asked for 20,000 steps
    under a 56-minute limit, which fitted them to 4,371."""

    steps: int = setting(STEPS, 4371)
    seed: int = setting(SEED, 0)
    lr: float = setting(LR, 1.2e-3)
    warmup_steps: int = setting(WARMUP_STEPS, 200)
    ema_decay: float = setting(EMA_DECAY, 0.999)
    p_uncond: float = setting(P_UNCOND, 0.1)
    snr_gamma: Optional[float] = min_snr_setting(5.0)
    unet: str = setting(Option(default="c24-48-96", kind="choice", choices=tuple(UNET_PRESETS),
                               help="UNet size preset (c24-48-96: the shipped one)"))
    unet_config: Optional[dict] = setting(NETWORK, None)  # a whole configuration, in place of the preset
    grid_every: Optional[int] = setting(GRID_EVERY, 1000)
    grid_per_class: int = setting(Option(kind="int", low=1, help="samples per digit (row) of the sample grids"), 8)
    grid_steps: int = setting(GRID_STEPS, 25)


def train_diffusion(out_dir, config: DiffusionConfig | None = None, *, progress: ProgressFn | None = None,
                    clock: Clock = time.monotonic, **settings) -> dict:
    """Train (or resume) the digits UNet by ``config`` (default: the shipped recipe) with
    ``settings`` (fields of :class:`DiffusionConfig`) changed, and export its EMA weights to
    ``out_dir/final``. Returns a summary dict (also written to ``out_dir/summary.json``).
    ``time_limit_s`` stops early (with a checkpoint and the export) once this much wall time has
    been spent in *this* invocation."""
    cfg = DiffusionConfig.make(config, **settings)
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    unet_cfg = cfg.unet_config if cfg.unet_config is not None else unet_config(UNET_PRESETS[cfg.unet])
    unet_cfg = json.loads(json.dumps(unet_cfg))  # tuples -> lists, JSON-safe

    t_setup = clock()
    images, labels = load_cached(cfg.dataset_cache, cfg.dataset_n, cfg.dataset_seed)
    data_s = clock() - t_setup

    torch.manual_seed(cfg.seed)
    # channels_last: faster training steps on the CPU than the default layout (torch.compile was slower)
    model = make_unet(unet_cfg).to(memory_format=torch.channels_last)
    model.train()
    ema = C.EMA(model, cfg.ema_decay)
    ac = alphas_cumprod().float()
    n = cfg.batch_size

    def loss(rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(0, images.shape[0], size=n)
        x0 = to_float(images[idx]).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels[idx].copy())
        drop = torch.from_numpy(rng.random(n) < cfg.p_uncond)
        y = torch.where(drop, torch.full_like(y, NULL_CLASS), y)
        t = torch.randint(0, ac.shape[0], (n,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen).contiguous(memory_format=torch.channels_last)
        return diffusion_loss(model, x0, y, t, noise, ac, cfg.snr_gamma)

    def grid(step: int) -> Path:
        ema_model = make_unet(unet_cfg)
        ema.copy_to(ema_model)
        path = out_dir / "samples" / f"step_{step:06d}.png"
        sample_grid(ema_model, per_class=cfg.grid_per_class, steps=cfg.grid_steps, seed=0).save(path)
        return path

    trainee = Trainee(params=list(model.parameters()), loss=loss, saved={"model": model, "ema": ema},
                      averages=[(ema, model)], state={**cfg.recipe(), "unet_config": unet_cfg},
                      grid=grid, grid_every=cfg.grid_every)
    summary = {**fit(out_dir, trainee, cfg, progress, clock), **trainee.state, "dataset_seconds": round(data_s, 1)}
    if cfg.export:
        summary["export"] = str(export_checkpoint(summary["checkpoint"], out_dir / "final", "ema"))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
