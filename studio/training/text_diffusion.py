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
* optional Min-SNR-γ loss weighting (Hang et al. 2023), EMA of both networks (the EMA weights are
  exported), a grid of prompts every ``grid_every`` steps; the loop, its cosine schedule kept
  fitted to the time limit, the checkpoints and the exact resume are :func:`studio.training.fit.fit`'s;
* export: a diffusers ``StableDiffusionPipeline`` folder in ``out_dir/final``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import ckpt as C
from ..core.options import Option
from ..data.captions import caption, full_caption, load_cached_captioned, vocabulary
from ..data.digits import grid, to_float
from .diffusion import min_snr_weights
from ..core.prediction import from_x0_eps
from ..core.text_model import quiet_libraries
from .fit import Clock, ProgressFn, Trainee, fit
from .settings import (CAPTION_ORDER, CHECKPOINT_EVERY, DATASET_N, EMA_DECAY, GRID_EVERY, GRID_STEPS, LR, NETWORK,
                       P_UNCOND, STEPS, WARMUP_STEPS, DataConfig, flag, min_snr_setting, setting)
from .text_model import (TEXT_CONFIG, TRAINED_PREDICTION_TYPES, UNET_CONFIG, alphas_cumprod, export_pipeline,
                         make_pipeline, make_text_encoder, make_unet, scheduler_config)
from .tokenizer import load_tokenizer, write_tokenizer
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


@dataclass(frozen=True)
class TextDiffusionConfig(DataConfig):
    """The UNet stage of ``digits-text`` (assets/models/digits-text/README.md gives the shipped
    run's flags: a frozen pretrained text encoder, ``--zero-terminal-snr``, a time limit)."""

    steps: int = setting(STEPS, 20000)
    lr: float = setting(LR, 1e-3)
    warmup_steps: int = setting(WARMUP_STEPS, 200)
    checkpoint_every: int = setting(CHECKPOINT_EVERY, 500)
    dataset_n: int = setting(DATASET_N, 50000)
    vae_dir: Optional[str] = setting(Option(kind="str", optional=True, flag="--vae",
                                            help="the trained autoencoder: the final/ folder of `studio train vae`"))
    text_encoder_init: Optional[str] = setting(Option(
        kind="str", optional=True, flag="--text-encoder",
        help="condition on this pretrained text encoder, frozen (the final/ folder of `studio train "
             "text-encoder`; None: one trained from scratch with the UNet)"))
    ema_decay: float = setting(EMA_DECAY, 0.999)
    p_uncond: float = setting(P_UNCOND, 0.1)
    caption_orders: str = setting(CAPTION_ORDER)
    snr_gamma: Optional[float] = min_snr_setting(5.0)
    prediction_type: Optional[str] = setting(Option(
        kind="choice", choices=TRAINED_PREDICTION_TYPES, optional=True,
        help="what the UNet predicts (None: epsilon, or v_prediction with --zero-terminal-snr)"))
    zero_terminal_snr: bool = setting(Option(
        default=False, kind="bool", help="rescale the noise schedule so its last step is pure noise "
                                         "(Lin et al. 2024), with trailing timesteps and v-prediction"))
    unet_config: Optional[dict] = setting(NETWORK, None)
    text_config: Optional[dict] = setting(NETWORK, None)
    grid_every: Optional[int] = setting(GRID_EVERY, 1000)
    grid_per_prompt: int = setting(Option(kind="int", low=0, help="samples per prompt (row) of the sample "
                                                                  "grids (0: no grids)"), 8)
    grid_steps: int = setting(GRID_STEPS, 25)


def check_inputs(cfg: TextDiffusionConfig) -> dict:
    """The noise schedule ``cfg`` trains on, after checking its input folders: a one-line
    ``ValueError`` before any work."""
    if cfg.vae_dir is None or not (Path(cfg.vae_dir) / "config.json").is_file():
        raise ValueError(f"text-diffusion needs {flag(TextDiffusionConfig, 'vae_dir')} FOLDER with a "
                         "config.json: the final/ folder of `studio train vae`")
    if cfg.text_encoder_init is not None:
        from .text_pretrain import check_pretrained_folder

        check_pretrained_folder(cfg.text_encoder_init)
    return scheduler_config(cfg.prediction_type, cfg.zero_terminal_snr)


