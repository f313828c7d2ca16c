"""Training of the ``digits-text`` autoencoder (diffusers ``AutoencoderKL``) on CPU.

The first stage of latent diffusion (Rombach et al. 2022, Sec. 3): an encoder to a
Gaussian posterior q(z|x) over 8x8x4 latents, a decoder back to 32x32 RGB. Loss per batch:
``L1 + MSE`` between the input and the decoding of a posterior sample, plus ``kl_weight``
times KL(q(z|x) || N(0, I)) (summed over latent elements, averaged over the batch) – the
small KL weight of SD's KL-f8 autoencoder (1e-6) keeps the latent close to a smooth,
roughly standard space without blurring. (SD adds a perceptual and an adversarial loss;
at 32x32 with flat colours a pixel loss is enough.)

No EMA (the decoder is used as trained); the loop, its cosine schedule, the checkpoints and the
resume are :func:`studio.training.fit.fit`'s; export to ``out_dir/final`` (``save_pretrained``).

``decoder_only=True`` with ``init_from`` fine-tunes only the decoder (and ``post_quant_conv``)
of a trained autoencoder, the encoder frozen, so the latent space – and any diffusion model
already trained in it – stays valid; Stable Diffusion's improved VAEs (``sd-vae-ft-mse``)
were made the same way.
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

from ..core.options import Option
from ..data.captions import load_cached_captioned
from ..data.digits import grid as grid_image
from ..data.digits import to_float, to_uint8
from ..evaluation.text_eval import border_mask
from .fit import Clock, ProgressFn, Trainee, fit
from .settings import DATASET_N, LR, NETWORK, STEPS, DataConfig, flag, setting
from .text_model import VAE_CONFIG, make_vae


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


@dataclass(frozen=True)
class VaeConfig(DataConfig):
    """The autoencoder stage of ``digits-text`` (assets/models/digits-text/README.md gives the
    shipped run's flags: ``--stroke-weight 4`` and a time limit)."""

    steps: int = setting(STEPS, 3000)
    lr: float = setting(LR, 1e-3)
    dataset_n: int = setting(DATASET_N, 50000)
    kl_weight: float = setting(Option(kind="float", low=0, help="weight of the KL term (Rombach et al. 2022, "
                                                                 "SD's KL-f8 autoencoder: 1e-6)"), 1e-6)
    stroke_weight: float = setting(Option(kind="float", low=0, help="weigh the reconstruction error of the "
                                                                     "digit's pixels by 1 + this (0: no weighting)"), 0.0)
    init_from: Optional[str] = setting(Option(kind="str", optional=True,
                                              help="start from this trained autoencoder folder"))
    decoder_only: bool = setting(Option(default=False, kind="bool",
                                        help="fine-tune only the decoder of --init-from (the latent space stays)"))
    vae_config: Optional[dict] = setting(NETWORK, None)


def check_inputs(cfg: VaeConfig) -> None:
    """A one-line ``ValueError`` before any work if the starting autoencoder is missing."""
    init_from = flag(VaeConfig, "init_from")
    if cfg.decoder_only and cfg.init_from is None:
        raise ValueError(f"{flag(VaeConfig, 'decoder_only')} needs {init_from} FOLDER: "
                         "the final/ folder of a `studio train vae` run")
    if cfg.init_from is not None and not (Path(cfg.init_from) / "config.json").is_file():
        raise ValueError(f"{init_from} {cfg.init_from}: no config.json; "
                         "give the final/ folder of a `studio train vae` run")


def train_vae(out_dir, config: VaeConfig | None = None, *, progress: ProgressFn | None = None,
              clock: Clock = time.monotonic, **settings) -> dict:
    """Train (or resume) by ``config`` with ``settings`` (fields of :class:`VaeConfig`) changed, and
    export to ``out_dir/final``; returns (and writes) a summary."""
    cfg = VaeConfig.make(config, **settings)
    check_inputs(cfg)
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    vae_cfg = json.loads(json.dumps(cfg.vae_config or VAE_CONFIG))
    t_setup = clock()
    images, _ = load_cached_captioned(cfg.dataset_cache, cfg.dataset_n, cfg.dataset_seed, "train")
    val = images[-16:]
    data_s = clock() - t_setup

    torch.manual_seed(cfg.seed)
    if cfg.init_from is not None:
        from diffusers import AutoencoderKL

        from ..core.text_model import quiet_libraries

        with quiet_libraries():  # diffusers' advice to install accelerate
            vae = AutoencoderKL.from_pretrained(cfg.init_from)
        vae_cfg = json.loads(json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")}))
    else:
        vae = make_vae(vae_cfg)
    vae.train()
    params = list(vae.parameters())
    if cfg.decoder_only:
        for p in list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()):
            p.requires_grad_(False)
        vae.encoder.eval()
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())

    def loss(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = to_float(images[rng.integers(0, len(images), size=cfg.batch_size)])
        value, mse = vae_loss(vae, x, gen, cfg.kl_weight, cfg.decoder_only, cfg.stroke_weight)
        return value, {"mse": mse}

    def grid(step: int) -> Path:
        """The held-back images above their reconstructions (from the posterior means)."""
        with torch.no_grad():
            vae.eval()
            rec = vae.decode(vae.encode(to_float(val)).latent_dist.mean).sample
            vae.train()
            if cfg.decoder_only:
                vae.encoder.eval()
        path = out_dir / "samples" / f"step_{step:06d}.png"
        grid_image(np.concatenate([val, to_uint8(rec)]), nrow=16).save(path)
        return path

    trainee = Trainee(params=params, loss=loss, saved={"vae": vae}, state={**cfg.recipe(), "vae_config": vae_cfg},
                      log_fields=("mse",), grid=grid)
    summary = {**fit(out_dir, trainee, cfg, progress, clock), **trainee.state, "dataset_seconds": round(data_s, 1)}
    if cfg.export:
        vae.eval()
        vae.save_pretrained(str(out_dir / "final"), safe_serialization=True)
        summary["export"] = str(out_dir / "final")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
