"""DPM-Solver++(2S) ancestral and DPM-Solver++ SDE: single-step second-order solvers with a midpoint evaluation
(Lu et al. 2022, "DPM-Solver++", Alg. 1 with r = 1/2), in k-diffusion's forms ``sample_dpmpp_2s_ancestral`` and
``sample_dpmpp_sde``, in σ-space on the state x_σ (docs/maths.md, "DPM-Solver++(2S) and SDE").

With λ = −log σ, the exponential-integrator step of x_σ from σ to σ_d with data prediction D is
x ← (σ_d/σ) x − (σ_d/σ − 1) D, i.e. x ← (σ_d/σ) x + (1 − e^{−(λ_d − λ)}) D.

- 2S ancestral: split σ → σ_next into σ_down and noise σ_up (:func:`~.kdiffusion.ancestral_step`); a step to
  the midpoint σ_m = √(σ σ_down) with x̂₀, then the step to σ_down with x̂₀(x̃, σ_m), then + σ_up z.
- SDE: the same with ancestral noise inside: a step to σ_m split by the ancestral rule (+ noise), then the full
  step from x to σ_next split likewise, with D = x̂₀(x̃, σ_m) (k-diffusion's r = 1/2).

The step to σ = 0 is an Euler step (returns x̂₀). The SDE's two noises are two independent draws of the step, or
with ``noise_type="brownian"`` the increments of each sample's Brownian motion over [σ_m, σ] and [σ_next, σ]
(correlated, as k-diffusion's default ``BrownianTreeNoiseSampler`` draws them; :func:`~.base.sde_noise`).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, predict, predict_at, sde_noise
from .kdiffusion import ancestral_step, churned_steps, euler_to, sigma_steps, to_vp

DPMPP_2S_A_ETA = Option("eta", 1.0, "float", "noise of each ancestral step: 1 k-diffusion's full step, 0 none "
                        "(then it is DPM-Solver++(2S))", low=0.0, high=1.0, label="η", step=0.1)
DPMPP_SDE_ETA = Option("eta", 1.0, "float", "noise of the SDE steps: 1 k-diffusion's default, 0 none (then it is "
                       "DPM-Solver++(2S) to σ_next)", low=0.0, high=1.0, label="η", step=0.1)


def _exp_step(xs: torch.Tensor, d: torch.Tensor, sigma: float, target: float) -> torch.Tensor:
    """x_σ from σ to ``target`` with data prediction ``d``: (σ_d/σ) x − expm1(log(σ_d/σ)) D."""
    return (target / sigma) * xs - math.expm1(math.log(target / sigma)) * d


def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    def step_to(i: int, xs: torch.Tensor, x0: torch.Tensor, sigma: float, down: float) -> torch.Tensor:
        mid = math.sqrt(sigma * down)
        x2 = _exp_step(xs, x0, sigma, mid)
        pred2 = predict_at(denoiser, to_vp(x2, mid), plan, i, mid, log_sigmas)
        return _exp_step(xs, pred2.x0, sigma, down)

    return churned_steps("dpmpp_2s_a", denoiser, x, plan, noise, start, carry, step_to, eta=eta)


def sample_dpmpp_sde(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, noise_type: str, log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    def step(i: int, xs: torch.Tensor, s: float, s_next: float):
        pred = predict(denoiser, to_vp(xs, s), plan, i)
        if s_next == 0:
            return euler_to(i, xs, pred.x0, s, s_next), pred
        mid = math.sqrt(s * s_next)
        down, up = ancestral_step(s, mid, eta)
        x2 = _exp_step(xs, pred.x0, s, down)
        if up > 0:
            x2 = x2 + sde_noise(noise, noise_type, plan, i, tuple(xs.shape), s, mid, draw=0) * up
        pred2 = predict_at(denoiser, to_vp(x2, mid), plan, i, mid, log_sigmas)
        down, up = ancestral_step(s, s_next, eta)
        xs = _exp_step(xs, pred2.x0, s, down)
        if up > 0:
            xs = xs + sde_noise(noise, noise_type, plan, i, tuple(xs.shape), s, s_next, draw=1) * up
        return xs, pred

    return sigma_steps("dpmpp_sde", denoiser, x, plan, start, carry, step)
