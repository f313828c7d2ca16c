"""Training the noise-aware digit classifier for classifier guidance.

The network (``NoiseAwareClassifier``) and its loader live in ``studio.core.classifier_net``, which
the sampling engine uses; this module trains one on noisy digits (same linear beta schedule as the
diffusion model) and saves it as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

# the network and its loader (re-exported: the evaluator and older callers import them from here)
from ..core.classifier_net import NoiseAwareClassifier, load_classifier, load_module, timestep_embedding  # noqa: F401
from . import ckpt as C
from ..data.digits import load_cached, to_float
from .unet_config import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, alphas_cumprod

ProgressFn = Callable[[int, int, float, float], None]

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


def train_loop(model: nn.Module, out_dir, steps: int, batch_size: int, seed: int, lr: float,
               loss_fn, checkpoint_every: int, resume: bool, progress: ProgressFn | None,
               time_limit_s: float | None, warmup_steps: int, weight_decay: float,
               extra_state: dict, log_every: int = 10, keep_checkpoints: int = 2,
               fit_to_time: bool = True):
    """Generic resumable AdamW/cosine loop. ``loss_fn(model, rng, gen) -> loss tensor``.

    With ``time_limit_s`` and ``fit_to_time``, the total number of steps is reduced
    after 20 steps (from the measured s/it) so the cosine schedule finishes in time."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    start_step, train_seconds = 0, 0.0
    ck = C.latest_checkpoint(out_dir) if resume else None
    if ck is not None:
        st = C.restore_checkpoint(ck, {"model": model}, opt, rng, gen)
        start_step = int(st["step"])
        train_seconds = float(st.get("train_seconds", 0.0))
        steps = C.resumed_steps(st, steps)  # keep the schedule the first invocation fitted
    log = C.LossLog(out_dir / "loss.csv", ["step", "loss", "lr", "train_seconds", "s_per_it"],
                    start_step if ck is not None else None)
    fitted_from = None

    def save(step):
        p = C.write_checkpoint(out_dir, step, {"model.safetensors": model.state_dict()}, opt,
                               {"numpy_rng": C.numpy_rng_state(rng), "train_seconds": train_seconds,
                                "seed": seed, "batch_size": batch_size, "lr": lr,
                                "config": model.config, "fitted_from": fitted_from,
                                "fitted_total": steps if fitted_from else None, **extra_state},
                               keep=keep_checkpoints)
        save_file({"torch_generator": gen.get_state()}, str(p / "rng.safetensors"))
        return p

    model.train()
    step = start_step
    t_start = time.time()
    recent: list[tuple[float, float]] = []
    stopped_early = False
    while step < steps:
        if C.out_of_time(t_start, time_limit_s):
            stopped_early = True
            break
        t0 = time.time()
        cur = C.cosine_lr(step, steps, lr, warmup_steps)
        C.set_lr(opt, cur)
        loss = loss_fn(model, rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        dt = time.time() - t0
        train_seconds += dt
        recent.append((loss.item(), dt))
        recent = recent[-50:]
        spi = sum(r[1] for r in recent) / len(recent)
        lmean = sum(r[0] for r in recent[-log_every:]) / len(recent[-log_every:])
        if step % log_every == 0 or step == steps:
            log.write(step=step, loss=f"{lmean:.6f}", lr=f"{cur:.3g}",
                      train_seconds=f"{train_seconds:.1f}", s_per_it=f"{spi:.4f}")
        if progress is not None:
            progress(step, steps, lmean, spi * (steps - step))
        if (fit_to_time and time_limit_s is not None and step == start_step + 20
                and step < steps):
            # shrink the schedule so that the cosine decay completes inside the limit
            new_total = C.fit_steps_to_time(step, steps, spi, time_limit_s - (time.time() - t_start))
            if new_total < steps:
                fitted_from, steps = steps, new_total
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save(step)
    log.close()
    final = save(step) if (step > start_step or ck is None) else ck
    model.eval()
    return {"step": step, "target_steps": steps, "stopped_early": stopped_early,
            "steps_reduced_to_fit_time_limit_from": fitted_from,
            "train_seconds_total": round(train_seconds, 1),
            "s_per_it_mean": round(train_seconds / step, 4) if step else None,
            "recent_loss_mean": (sum(r[0] for r in recent) / len(recent)) if recent else None,
            "checkpoint": str(final)}


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


def train_classifier(out_dir, steps: int = 3000, batch_size: int = 128, seed: int = 1,
                     lr: float = 1e-3, checkpoint_every: int = 300, resume: bool = True,
                     progress: ProgressFn | None = None, dataset_cache=None,
                     dataset_n: int = 60000, dataset_seed: int = 0, model_config: dict | None = None,
                     time_limit_s: float | None = None, warmup_steps: int = 100,
                     weight_decay: float = 1e-4, eval_n: int = 2000, eval_seed: int = 1001,
                     export: bool = True) -> dict:
    """Train the noise-aware classifier; exports to ``out_dir/final`` (config.json +
    model.safetensors) and writes ``out_dir/summary.json`` with noisy accuracy per t-range."""
    out_dir = Path(out_dir)
    images, labels = load_cached(dataset_cache, dataset_n, dataset_seed)
    torch.manual_seed(seed)
    schedule = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_start": BETA_START, "beta_end": BETA_END}
    model = NoiseAwareClassifier(**{**schedule, **(model_config or CLASSIFIER_DEFAULT)})
    ac = alphas_cumprod().float()
    T = ac.shape[0]

    def loss_fn(m, rng, gen):
        idx = rng.integers(0, images.shape[0], size=batch_size)
        x0 = to_float(images[idx])
        y = torch.from_numpy(labels[idx].copy())
        t = torch.randint(0, T, (batch_size,), generator=gen)
        xt = noisy_batch(x0, t, torch.randn(x0.shape, generator=gen), ac)
        return F.cross_entropy(m(xt, t.float()), y)

    summary = train_loop(model, out_dir, steps, batch_size, seed, lr, loss_fn, checkpoint_every,
                         resume, progress, time_limit_s, warmup_steps, weight_decay,
                         {"dataset_n": dataset_n, "dataset_seed": dataset_seed})
    if eval_n:
        ev_images, ev_labels = load_cached(dataset_cache, eval_n, eval_seed)
        summary["noisy_accuracy"] = noisy_accuracy(model, ev_images, ev_labels)
        summary["eval"] = {"n": eval_n, "dataset_seed": eval_seed}
    summary["params"] = sum(p.numel() for p in model.parameters())
    if export:
        save_classifier(model, out_dir / "final",
                        {"noisy_accuracy": summary.get("noisy_accuracy"), "train_steps": summary["step"]})
        summary["export"] = str(out_dir / "final")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