def train_text_diffusion(out_dir, vae_dir=None, config: TextDiffusionConfig | None = None, *,
                         progress: ProgressFn | None = None, clock: Clock = time.monotonic, **settings) -> dict:
    """Train (or resume) and export ``out_dir/final``; returns (and writes) a summary.
    ``vae_dir``: the autoencoder (the same as the setting of that name); ``settings``: fields of
    :class:`TextDiffusionConfig` changed from ``config``.
    ``text_encoder_init``: the ``final/`` folder of :func:`text_pretrain.pretrain_text_encoder`;
    that encoder is then frozen, as SD freezes CLIP and Imagen T5 (trained jointly from its
    pretrained state, it lost the digit within 1,500 steps: the UNet did not use the digit yet,
    so varying with it only cost loss). None: a text encoder trained from scratch with the UNet.
    ``prediction_type`` / ``zero_terminal_snr``: see :func:`text_model.scheduler_config`; the
    exported scheduler says which, so any sampler reads the UNet's output right."""
    from diffusers import AutoencoderKL

    cfg = TextDiffusionConfig.make(config, **settings, **({} if vae_dir is None else {"vae_dir": vae_dir}))
    sched_cfg = check_inputs(cfg)  # bad values fail before any work
    prediction_type = sched_cfg["prediction_type"]
    t_begin = clock()
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    ucfg = json.loads(json.dumps(cfg.unet_config or UNET_CONFIG))
    tcfg = json.loads(json.dumps(cfg.text_config or TEXT_CONFIG))

    tok_dir = write_tokenizer(out_dir / "tokenizer", vocabulary())
    tokenizer = load_tokenizer(tok_dir)
    tokenize = CachedTokenizer(tokenizer)

    images, attrs = load_cached_captioned(cfg.dataset_cache, cfg.dataset_n, cfg.dataset_seed, "train")
    with quiet_libraries():  # diffusers' advice to install accelerate
        vae = AutoencoderKL.from_pretrained(cfg.vae_dir).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    lat_path = out_dir / "latents.safetensors"
    if lat_path.exists():
        lat = load_file(str(lat_path))
        lat_mean, lat_std = lat["mean"], lat["std"]
    else:
        lat_mean, lat_std = encode_latents(vae, images)
        save_file({"mean": lat_mean.contiguous(), "std": lat_std.contiguous()}, str(lat_path))
    scaling = latent_scaling_factor(lat_mean, lat_std, cfg.seed)
    vae.register_to_config(scaling_factor=scaling)
    setup_s = clock() - t_begin

    torch.manual_seed(cfg.seed)
    unet = make_unet(ucfg)
    frozen = cfg.text_encoder_init is not None
    if frozen:
        from .text_pretrain import load_pretrained_text_encoder

        text_encoder = load_pretrained_text_encoder(cfg.text_encoder_init, tokenizer, tcfg).eval()
        text_encoder.requires_grad_(False)
    else:
        text_encoder = make_text_encoder(tokenizer, tcfg).train()
    trained = list(unet.parameters()) + [q for q in text_encoder.parameters() if q.requires_grad]
    unet.train()
    ema_u, ema_t = C.EMA(unet, cfg.ema_decay), C.EMA(text_encoder, cfg.ema_decay)
    ac = alphas_cumprod(sched_cfg)
    n = cfg.batch_size

    def loss(rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(0, len(images), size=n)
        drop = rng.random(n) < cfg.p_uncond
        ids = tokenize(["" if d else caption(attrs[i], rng, orders=cfg.caption_orders)
                         for i, d in zip(idx, drop)])
        idx_t = torch.from_numpy(idx)
        z0 = scaling * (lat_mean[idx_t] + lat_std[idx_t] * torch.randn(lat_mean[idx_t].shape, generator=gen))
        t = torch.randint(0, ac.shape[0], (n,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        return text_diffusion_loss(unet, text_encoder, ids, z0, t, noise, ac, cfg.snr_gamma, prediction_type)

    def ema_models():
        u, te = make_unet(ucfg), make_text_encoder(tokenizer, tcfg)
        ema_u.copy_to(u)
        ema_t.copy_to(te)
        return u.eval(), te.eval()

    def grid(step: int) -> Path:
        u, te = ema_models()
        path = out_dir / "samples" / f"step_{step:06d}.png"
        prompt_grid(make_pipeline(vae, te, tokenizer, u, sched_cfg), GRID_PROMPTS, cfg.grid_per_prompt,
                    cfg.grid_steps).save(path)
        return path

    def check_resume(state: dict) -> None:
        trained_with = state.get("scheduler", scheduler_config())  # checkpoints before the option: ε, SD's
        if trained_with != sched_cfg:
            raise ValueError(f"{out_dir} was trained with another noise schedule or prediction type "
                             f"({trained_with['prediction_type']}); "
                             "resume with the same options or start a new --out folder")

    trainee = Trainee(
        params=trained, loss=loss,
        saved={"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_u, "ema_text_encoder": ema_t},
        averages=[(ema_u, unet)] + ([] if frozen else [(ema_t, text_encoder)]),  # a frozen encoder's average is itself
        state={**cfg.recipe(), "unet_config": ucfg, "text_config": tcfg, "scaling_factor": scaling,
               "scheduler": sched_cfg},
        grid=grid if cfg.grid_per_prompt else None, grid_every=cfg.grid_every, check_resume=check_resume,
        limit_from=t_begin,  # the limit covers rendering and encoding too
        reserve=0.02)  # the final grid and the export come after the last step
    summary = {**fit(out_dir, trainee, cfg, progress, clock), **trainee.state, "setup_seconds": round(setup_s, 1)}
    if cfg.export:
        u, te = ema_models()
        export_pipeline(out_dir / "final", vae, te, tok_dir, u, sched_cfg)
        summary["export"] = str(out_dir / "final")
    summary["wall_seconds"] = round(clock() - t_begin, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
