"""σ-space samplers (Karras et al. 2022 notation): dx/dσ = (x − x̂₀)/σ on x = x_t/√ᾱ_t (docs/maths.md,
"σ-space samplers").

The internal state is x_σ = x_t √(1+σ²) (diffusers' "scaled" sample); records hold x_t. Euler and Heun take
EDM's stochastic churn (Karras et al. 2022, Alg. 2), off by default.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, Prediction, make_record, predict, predict_at

EULER_A_ETA = Option("eta", 1.0, "float", "noise of each ancestral step: 1 k-diffusion's full step, 0 none (then "
                     "it is plain Euler)", low=0.0, high=1.0, label="η", step=0.1)
# EDM's stochastic churn, Karras et al. 2022, Alg. 2 (k-diffusion's s_churn, s_tmin, s_tmax, s_noise)
S_CHURN = Option("s_churn", 0.0, "float", "EDM churn (Karras et al. 2022, Alg. 2): each step in [s_tmin, s_tmax] "
                 "first adds noise to raise σ to σ(1 + γ), γ = min(s_churn/steps, √2 − 1); 0 none", low=0.0,
                 high=100.0, label="S_churn", step=1.0)
S_TMIN = Option("s_tmin", 0.0, "float", "smallest σ at which churn applies", low=0.0, high=10000.0,
                label="S_tmin", step=0.01)
S_TMAX = Option("s_tmax", 0.0, "float", "largest σ at which churn applies; 0: no upper limit (as the web UIs)",
                low=0.0, high=10000.0, label="S_tmax", step=1.0)
S_NOISE = Option("s_noise", 1.0, "float", "scale of churn's fresh noise (EDM used slightly above 1 to make up for "
                 "detail the network removes)", low=0.0, high=2.0, label="S_noise", step=0.001)
CHURN = (S_CHURN, S_TMIN, S_TMAX, S_NOISE)


def two_but_the_last(i: int, steps: int, options, plan=None) -> int:
    """Evaluations of the two-stage steps (Heun, DPM2, DPM++ 2S/SDE): two per step (the second at σ_next or at a
    midpoint), one on the last (an Euler step to σ = 0)."""
    return 1 if i == steps - 1 else 2


def to_vp(x_sigma: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = x_σ/√(1+σ²): the record's variance-preserving state."""
    return x_sigma / math.sqrt(sigma * sigma + 1.0)


def start_state(x: torch.Tensor, plan: Plan, start: int, carry: Optional[dict]) -> torch.Tensor:
    """x_σ to start from: the carried state (exact on resume), else x_t √(1+σ²) at the plan's point ``start``."""
    if carry and "state" in carry:
        return carry["state"]
    return x * math.sqrt(float(plan.sigmas[start]) ** 2 + 1.0)


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion get_ancestral_step: split σ → σ_next into a deterministic σ_down and fresh noise σ_up;
    η scales σ_up (η = 0: σ_down = σ_next, no noise)."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def churn(xs: torch.Tensor, sigma: float, i: int, steps: int, noise: NoiseSource, s_churn: float, s_tmin: float,
          s_tmax: float, s_noise: float) -> tuple[torch.Tensor, float]:
    """Karras et al. 2022, Alg. 2, lines 4–6: γ = min(S_churn/N, √2 − 1) where S_tmin ≤ σ ≤ S_tmax (else 0),
    σ̂ = σ (1 + γ), x̂ = x + √(σ̂² − σ²) S_noise z. Returns (x̂, σ̂); γ = 0 returns (x, σ) and draws nothing."""
    in_window = s_tmin <= sigma and (s_tmax == 0 or sigma <= s_tmax)
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if in_window else 0.0
    if gamma <= 0:
        return xs, sigma
    s_hat = sigma * (gamma + 1.0)
    return xs + noise.step(i, tuple(xs.shape)) * (s_noise * math.sqrt(s_hat**2 - sigma**2)), s_hat


def denoise(denoiser: Denoiser, xs: torch.Tensor, plan: Plan, i: int, sigma: float,
            log_sigmas: Optional[np.ndarray]) -> Prediction:
    """The prediction at state x_σ = ``xs`` in step i: at plan point i when ``sigma`` is its σ, else at ``sigma``
    (a churned σ̂ or a midpoint) with the network's timestep interpolated from ``log_sigmas``."""
    if sigma == float(plan.sigmas[i]):
        return predict(denoiser, to_vp(xs, sigma), plan, i)
    return predict_at(denoiser, to_vp(xs, sigma), plan, i, sigma, log_sigmas)


