"""Training of the ``digits-text`` UNet in the autoencoder's latent space, conditioned on text.

Latent diffusion (Rombach et al. 2022, eq. 2): the ε-prediction loss of Ho et al. (2020,
eq. 14) on ``z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε`` with ``z_0 = scaling_factor · z`` and
``z ~ q(z | x)`` (a fresh posterior sample each time), conditioned through cross-attention
on the last hidden states of a ``CLIPTextModel``: either one pretrained on the captions
(:mod:`text_pretrain`) and frozen, as SD freezes CLIP and Imagen (Saharia et al. 2022) T5,
or one trained from scratch together with the UNet.

* ``scaling_factor`` = 1 / std of the training latents (SD's "rescale the latent to unit
  variance", Rombach et al. Sec. G), written into the exported VAE config;
* captions are drawn anew from each image's attributes at every use (:func:`captions.caption`),
  replaced by the empty prompt with probability ``p_uncond`` so the same networks give the
  unconditional ε for classifier-free guidance (Ho & Salimans 2022);
* optional Min-SNR-γ loss weighting (Hang et al. 2023), cosine learning rate kept fitted to the
  time limit (``ckpt.TimeFittedTotal``), EMA of both networks (the EMA weights are exported), safetensors
  checkpoints with exact resume, a grid of prompts every ``grid_every`` steps;
* export: a diffusers ``StableDiffusionPipeline`` folder in ``out_dir/final``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

from . import ckpt as C
from ..data.captions import caption, full_caption, load_cached_captioned, vocabulary
from ..data.digits import grid, to_float
from .diffusion import min_snr_weights
from ..core.prediction import from_x0_eps
from ..core.text_model import quiet_libraries
from .text_model import (TEXT_CONFIG, UNET_CONFIG, alphas_cumprod, export_pipeline, make_pipeline,
                         make_text_encoder, make_unet, scheduler_config)
from .tokenizer import load_tokenizer, write_tokenizer

ProgressFn = Callable[[int, int, float, float], None]
GRID_PROMPTS = [full_caption(d, f, b) for d, f, b in (
    (7, "red", "blue"), (0, "yellow", "black"), (3, "white", "green"), (5, "blue", "white"),
    (8, "black", "orange"), (2, "purple", "yellow"), (6, "red", "white"), (4, "blue", "pink"))] + ["", "seven"]


class CachedTokenizer:
    """Memoised input ids per prompt: CLIPTokenizer's BPE runs in Python, and the caption set is
    finite, so each caption is tokenised once instead of at every step."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._cache.update(zip(missing, ids))
        return torch.stack([self._cache[p] for p in prompts])


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (float32, (N, 4, 8, 8) each)."""
    vae.eval()
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(to_float(images[i:i + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(mean: torch.Tensor, std: torch.Tensor, seed: int = 0) -> float:
    """1 / std of posterior samples of the training latents (as SD sets its 0.18215)."""
    g = torch.Generator().manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=g)
    return float(1.0 / z.std())


def text_diffusion_loss(unet, text_encoder, ids: torch.Tensor, z0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, ac: torch.Tensor, snr_gamma: float | None,
                        prediction_type: str = "epsilon") -> torch.Tensor:
    """ε-MSE (or v-MSE) of the UNet conditioned on the text encoder's hidden states (Min-SNR-γ
    weighted)."""
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    ctx = text_encoder(ids)[0]
    pred = unet(zt, t, encoder_hidden_states=ctx).sample
    target = from_x0_eps(z0, noise, a.sqrt(), (1 - a).sqrt(), prediction_type)
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        per_sample = min_snr_weights(ac[t], snr_gamma, prediction_type) * per_sample
    return per_sample.mean()


def prompt_grid(pipe, prompts: list[str], per_prompt: int = 8, steps: int = 25, guidance: float = 3.0,
                seed: int = 0):
    """PIL grid, one row per prompt, with a fixed seed per row."""
    rows = []
    for i, p in enumerate(prompts):
        g = torch.Generator().manual_seed(seed + i)
        out = pipe([p] * per_prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                   output_type="np").images
        rows.append(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
    return grid(np.concatenate(rows), nrow=per_prompt)


def train_text_diffusion(out_dir, vae_dir, steps: int = 20000, batch_size: int = 64, seed: int = 0,
                         lr: float = 1e-3, ema_decay: float = 0.999, checkpoint_every: int = 500,
                         resume: bool = True, progress: ProgressFn | None = None, dataset_cache=None,
                         dataset_n: int = 50000, dataset_seed: int = 0, unet_config: dict | None = None,
                         text_config: dict | None = None, warmup_steps: int = 200, p_uncond: float = 0.1,
                         grad_clip: float = 1.0, time_limit_s: float | None = None,
                         snr_gamma: float | None = 5.0, grid_every: int | None = 1000,
                         grid_per_prompt: int = 8, grid_steps: int = 25, log_every: int = 10,
                         export: bool = True, text_encoder_init=None, prediction_type: str | None = None,
                         zero_terminal_snr: bool = False) -> dict:
    """Train (or resume) and export ``out_dir/final``; returns (and writes) a summary.
    ``text_encoder_init``: the ``final/`` folder of :func:`text_pretrain.pretrain_text_encoder`;
    that encoder is then frozen, as SD freezes CLIP and Imagen T5 (trained jointly from its
    pretrained state, it lost the digit within 1,500 steps: the UNet did not use the digit yet,
    so varying with it only cost loss). None: a text encoder trained from scratch with the UNet.
    ``prediction_type`` / ``zero_terminal_snr``: see :func:`text_model.scheduler_config`; the
    exported scheduler says which, so any sampler reads the UNet's output right."""
    from diffusers import AutoencoderKL

    sched_cfg = scheduler_config(prediction_type, zero_terminal_snr)  # bad values fail before any work
    prediction_type = sched_cfg["prediction_type"]
    t_begin = time.time()
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    ucfg = json.loads(json.dumps(unet_config or UNET_CONFIG))
    tcfg = json.loads(json.dumps(text_config or TEXT_CONFIG))

    tok_dir = write_tokenizer(out_dir / "tokenizer", vocabulary())
    tokenizer = load_tokenizer(tok_dir)
    tokenize = CachedTokenizer(tokenizer)

    images, attrs = load_cached_captioned(dataset_cache, dataset_n, dataset_seed, "train")
    with quiet_libraries():  # diffusers' advice to install accelerate
        vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    lat_path = out_dir / "latents.safetensors"
    if lat_path.exists():
        from safetensors.torch import load_file

        lat = load_file(str(lat_path))
        lat_mean, lat_std = lat["mean"], lat["std"]
    else:
        lat_mean, lat_std = encode_latents(vae, images)
        save_file({"mean": lat_mean.contiguous(), "std": lat_std.contiguous()}, str(lat_path))
    scaling = latent_scaling_factor(lat_mean, lat_std, seed)
    vae.register_to_config(scaling_factor=scaling)
    setup_s = time.time() - t_begin

    torch.manual_seed(seed)
    unet = make_unet(ucfg)
    if text_encoder_init is not None:
        from .text_pretrain import load_pretrained_text_encoder

        text_encoder = load_pretrained_text_encoder(text_encoder_init, tokenizer, tcfg).eval()
        text_encoder.requires_grad_(False)
    else:
        text_encoder = make_text_encoder(tokenizer, tcfg).train()
    trained = list(unet.parameters()) + [q for q in text_encoder.parameters() if q.requires_grad]
    unet.train()
    ema_u, ema_t = C.EMA(unet, ema_decay), C.EMA(text_encoder, ema_decay)
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ac = alphas_cumprod(sched_cfg)
    T = ac.shape[0]

    start_step, train_seconds = 0, 0.0
    asked = steps  # a time limit may shorten the schedule; checkpoints record from what
    ck = C.latest_checkpoint(out_dir) if resume else None
    if ck is not None:
        st = C.restore_checkpoint(ck, {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_u,
                                       "ema_text_encoder": ema_t}, opt, rng, gen)
        trained_with = st.get("scheduler", scheduler_config())  # checkpoints before the option: ε, SD's
        if trained_with != sched_cfg:
            raise ValueError(f"{ck} was trained with another noise schedule or prediction type "
                             f"({trained_with['prediction_type']}); "
                             "resume with the same options or start a new --out folder")
        start_step, train_seconds = int(st["step"]), float(st.get("train_seconds", 0.0))
        steps = C.resumed_steps(st, steps)
    fitted_from = asked if steps < asked else None
    log = C.LossLog(out_dir / "loss.csv", ["step", "loss", "lr", "train_seconds", "s_per_it"],
                    start_step if ck is not None else None)

    def ema_models():
        u, te = make_unet(ucfg), make_text_encoder(tokenizer, tcfg)
        ema_u.copy_to(u)
        ema_t.copy_to(te)
        return u.eval(), te.eval()

    def save(step: int, final: bool = False) -> Path:
        grid_s = 0.0
        if grid_per_prompt and (final or (grid_every and step % grid_every == 0)):
            t0 = time.time()
            u, te = ema_models()
            prompt_grid(make_pipeline(vae, te, tokenizer, u, sched_cfg), GRID_PROMPTS, grid_per_prompt,
                        grid_steps).save(out_dir / "samples" / f"step_{step:06d}.png")
            grid_s = time.time() - t0
        path = C.write_checkpoint(
            out_dir, step,
            {"unet.safetensors": unet.state_dict(), "text_encoder.safetensors": text_encoder.state_dict(),
             "ema_unet.safetensors": ema_u.state_dict(), "ema_text_encoder.safetensors": ema_t.state_dict()},
            opt,
            {"numpy_rng": C.numpy_rng_state(rng), "train_seconds": train_seconds, "unet_config": ucfg,
             "text_config": tcfg, "seed": seed, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
             "p_uncond": p_uncond, "dataset_n": dataset_n, "dataset_seed": dataset_seed,
             "snr_gamma": snr_gamma, "scaling_factor": scaling, "vae": str(vae_dir),
             "text_encoder_init": None if text_encoder_init is None else str(text_encoder_init),
             "grid_seconds": grid_s, "fitted_from": fitted_from, "scheduler": sched_cfg,
             "fitted_total": steps if fitted_from else None})
        save_file({"torch_generator": gen.get_state()}, str(path / "rng.safetensors"))
        return path

    step, t_start = start_step, time.time()
    if time_limit_s is not None:
        time_limit_s = time_limit_s - setup_s  # the limit covers rendering and encoding too
    # the final grid and the export come after the last step: keep ~2 % of the run for them
    fit = (C.TimeFittedTotal(steps, time_limit_s, t_start, start_step, reserve_s=0.02 * time_limit_s)
           if time_limit_s is not None else None)
    recent: list[tuple[float, float]] = []
    stopped_early = False
    while step < steps:
        if C.out_of_time(t_start, time_limit_s):
            stopped_early = True
            break
        t0 = time.time()
        cur_lr = C.cosine_lr(step, steps, lr, warmup_steps)
        C.set_lr(opt, cur_lr)
        idx = rng.integers(0, len(images), size=batch_size)
        drop = rng.random(batch_size) < p_uncond
        prompts = ["" if d else caption(attrs[i], rng) for i, d in zip(idx, drop)]
        ids = tokenize(prompts)
        idx_t = torch.from_numpy(idx)
        z0 = scaling * (lat_mean[idx_t] + lat_std[idx_t] * torch.randn(lat_mean[idx_t].shape, generator=gen))
        t = torch.randint(0, T, (batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        loss = text_diffusion_loss(unet, text_encoder, ids, z0, t, noise, ac, snr_gamma, prediction_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(trained, grad_clip)
        opt.step()
        step += 1
        ema_u.update(unet, step)
        if text_encoder_init is None:  # a frozen encoder's average is itself, exactly
            ema_t.update(text_encoder, step)
        dt = time.time() - t0
        train_seconds += dt
        recent = (recent + [(loss.item(), dt)])[-50:]
        mean_loss = sum(r[0] for r in recent[-log_every:]) / len(recent[-log_every:])
        spi = sum(r[1] for r in recent) / len(recent)
        if step % log_every == 0 or step == steps:
            log.write(step=step, loss=f"{mean_loss:.6f}", lr=f"{cur_lr:.3g}",
                      train_seconds=f"{train_seconds:.1f}", s_per_it=f"{spi:.4f}")
        if progress is not None:
            progress(step, steps, mean_loss, spi * (steps - step))
        if fit is not None:
            steps = fit.update(step, time.time())
            fitted_from = asked if steps < asked else None
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save(step)
    log.close()
    final_ckpt = save(step, final=True) if (step > start_step or ck is None) else ck
    summary = {"step": step, "target_steps": steps, "stopped_early": stopped_early,
               "train_seconds_total": round(train_seconds, 1),
               "s_per_it_mean": round(train_seconds / max(1, step), 4),
               "recent_loss_mean": (sum(r[0] for r in recent) / len(recent)) if recent else None,
               "setup_seconds": round(setup_s, 1), "scaling_factor": scaling, "unet_config": ucfg,
               "text_config": tcfg, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
               "p_uncond": p_uncond, "snr_gamma": snr_gamma, "scheduler": sched_cfg,
               "text_encoder_init": None if text_encoder_init is None else str(text_encoder_init),
               "steps_reduced_to_fit_time_limit_from": fitted_from, "checkpoint": str(final_ckpt)}
    if export:
        u, te = ema_models()
        export_pipeline(out_dir / "final", vae, te, tok_dir, u, sched_cfg)
        summary["export"] = str(out_dir / "final")
    summary["wall_seconds"] = round(time.time() - t_begin, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
