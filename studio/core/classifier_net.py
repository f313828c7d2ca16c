"""The noise-aware classifier network used by classifier guidance, and its loader.

``NoiseAwareClassifier(x_t, t)`` predicts the class of a *noisy* image
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (VP scale, the linear beta schedule it was
trained with, kept in its config) at timestep ``t`` (float; fractional values are allowed because
the timestep embedding is sinusoidal). Classifier guidance uses ∇ log p(y | x_t) (docs/maths.md,
"Classifier guidance"). The trainer is ``studio.training.classifier``.

Saved as ``config.json`` + ``model.safetensors``; :func:`load_classifier` validates both and raises
``ValueError`` with a one-line message naming the file and the problem.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import check_state_dict, load_weights


# ----------------------------------------------------------------------------- model
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class NoiseAwareClassifier(nn.Module):
    """Small time-conditioned ResNet: logits (B, num_classes) for noisy x_t at timestep t."""

    CLASS_NAME = "NoiseAwareClassifier"

    def __init__(self, in_channels: int = 3, base_channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 4), num_res_blocks: int = 1,
                 time_embed_dim: int = 128, norm_groups: int = 8, num_classes: int = 10,
                 num_train_timesteps: int = 1000, sample_size: int = 32, beta_start: float = 1e-4,
                 beta_end: float = 0.02):
        super().__init__()
        self._config = {
            "in_channels": int(in_channels), "base_channels": int(base_channels),
            "channel_mult": [int(m) for m in channel_mult], "num_res_blocks": int(num_res_blocks),
            "time_embed_dim": int(time_embed_dim), "norm_groups": int(norm_groups),
            "num_classes": int(num_classes), "num_train_timesteps": int(num_train_timesteps),
            "sample_size": int(sample_size),
        }
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.time_embed_dim = time_embed_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, time_embed_dim), nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim))
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        blocks = []
        downs = []
        ch = base_channels
        for i, m in enumerate(channel_mult):
            stage = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.append(_ResBlock(ch, base_channels * m, time_embed_dim, norm_groups))
                ch = base_channels * m
            blocks.append(stage)
            downs.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                         if i < len(channel_mult) - 1 else nn.Identity())
        self.blocks = nn.ModuleList(blocks)
        self.downs = nn.ModuleList(downs)
        self.out_norm = nn.GroupNorm(min(norm_groups, ch), ch)
        self.head = nn.Linear(ch, num_classes)

    @property
    def config(self) -> dict:
        return {"_class_name": self.CLASS_NAME, **json.loads(json.dumps(self._config)),
                "beta_schedule": "linear", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "input_scale": "VP: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, x0 in [-1,1]"}

    @classmethod
    def from_config(cls, config: dict) -> "NoiseAwareClassifier":
        keys = ("in_channels", "base_channels", "channel_mult", "num_res_blocks",
                "time_embed_dim", "norm_groups", "num_classes", "num_train_timesteps",
                "sample_size", "beta_start", "beta_end")
        return cls(**{k: config[k] for k in keys if k in config})

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(t, dtype=torch.float32)
        t = t.to(x_t.device).float().reshape(-1)
        if t.numel() == 1 and x_t.shape[0] != 1:
            t = t.expand(x_t.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim).to(x_t.dtype))
        h = self.stem(x_t)
        for stage, down in zip(self.blocks, self.downs):
            for blk in stage:
                h = blk(h, emb)
            h = down(h)
        h = F.silu(self.out_norm(h)).mean(dim=(2, 3))
        return self.head(h)


# ----------------------------------------------------------------------------- load
def load_module(directory, cls):
    """Validate and load a module saved by :func:`save_module`. Raises ``ValueError``."""
    d = Path(directory)
    cfg_path = d / "config.json"
    w_path = d / "model.safetensors"
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: file not found")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: malformed JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    if cfg.get("_class_name") != cls.CLASS_NAME:
        raise ValueError(f"{cfg_path}: _class_name is {cfg.get('_class_name')!r}, "
                         f"expected {cls.CLASS_NAME!r}")
    try:
        model = cls.from_config(cfg)
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
        raise ValueError(f"{cfg_path}: invalid architecture config "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not w_path.is_file():
        raise ValueError(f"{w_path}: file not found")
    sd = load_weights(w_path)  # ModelLoadError (a ValueError) names the file and the problem
    check_state_dict(w_path, model, sd)
    expected = model.state_dict()
    model.load_state_dict({k: sd[k].to(v.dtype) for k, v in expected.items()})
    model.eval()
    return model


def load_classifier(directory) -> NoiseAwareClassifier:
    return load_module(directory, NoiseAwareClassifier)
