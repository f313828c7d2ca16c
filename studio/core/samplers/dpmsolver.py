"""DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++", Alg. 2), data-prediction multistep form."""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Plan, make_record, predict


def _lambda(sigma: float) -> float:
    """λ = log(α/σ_t) with α = 1/√(1+σ²), σ_t = σ α, i.e. λ = −log σ."""
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return math.log(alpha) - math.log(sigma * alpha)


def x0_multistep(name: str, denoiser: Denoiser, x: torch.Tensor, plan: Plan, start: int, carry: Optional[dict],
                 keys: tuple[str, ...], update: Callable) -> Iterator[StepRecord]:
    """The loop of the data-prediction multistep solvers (DPM-Solver++(2M) and its SDE forms): each step takes the
    network's x̂₀ at x; the step to σ = 0 returns x̂₀ itself (h = ∞); any other is ``update(i, x, x̂₀, σ, σ_next,
    earlier)``, ``earlier`` the previous steps' x̂₀, most recent first (None before the run has them). The carry
    keeps those under ``keys``, so a run resumes exactly."""
    earlier = [(carry or {}).get(k) for k in keys]
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        pred = predict(denoiser, x, plan, i)
        x = pred.x0 if s_next == 0 else update(i, x, pred.x0, s, s_next, earlier)
        earlier = [pred.x0, *earlier[:-1]]
        yield make_record(name, plan, i, x, pred, denoiser.nfe, {k: v for k, v in zip(keys, earlier) if v is not None})


def sample_dpmpp_2m(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
) -> Iterator[StepRecord]:
    """x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D, D = x̂₀ (first and last steps) or
    x̂₀ + (x̂₀ − x̂₀_prev)/(2 r), r = h_prev/h (midpoint second-order, as diffusers; docs/maths.md,
    "DPM-Solver++(2M)")."""
    def update(i: int, x: torch.Tensor, x0: torch.Tensor, s: float, s_next: float, earlier: list) -> torch.Tensor:
        a_t = 1.0 / math.sqrt(s_next**2 + 1.0)
        st_t, st_s = s_next * a_t, s / math.sqrt(s * s + 1.0)
        h = _lambda(s_next) - _lambda(s)
        coef = -a_t * math.expm1(-h)
        if earlier[0] is None or i == 0:
            return (st_t / st_s) * x + coef * x0
        r = (_lambda(s) - _lambda(float(plan.sigmas[i - 1]))) / h
        return (st_t / st_s) * x + coef * x0 + 0.5 * coef * (x0 - earlier[0]) / r

    return x0_multistep("dpmpp_2m", denoiser, x, plan, start, carry, ("prev_x0",), update)
