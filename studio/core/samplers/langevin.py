"""Predictor–corrector sampling, Song et al. 2021 ("Score-Based Generative Modeling through SDEs"), Alg. 1 & 5:
annealed Langevin corrector steps x ← x + δ ∇log p_t(x) + √(2δ) z with δ = 2 α_t (r ‖z‖ / ‖∇log p_t‖)²
(r the target signal-to-noise ratio), followed by an ancestral (reverse-diffusion) predictor step
(docs/maths.md, "Langevin corrector")."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..prediction import score_from_eps
from ..records import StepRecord, check_finite
from ..schedule import NoiseSchedule
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict
from .ddpm import posterior

CORRECTOR_STEPS = Option("corrector_steps", 1, "int", "Langevin corrector steps per noise level (0: the predictor "
                         "alone, ancestral DDPM)", low=0, high=100, label="Corrector steps", step=1)
SNR = Option("snr", 0.16, "float", "target signal-to-noise ratio r of the Langevin corrector's step size",
             low=0.0, low_open=True, high=1.0, label="SNR", step=0.01)


def corrector_alphas(sched: NoiseSchedule) -> dict:
    """α_t = 1 − β_t of every training timestep: the corrector's step-size factor (score_sde uses α_t)."""
    return {"alphas": (1.0 - sched.betas).tolist()}


def evaluations(i: int, steps: int, options, plan=None) -> int:
    """corrector_steps Langevin evaluations and one predictor evaluation per step."""
    return options["corrector_steps"] + 1


def langevin_step_size(score: torch.Tensor, z: torch.Tensor, snr: float, alpha: float) -> torch.Tensor:
    """δ per sample: 2 α (snr ‖z‖ / ‖score‖)², norms over each sample (score_sde LangevinCorrector)."""
    b = score.shape[0]
    g = score.reshape(b, -1).norm(dim=-1)
    n = z.reshape(b, -1).norm(dim=-1)
    step = 2.0 * alpha * (snr * n / g.clamp_min(1e-12)) ** 2
    return step.view(b, *([1] * (score.ndim - 1)))


def sample_langevin(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, corrector_steps: int, snr: float, alphas: Optional[list] = None,
) -> Iterator[StepRecord]:
    for i in range(start, plan.steps):
        ab, ab_prev = float(plan.alpha_bars[i]), float(plan.alpha_bars[i + 1])
        b = math.sqrt(1 - ab)
        # α_t of the corrector: 1 − β_t at this timestep (falls back to the skipped-step ratio)
        alpha = float(alphas[int(plan.timesteps[i])]) if alphas is not None else ab / ab_prev
        for k in range(corrector_steps):
            pred = predict(denoiser, x, plan, i)
            score = score_from_eps(pred.eps, b)
            z = noise.step(i, tuple(x.shape), draw=k + 1)
            delta = langevin_step_size(score, z, snr, alpha)
            x = x + delta * score + torch.sqrt(2 * delta) * z
            check_finite(x, i)
        pred = predict(denoiser, x, plan, i)
        mean, var = posterior(x, pred.x0, ab, ab_prev, "fixed_small")
        last = i == plan.steps - 1
        x = mean if last else mean + math.sqrt(var) * noise.step(i, tuple(x.shape))
        yield make_record("langevin", plan, i, x, pred, denoiser.nfe, {})
