"""σ-space samplers (Karras et al. 2022 notation): dx/dσ = (x − x̂₀)/σ on x = x_t/√ᾱ_t (docs/maths.md,
"σ-space samplers").

The internal state is x_σ = x_t √(1+σ²) (diffusers' "scaled" sample); records hold x_t.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict

EULER_A_ETA = Option("eta", 1.0, "float", "noise of each ancestral step: 1 k-diffusion's full step, 0 none (then "
                     "it is plain Euler)", low=0.0, high=1.0, label="η", step=0.1)


def heun_evaluations(i: int, steps: int, options) -> int:
    """Two evaluations per step, one on the last (an Euler step to σ = 0)."""
    return 1 if i == steps - 1 else 2


def _vp(x_sigma: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_sigma / math.sqrt(sigma * sigma + 1.0)


def _start_state(x: torch.Tensor, plan: Plan, start: int, carry: Optional[dict]) -> torch.Tensor:
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


def _euler_steps(name: str, denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, start: int,
                 carry: Optional[dict], eta: float) -> Iterator[StepRecord]:
    """Euler steps on the probability-flow ODE, dx/dσ = (x − x̂₀)/σ, each to σ_down and then fresh noise of std
    σ_up (:func:`ancestral_step`); with η = 0, σ_down = σ_next and no noise is drawn: plain Euler."""
    xs = _start_state(x, plan, start, carry)
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        pred = predict(denoiser, _vp(xs, s), plan, i)
        down, up = ancestral_step(s, s_next, eta)
        xs = xs + (xs - pred.x0) / s * (down - s)
        if up > 0:
            xs = xs + noise.step(i, tuple(xs.shape)) * up
        yield make_record(name, plan, i, _vp(xs, s_next), pred, denoiser.nfe, {"state": xs})


def sample_euler(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
) -> Iterator[StepRecord]:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the 2nd-order correction)."""
    return _euler_steps("euler", denoiser, x, plan, noise, start, carry, eta=0.0)


def sample_euler_ancestral(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float,
) -> Iterator[StepRecord]:
    """Ancestral Euler (k-diffusion ``sample_euler_ancestral``): an Euler step to σ_down, then noise of std σ_up."""
    return _euler_steps("euler_a", denoiser, x, plan, noise, start, carry, eta)


def sample_heun(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
) -> Iterator[StepRecord]:
    """Heun's 2nd-order method, Karras et al. 2022, Alg. 1 (Euler on the last step to σ = 0)."""
    xs = _start_state(x, plan, start, carry)
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        pred = predict(denoiser, _vp(xs, s), plan, i)
        d = (xs - pred.x0) / s
        if s_next == 0:
            xs = xs + d * (s_next - s)
        else:
            x2 = xs + d * (s_next - s)
            pred2 = predict(denoiser, _vp(x2, s_next), plan, i, at_next=True)
            d2 = (x2 - pred2.x0) / s_next
            xs = xs + (d + d2) / 2 * (s_next - s)
        yield make_record("heun", plan, i, _vp(xs, s_next), pred, denoiser.nfe, {"state": xs})
