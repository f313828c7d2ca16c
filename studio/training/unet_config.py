"""Configuration of the shipped class-conditional digits model.

UNet: diffusers ``UNet2DModel``, 32x32 RGB, epsilon prediction, class
conditioning through ``num_class_embeds=11`` (classes 0-9 are the digits,
index 10 is the *null* class used for classifier-free guidance).

Scheduler: DDPM, 1000 steps, linear betas 1e-4 .. 0.02, ``clip_sample=True``.
"""

from __future__ import annotations

import copy

NUM_CLASSES = 10
NULL_CLASS = 10
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02

# The shipped model's UNet: small enough to train within the built-in model's time budget on a
# 2-core CPU (its card, assets/models/digits/README.md, gives the run).
UNET_CONFIG: dict = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (24, 48, 96),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": 24,  # used by the mid-block self-attention at 8x8
    "norm_num_groups": 8,
    "num_class_embeds": NUM_CLASSES + 1,
    "dropout": 0.0,
}

# A wider UNet (2.5 M parameters), preset c32-64-128; the card compares it with the shipped one.
C32_64_128: dict = {"block_out_channels": (32, 64, 128), "norm_num_groups": 16, "attention_head_dim": 32}

# Named presets for ``studio train diffusion --unet NAME`` (overrides of UNET_CONFIG).
UNET_PRESETS: dict[str, dict] = {
    "c24-48-96": {},
    "c32-64-128": dict(C32_64_128),
    "c32-64-64": {**C32_64_128, "block_out_channels": (32, 64, 64)},
}

# Tiny config used by the tests.
TINY_UNET_CONFIG: dict = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
    "num_class_embeds": NUM_CLASSES + 1,
}

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "variance_type": "fixed_small",
}


def unet_config(overrides: dict | None = None) -> dict:
    cfg = copy.deepcopy(UNET_CONFIG)
    if overrides:
        cfg.update(copy.deepcopy(overrides))
    return cfg


def make_unet(config: dict | None = None):
    from diffusers import UNet2DModel

    cfg = copy.deepcopy(config if config is not None else UNET_CONFIG)
    for k in ("block_out_channels", "down_block_types", "up_block_types"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    return UNet2DModel(**cfg)


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def alphas_cumprod():
    """float64 torch tensor (1000,) of cumulative alphas for the linear schedule."""
    import torch

    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
