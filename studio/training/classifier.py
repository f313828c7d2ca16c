"""Training the noise-aware digit classifier for classifier guidance.

The network (``NoiseAwareClassifier``) and its loader live in ``studio.core.classifier_net``, which
the sampling engine uses; this module trains one on noisy digits (same linear beta schedule as the
diffusion model) and saves it as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

# the network and its loader (re-exported: the evaluator and older callers import them from here)
from ..core.classifier_net import NoiseAwareClassifier, load_classifier, load_module, timestep_embedding  # noqa: F401
from ..core.options import Option
from . import ckpt as C
from ..data.digits import load_cached, to_float
from .fit import Clock, ProgressFn, Trainee, fit
from .settings import (BATCH_SIZE, CHECKPOINT_EVERY, HELD_OUT_SEED, KEEP_CHECKPOINTS, LR, NETWORK, SEED, STEPS,
                       WEIGHT_DECAY, DataConfig, setting)
from .unet_config import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, alphas_cumprod

T_RANGES = ((0, 100), (100, 300), (300, 500), (500, 700), (700, 900), (900, 1000))


# ----------------------------------------------------------------------------- save / load
def save_module(model: nn.Module, directory, extra: dict | None = None) -> Path:
    """Write ``directory/config.json`` (``model.config`` + ``extra``) and
    ``directory/model.safetensors``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config)
    if extra:
        cfg.update(extra)
    save_file(C.state_to_cpu(model.state_dict()), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def save_classifier(model: NoiseAwareClassifier, directory, extra: dict | None = None) -> Path:
    return save_module(model, directory, extra)


# ----------------------------------------------------------------------------- training
def noisy_batch(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, ac: torch.Tensor):
    a = ac[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def fit_and_export(out_dir, model: nn.Module, cfg: DataConfig, loss, evaluate, exported: tuple[str, ...],
                   progress: ProgressFn | None, clock: Clock) -> dict:
    """Train a digit network (the guidance classifier, the evaluator) with :func:`fit` on ``loss``,
    add ``evaluate()``'s results to the summary, and export it to ``out_dir/final`` (config.json
    with the results named in ``exported``, model.safetensors); returns (and writes) the summary."""
    out_dir = Path(out_dir)
    model.train()
    trainee = Trainee(params=list(model.parameters()), loss=loss, saved={"model": model},
                      state={**cfg.recipe(), "config": model.config})
    summary = {**fit(out_dir, trainee, cfg, progress, clock), **trainee.state}
    model.eval()
    summary.update(evaluate())
    summary["params"] = sum(p.numel() for p in model.parameters())
    if cfg.export:
        save_module(model, out_dir / "final", {**{k: summary.get(k) for k in exported}, "train_steps": summary["step"]})
        summary["export"] = str(out_dir / "final")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@torch.no_grad()
def noisy_accuracy(model: NoiseAwareClassifier, images: np.ndarray, labels: np.ndarray,
                   seed: int = 123, t_ranges=T_RANGES, batch: int = 500) -> dict:
    """Accuracy on held-out images noised at t drawn uniformly inside each range."""
    model.eval()
    ac = alphas_cumprod().float()
    g = torch.Generator().manual_seed(seed)
    res = {}
    y_all = torch.from_numpy(labels)
    for lo, hi in t_ranges:
        correct = 0
        for i in range(0, len(images), batch):
            x0 = to_float(images[i:i + batch])
            t = torch.randint(lo, hi, (x0.shape[0],), generator=g)
            xt = noisy_batch(x0, t, torch.randn(x0.shape, generator=g), ac)
            pred = model(xt, t.float()).argmax(1)
            correct += (pred == y_all[i:i + batch]).sum().item()
        res[f"{lo}-{hi - 1}"] = round(correct / len(images), 4)
    return res


CLASSIFIER_DEFAULT = {"base_channels": 32, "channel_mult": (1, 2, 4), "num_res_blocks": 1,
                      "time_embed_dim": 128, "norm_groups": 8}


@dataclass(frozen=True)
class ClassifierConfig(DataConfig):
    """The shipped guidance classifier's recipe (assets/models/digits/README.md)."""

    steps: int = setting(STEPS, 3000)
    batch_size: int = setting(BATCH_SIZE, 128)
    seed: int = setting(SEED, 1)
    lr: float = setting(LR, 1e-3)
    weight_decay: float = setting(WEIGHT_DECAY, 1e-4)
    checkpoint_every: int = setting(CHECKPOINT_EVERY, 300)
    keep_checkpoints: int = setting(KEEP_CHECKPOINTS, 2)
    model_config: Optional[dict] = setting(NETWORK, None)
    eval_n: int = setting(Option(kind="int", low=0, help="held-out images of the noisy accuracy per "
                                                         "t-range (0: no evaluation)"), 2000)
    eval_seed: int = setting(HELD_OUT_SEED, 1001)


def train_classifier(out_dir, config: ClassifierConfig | None = None, *, progress: ProgressFn | None = None,
                     clock: Clock = time.monotonic, **settings) -> dict:
    """Train the noise-aware classifier by ``config`` with ``settings`` (fields of
    :class:`ClassifierConfig`) changed; exports to ``out_dir/final`` (config.json +
    model.safetensors) and writes ``out_dir/summary.json`` with noisy accuracy per t-range."""
    cfg = ClassifierConfig.make(config, **settings)
    images, labels = load_cached(cfg.dataset_cache, cfg.dataset_n, cfg.dataset_seed)
    torch.manual_seed(cfg.seed)
    schedule = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_start": BETA_START, "beta_end": BETA_END}
    model = NoiseAwareClassifier(**{**schedule, **(cfg.model_config or CLASSIFIER_DEFAULT)})
    ac = alphas_cumprod().float()

    def loss(rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(0, images.shape[0], size=cfg.batch_size)
        x0 = to_float(images[idx])
        y = torch.from_numpy(labels[idx].copy())
        t = torch.randint(0, ac.shape[0], (cfg.batch_size,), generator=gen)
        xt = noisy_batch(x0, t, torch.randn(x0.shape, generator=gen), ac)
        return F.cross_entropy(model(xt, t.float()), y)

    def evaluate() -> dict:
        if not cfg.eval_n:
            return {}
        ev_images, ev_labels = load_cached(cfg.dataset_cache, cfg.eval_n, cfg.eval_seed)
        return {"noisy_accuracy": noisy_accuracy(model, ev_images, ev_labels),
                "eval": {"n": cfg.eval_n, "dataset_seed": cfg.eval_seed}}

    return fit_and_export(out_dir, model, cfg, loss, evaluate, ("noisy_accuracy",), progress, clock)
