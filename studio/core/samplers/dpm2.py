"""DPM2 and DPM2 ancestral: k-diffusion's ``sample_dpm_2`` and ``sample_dpm_2_ancestral`` (Karras et al. 2022,
§3 and Alg. 2, with DPM-Solver-2's midpoint, Lu et al. 2022a, Alg. 1), in σ-space on the state x_σ
(docs/maths.md, "DPM2").

One step from σ̂ (after EDM churn, :func:`~.kdiffusion.churn`) to a target σ_d (σ_next; ancestral: σ_down):
an Euler half-step to the geometric midpoint σ_m = exp((log σ̂ + log σ_d)/2), then the full step with the
slope there,

    x̃ = x + d (σ_m − σ̂),   x ← x + d̃ (σ_d − σ̂),   d = (x − x̂₀(x, σ̂))/σ̂,   d̃ = (x̃ − x̂₀(x̃, σ_m))/σ_m

and the step to σ = 0 is an Euler step. The ancestral form then adds fresh noise σ_up z
(:func:`~.kdiffusion.ancestral_step`). The midpoint is no plan point: the network sees the timestep
interpolated in log σ there, as k-diffusion's and diffusers' (``KDPM2DiscreteScheduler``) do.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, predict_at
from .kdiffusion import churned_steps, to_vp

DPM2_A_ETA = Option("eta", 1.0, "float", "noise of each ancestral step: 1 k-diffusion's full step, 0 none (then "
                    "it is dpm2)", low=0.0, high=1.0, label="η", step=0.1)


def _midpoint_to(denoiser: Denoiser, plan: Plan, log_sigmas: np.ndarray):
    """DPM-Solver-2's step from σ to a target > 0, through the geometric midpoint (the network's timestep there
    interpolated in log σ)."""
    def step_to(i: int, xs: torch.Tensor, x0: torch.Tensor, sigma: float, target: float) -> torch.Tensor:
        d = (xs - x0) / sigma
        mid = math.exp((math.log(sigma) + math.log(target)) / 2)
        x2 = xs + d * (mid - sigma)
        pred2 = predict_at(denoiser, to_vp(x2, mid), plan, i, mid, log_sigmas)
        return xs + (x2 - pred2.x0) / mid * (target - sigma)

    return step_to


def sample_dpm2(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
    log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    return churned_steps("dpm2", denoiser, x, plan, noise, start, carry, _midpoint_to(denoiser, plan, log_sigmas),
                         churn_options=(s_churn, s_tmin, s_tmax, s_noise), log_sigmas=log_sigmas)


def sample_dpm2_ancestral(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    return churned_steps("dpm2_a", denoiser, x, plan, noise, start, carry, _midpoint_to(denoiser, plan, log_sigmas),
                         eta=eta, log_sigmas=log_sigmas)
