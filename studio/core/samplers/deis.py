"""DEIS: the diffusion exponential integrator sampler (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator", §4, ρAB-DEIS), as diffusers' ``DEISMultistepScheduler`` (docs/maths.md, "DEIS").

In ρ = σ = b/a (so x/a moves along dx/dρ = ε), the step integrates ε̂ exactly along a polynomial in log ρ through
the last p evaluations (the Adams–Bashforth idea in log ρ):

    x_{t'} = a_{t'} (x_t/a_t + Σ_j c_j ε̂_j),   c_j = ∫_{ρ_t}^{ρ_{t'}} ℓ_j(log ρ) dρ,
    ℓ_j(u) = Π_{k≠j} (u − u_k)/(u_j − u_k),   u_k = log ρ_k

computed in closed form: ∫ P(u) e^u du = e^u Σ_n (−1)^n P^{(n)}(u), which vanishes at ρ = 0, so the step to σ = 0
is the limit (first order: x̂₀). Step i has order min(order, i + 1), and under 15 steps at most 1 on the last
and 2 on the one before (diffusers' ``lower_order_final``). The carry keeps the previous ε̂, so a run resumes
exactly.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict

DEIS_ORDER = Option("order", 2, "int", "how many earlier ε̂ the multistep polynomial uses (DEIS: 2, diffusers' "
                    "default and its choice for guided sampling; 3 for unguided, ComfyUI's default)",
                    low=1, high=4, label="Order", step=1)
LOWER_ORDER_FINAL_BELOW = 15  # diffusers: fewer steps than this end with first- then second-order steps


def deis_coefficients(rhos: Sequence[float], rho_next: float) -> list[float]:
    """c_j = ∫_{ρ_0}^{ρ_next} ℓ_j(log ρ) dρ for the Lagrange basis through u_k = log ρ_k (ρ_0 the current point,
    then older ones), exactly; ρ_next = 0 is the limit. Worked in v = u − u_0, with e^u = ρ_0 e^v."""
    v = [math.log(r) - math.log(rhos[0]) for r in rhos]
    v_end = math.log(rho_next) - math.log(rhos[0]) if rho_next > 0 else None
    out = []
    for j in range(len(v)):
        others = [vk for k, vk in enumerate(v) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = basis / math.prod(v[j] - vk for vk in others)
        antider = sum(((-1) ** n) * basis.deriv(n) for n in range(len(v)))  # e^v · this is ∫ basis e^v dv
        at_end = 0.0 if v_end is None else math.exp(v_end) * float(antider(v_end))
        out.append(rhos[0] * (at_end - float(antider(0.0))))
    return out


def _order_at(i: int, steps: int, order: int) -> int:
    p = min(order, i + 1)
    if steps < LOWER_ORDER_FINAL_BELOW:
        p = min(p, steps - i)
    return p


def sample_deis(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, order: int,
) -> Iterator[StepRecord]:
    carry = carry or {}
    history = [carry[f"eps_{k}"] for k in range(order) if f"eps_{k}" in carry]  # ε̂ of steps i−1, i−2, … here
    sig = [float(v) for v in plan.sigmas]
    for i in range(start, plan.steps):
        s, s_next = sig[i], sig[i + 1]
        pred = predict(denoiser, x, plan, i)
        p = _order_at(i, plan.steps, order)
        eps = [pred.eps, *history][:p]
        coeffs = deis_coefficients([sig[i - k] for k in range(p)], s_next)
        a_next, a = 1.0 / math.sqrt(s_next**2 + 1.0), 1.0 / math.sqrt(s * s + 1.0)
        x = a_next * (x / a + sum(c * e for c, e in zip(coeffs, eps)))
        history = [pred.eps, *history][: order - 1]
        yield make_record("deis", plan, i, x, pred, denoiser.nfe, {f"eps_{k}": e for k, e in enumerate(history)})