def sigma_steps(name: str, denoiser: Denoiser, x: torch.Tensor, plan: Plan, start: int, carry: Optional[dict],
                step: Callable) -> Iterator[StepRecord]:
    """The loop of every σ-space sampler: ``step(i, x_σ, σ, σ_next)`` returns the state at σ_next and the step's
    prediction; the record holds x_t and the carry the state x_σ, so a run resumes exactly (:func:`start_state`)."""
    xs = start_state(x, plan, start, carry)
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        xs, pred = step(i, xs, s, s_next)
        yield make_record(name, plan, i, to_vp(xs, s_next), pred, denoiser.nfe, {"state": xs})


def euler_to(i: int, xs: torch.Tensor, x0: torch.Tensor, sigma: float, target: float) -> torch.Tensor:
    """An Euler step of dx/dσ = (x − x̂₀)/σ from σ to ``target``."""
    return xs + (xs - x0) / sigma * (target - sigma)


def churned_steps(name: str, denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, start: int,
                  carry: Optional[dict], step_to: Callable, eta: float = 0.0,
                  churn_options: tuple = (0.0, 0.0, 0.0, 1.0), log_sigmas: Optional[np.ndarray] = None
                  ) -> Iterator[StepRecord]:
    """Karras et al. 2022, Alg. 2's step, and its ancestral form (k-diffusion): churn σ to σ̂ (:func:`churn`; none
    by default), x̂₀ at σ̂, then ``step_to(i, x_σ, x̂₀, σ̂, σ_d)`` to σ_d = σ_down (:func:`ancestral_step`; σ_next
    at η = 0) — an Euler step when σ_d = 0 — and fresh noise of std σ_up."""
    def step(i: int, xs: torch.Tensor, s: float, s_next: float):
        xs, s_hat = churn(xs, s, i, plan.steps, noise, *churn_options)
        pred = denoise(denoiser, xs, plan, i, s_hat, log_sigmas)
        down, up = ancestral_step(s, s_next, eta)
        xs = euler_to(i, xs, pred.x0, s_hat, down) if down == 0 else step_to(i, xs, pred.x0, s_hat, down)
        if up > 0:
            xs = xs + noise.step(i, tuple(xs.shape)) * up
        return xs, pred

    return sigma_steps(name, denoiser, x, plan, start, carry, step)


def sample_euler(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    """Euler's method on the probability-flow ODE: Karras et al. 2022, Alg. 2 without the 2nd-order correction
    (k-diffusion ``sample_euler``); with s_churn = 0, deterministic Euler (Alg. 1's first-order step)."""
    return churned_steps("euler", denoiser, x, plan, noise, start, carry, euler_to,
                         churn_options=(s_churn, s_tmin, s_tmax, s_noise), log_sigmas=log_sigmas)


def sample_euler_ancestral(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float,
) -> Iterator[StepRecord]:
    """Ancestral Euler (k-diffusion ``sample_euler_ancestral``): an Euler step to σ_down, then noise of std σ_up."""
    return churned_steps("euler_a", denoiser, x, plan, noise, start, carry, euler_to, eta=eta)


def sample_heun(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    """Heun's 2nd-order method from σ̂ (:func:`churn`) to σ_next, Karras et al. 2022, Alg. 2 (Alg. 1 with
    s_churn = 0; k-diffusion ``sample_heun``); an Euler step on the last step, to σ = 0."""
    def heun_to(i: int, xs: torch.Tensor, x0: torch.Tensor, sigma: float, target: float) -> torch.Tensor:
        d = (xs - x0) / sigma
        x2 = xs + d * (target - sigma)
        pred2 = predict(denoiser, to_vp(x2, target), plan, i, at_next=True)
        d2 = (x2 - pred2.x0) / target
        return xs + (d + d2) / 2 * (target - sigma)

    return churned_steps("heun", denoiser, x, plan, noise, start, carry, heun_to,
                         churn_options=(s_churn, s_tmin, s_tmax, s_noise), log_sigmas=log_sigmas)
