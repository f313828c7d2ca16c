"""Training of the ``digits-text`` autoencoder (diffusers ``AutoencoderKL``) on CPU.

The first stage of latent diffusion (Rombach et al. 2022, Sec. 3): an encoder to a
Gaussian posterior q(z|x) over 8x8x4 latents, a decoder back to 32x32 RGB. Loss per batch:
``L1 + MSE`` between the input and the decoding of a posterior sample, plus ``kl_weight``
times KL(q(z|x) || N(0, I)) (summed over latent elements, averaged over the batch) – the
small KL weight of SD's KL-f8 autoencoder (1e-6) keeps the latent close to a smooth,
roughly standard space without blurring. (SD adds a perceptual and an adversarial loss;
at 32x32 with flat colours a pixel loss is enough.)

Checkpoints, EMA-free (the decoder is used as trained), cosine learning rate kept fitted to
``time_limit_s`` (``ckpt.TimeFittedTotal``), export to ``out_dir/final`` (``save_pretrained``).

``decoder_only=True`` with ``init_from`` fine-tunes only the decoder (and ``post_quant_conv``)
of a trained autoencoder, the encoder frozen, so the latent space – and any diffusion model
already trained in it – stays valid; Stable Diffusion's improved VAEs (``sd-vae-ft-mse``)
were made the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from . import ckpt as C
from ..data.captions import load_cached_captioned
from ..data.digits import grid, to_float, to_uint8
from ..evaluation.text_eval import border_mask
from .text_model import VAE_CONFIG, make_vae

ProgressFn = Callable[[int, int, float, float], None]


STROKE_THRESHOLD = 0.25  # RGB distance from the background (in [-1, 1] units) that marks a stroke pixel


def stroke_mask(x: torch.Tensor, threshold: float = STROKE_THRESHOLD) -> torch.Tensor:
    """1 where a pixel of ``x`` (N, 3, H, W) in [-1, 1] is drawn, 0 on the background, (N, 1, H, W).

    The background is each image's per-channel median of its border pixels
    (``text_eval.border_mask``, where the colour reader takes it from); a pixel is drawn if its
    RGB distance from it exceeds ``threshold``."""
    border = x[:, :, torch.from_numpy(border_mask(*x.shape[2:]))]  # (N, 3, border pixels)
    bg = border.median(dim=2).values[:, :, None, None]
    return ((x - bg).norm(dim=1, keepdim=True) > threshold).to(x.dtype)


def vae_loss(vae, x: torch.Tensor, gen: torch.Generator, kl_weight: float,
             decoder_only: bool = False, stroke_weight: float = 0.0) -> tuple[torch.Tensor, float]:
    """(loss, reconstruction MSE) for a batch ``x`` in [-1, 1] (no KL term when only the
    decoder trains: the posterior is fixed).

    ``stroke_weight`` > 0 weighs the L1 + MSE of the drawn pixels (:func:`stroke_mask`) by
    ``1 + stroke_weight``: a digit covers a small part of the image, so a plain pixel loss
    spends most of its weight on the flat background and little on thin strokes."""
    with torch.set_grad_enabled(not decoder_only):
        post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    mse = F.mse_loss(rec, x)
    if stroke_weight:
        w = 1.0 + stroke_weight * stroke_mask(x)
        err = rec - x
        loss = (w * err.abs()).mean() + (w * err.square()).mean()
    else:
        loss = F.l1_loss(rec, x) + mse
    if not decoder_only:
        loss = loss + kl_weight * post.kl().mean()
    return loss, mse.item()


def train_vae(out_dir, steps: int = 3000, batch_size: int = 64, seed: int = 0, lr: float = 1e-3,
              kl_weight: float = 1e-6, checkpoint_every: int = 250, resume: bool = True,
              progress: ProgressFn | None = None, dataset_cache=None, dataset_n: int = 50000,
              dataset_seed: int = 0, vae_config: dict | None = None, warmup_steps: int = 100,
              time_limit_s: float | None = None, log_every: int = 10, export: bool = True,
              grad_clip: float = 1.0, init_from=None, decoder_only: bool = False,
              stroke_weight: float = 0.0) -> dict:
    """Train (or resume) and export to ``out_dir/final``; returns (and writes) a summary."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(vae_config or VAE_CONFIG))
    t_setup = time.time()
    images, _ = load_cached_captioned(dataset_cache, dataset_n, dataset_seed, "train")
    val = images[-16:]
    data_s = time.time() - t_setup

    torch.manual_seed(seed)
    if init_from is not None:
        from diffusers import AutoencoderKL

        from ..core.text_model import quiet_libraries

        with quiet_libraries():  # diffusers' advice to install accelerate
            vae = AutoencoderKL.from_pretrained(str(init_from))
        cfg = json.loads(json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")}))
    elif decoder_only:
        raise ValueError("decoder_only needs init_from: a trained autoencoder folder")
    else:
        vae = make_vae(cfg)
    vae.train()
    params = list(vae.parameters())
    if decoder_only:
        for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
            p.requires_grad_(False)
        vae.encoder.eval()
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    start_step, train_seconds = 0, 0.0
    asked = steps  # a time limit may shorten the schedule; checkpoints record from what
    ck = C.latest_checkpoint(out_dir) if resume else None
    if ck is not None:
        st = C.restore_checkpoint(ck, {"vae": vae}, opt, rng, gen)
        start_step, train_seconds = int(st["step"]), float(st.get("train_seconds", 0.0))
        steps = C.resumed_steps(st, steps)
    fitted_from = asked if steps < asked else None
    log = C.LossLog(out_dir / "loss.csv", ["step", "loss", "mse", "lr", "train_seconds", "s_per_it"],
                    start_step if ck is not None else None)

    def save(step: int) -> Path:
        with torch.no_grad():
            vae.eval()
            rec = vae.decode(vae.encode(to_float(val)).latent_dist.mean).sample
            vae.train()
            if decoder_only:
                vae.encoder.eval()
        grid(np.concatenate([val, to_uint8(rec)]), nrow=16).save(out_dir / "samples" / f"step_{step:06d}.png")
        path = C.write_checkpoint(out_dir, step, {"vae.safetensors": vae.state_dict()}, opt,
                                  {"numpy_rng": C.numpy_rng_state(rng), "train_seconds": train_seconds,
                                   "vae_config": cfg, "seed": seed, "batch_size": batch_size, "lr": lr,
                                   "kl_weight": kl_weight, "dataset_n": dataset_n, "dataset_seed": dataset_seed,
                                   "fitted_from": fitted_from, "fitted_total": steps if fitted_from else None,
                                   "init_from": str(init_from) if init_from else None,
                                   "decoder_only": decoder_only, "stroke_weight": stroke_weight})
        save_file({"torch_generator": gen.get_state()}, str(path / "rng.safetensors"))
        return path

    step, t_start = start_step, time.time()
    fit = C.TimeFittedTotal(steps, time_limit_s, t_start, start_step) if time_limit_s is not None else None
    recent: list[tuple[float, float, float]] = []
    stopped_early = False
    while step < steps:
        if C.out_of_time(t_start, time_limit_s):
            stopped_early = True
            break
        t0 = time.time()
        cur_lr = C.cosine_lr(step, steps, lr, warmup_steps)
        C.set_lr(opt, cur_lr)
        x = to_float(images[rng.integers(0, len(images), size=batch_size)])
        loss, mse = vae_loss(vae, x, gen, kl_weight, decoder_only, stroke_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        step += 1
        dt = time.time() - t0
        train_seconds += dt
        recent = (recent + [(loss.item(), mse, dt)])[-50:]
        mean_loss = sum(r[0] for r in recent[-log_every:]) / len(recent[-log_every:])
        spi = sum(r[2] for r in recent) / len(recent)
        if step % log_every == 0 or step == steps:
            log.write(step=step, loss=f"{mean_loss:.6f}",
                      mse=f"{sum(r[1] for r in recent[-log_every:]) / len(recent[-log_every:]):.6f}",
                      lr=f"{cur_lr:.3g}", train_seconds=f"{train_seconds:.1f}", s_per_it=f"{spi:.4f}")
        if progress is not None:
            progress(step, steps, mean_loss, spi * (steps - step))
        if fit is not None:
            steps = fit.update(step, time.time())
            fitted_from = asked if steps < asked else None
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save(step)
    log.close()
    final_ckpt = save(step) if (step > start_step or ck is None) else ck
    summary = {"step": step, "target_steps": steps, "stopped_early": stopped_early,
               "train_seconds_total": round(train_seconds, 1),
               "s_per_it_mean": round(train_seconds / max(1, step), 4),
               "recent_loss_mean": (sum(r[0] for r in recent) / len(recent)) if recent else None,
               "recent_mse_mean": (sum(r[1] for r in recent) / len(recent)) if recent else None,
               "dataset_seconds": round(data_s, 1), "vae_config": cfg, "batch_size": batch_size,
               "lr": lr, "kl_weight": kl_weight, "init_from": str(init_from) if init_from else None,
               "decoder_only": decoder_only, "stroke_weight": stroke_weight,
               "steps_reduced_to_fit_time_limit_from": fitted_from,
               "checkpoint": str(final_ckpt)}
    if export:
        vae.eval()
        vae.save_pretrained(str(out_dir / "final"), safe_serialization=True)
        summary["export"] = str(out_dir / "final")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
