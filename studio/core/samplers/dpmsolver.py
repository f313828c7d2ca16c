"""DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++", Alg. 2), data-prediction multistep form."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Plan, make_record, predict


def _lambda(sigma: float) -> float:
    """λ = log(α/σ_t) with α = 1/√(1+σ²), σ_t = σ α, i.e. λ = −log σ."""
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return math.log(alpha) - math.log(sigma * alpha)


def sample_dpmpp_2m(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0, carry: Optional[dict] = None,
) -> Iterator[StepRecord]:
    """x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D, D = x̂₀ (first and last steps) or
    x̂₀ + (x̂₀ − x̂₀_prev)/(2 r), r = h_prev/h (midpoint second-order, as diffusers; docs/maths.md,
    "DPM-Solver++(2M)")."""
    carry = dict(carry or {})
    prev_x0: Optional[torch.Tensor] = carry.get("prev_x0")
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        pred = predict(denoiser, x, plan, i)
        x0 = pred.x0
        if s_next == 0:
            x = x0  # h = ∞: the update is x̂₀ itself
        else:
            a_t = 1.0 / math.sqrt(s_next**2 + 1.0)
            st_t, st_s = s_next * a_t, s / math.sqrt(s * s + 1.0)
            h = _lambda(s_next) - _lambda(s)
            coef = -a_t * math.expm1(-h)
            if prev_x0 is None or i == 0:
                x = (st_t / st_s) * x + coef * x0
            else:
                r = (_lambda(s) - _lambda(float(plan.sigmas[i - 1]))) / h
                x = (st_t / st_s) * x + coef * x0 + 0.5 * coef * (x0 - prev_x0) / r
        prev_x0 = x0
        yield make_record("dpmpp_2m", plan, i, x, pred, denoiser.nfe, {"prev_x0": x0})
