"""Predictor–corrector sampling, Song et al. 2021 ("Score-Based Generative Modeling through SDEs"), Alg. 1 & 5:
annealed Langevin corrector steps x ← x + δ ∇log p_t(x) + √(2δ) z with δ = 2 α_t (r ‖z‖ / ‖∇log p_t‖)²
(r the target signal-to-noise ratio), followed by an ancestral (reverse-diffusion) predictor step."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..prediction import score_from_eps
from ..records import StepRecord, check_finite
from .base import Denoiser, NoiseSource, Plan, make_record, predict
from .ddpm import posterior


def langevin_step_size(score: torch.Tensor, z: torch.Tensor, snr: float, alpha: float) -> torch.Tensor:
    """δ per sample: 2 α (snr ‖z‖ / ‖score‖)², norms over each sample (score_sde LangevinCorrector)."""
    b = score.shape[0]
    g = score.reshape(b, -1).norm(dim=-1)
    n = z.reshape(b, -1).norm(dim=-1)
    step = 2.0 * alpha * (snr * n / g.clamp_min(1e-12)) ** 2
    return step.view(b, *([1] * (score.ndim - 1)))


def sample_langevin(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, corrector_steps: int = 1, snr: float = 0.16, alphas: Optional[list] = None,
) -> Iterator[StepRecord]:
    if not isinstance(corrector_steps, int) or corrector_steps < 0 or corrector_steps > 100:
        raise ValueError(f"corrector steps must be an integer from 0 to 100, got {corrector_steps!r}")
    if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"target signal-to-noise ratio must be a positive number, got {snr!r}")
    nfe = (carry or {}).get("nfe", 0)
    for i in range(start, plan.steps):
        ab, ab_prev = float(plan.alpha_bars[i]), float(plan.alpha_bars[i + 1])
        b = math.sqrt(1 - ab)
        # α_t of the corrector: 1 − β_t at this timestep (falls back to the skipped-step ratio)
        alpha = float(alphas[int(plan.timesteps[i])]) if alphas is not None else ab / ab_prev
        for k in range(corrector_steps):
            pred = predict(denoiser, x, plan, i)
            nfe += 1
            score = score_from_eps(pred.eps, b)
            z = noise.step(i, tuple(x.shape), draw=k + 1)
            delta = langevin_step_size(score, z, snr, alpha)
            x = x + delta * score + torch.sqrt(2 * delta) * z
            check_finite(x, i)
        pred = predict(denoiser, x, plan, i)
        nfe += 1
        mean, var = posterior(x, pred.x0, ab, ab_prev, "fixed_small")
        last = i == plan.steps - 1
        x = mean if last else mean + math.sqrt(var) * noise.step(i, tuple(x.shape))
        yield make_record("langevin", plan, i, x, pred, nfe, {"nfe": nfe})
