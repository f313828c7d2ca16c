"""Linear multistep (LMS) in σ: the Adams–Bashforth idea on the probability-flow ODE dx/dσ = (x − x̂₀)/σ
(Karras et al. 2022, eq. 1 in σ-space), as k-diffusion's ``sample_lms`` and diffusers' ``LMSDiscreteScheduler``
(docs/maths.md, "Linear multistep").

Step i fits the polynomial through the last p slopes d_{i−k} = (x_{i−k} − x̂₀_{i−k})/σ_{i−k} at σ_{i−k}
(k = 0..p−1, p = min(i + 1, order)) and integrates it from σ_i to σ_{i+1}:

    x_{i+1} = x_i + Σ_j c_j d_{i−j},   c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ,
    ℓ_j(σ) = Π_{k≠j} (σ − σ_{i−k})/(σ_{i−j} − σ_{i−k})

The integral of the Lagrange basis ℓ_j is a polynomial's, computed exactly here (k-diffusion and diffusers
integrate it numerically). The carry keeps the state x_σ and the previous p − 1 slopes, so a run resumes exactly.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict
from .kdiffusion import start_state, to_vp

LMS_ORDER = Option("order", 4, "int", "how many past slopes the multistep polynomial uses (1 is Euler; 4 is "
                   "k-diffusion's and the web UIs' LMS)", low=1, high=4, label="Order", step=1)


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ for j = 0..order−1 (j = 0 the newest slope), exactly: each ℓ_j is built
    from its roots in the shifted variable u = σ − σ_i and its antiderivative evaluated at the ends."""
    nodes = [float(sigmas[i - k]) - float(sigmas[i]) for k in range(order)]
    end = float(sigmas[i + 1]) - float(sigmas[i])
    out = []
    for j in range(order):
        others = [n for k, n in enumerate(nodes) if k != j]
        roots = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = roots / math.prod(nodes[j] - n for n in others)
        out.append(float(basis.integ()(end)))
    return out


def sample_lms(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, order: int,
) -> Iterator[StepRecord]:
    xs = start_state(x, plan, start, carry)
    history = [carry[f"d{k}"] for k in range(1, order) if carry and f"d{k}" in carry]  # newest first
    for i in range(start, plan.steps):
        s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        pred = predict(denoiser, to_vp(xs, s), plan, i)
        slopes = [(xs - pred.x0) / s, *history][: min(i + 1, order)]
        coeffs = lms_coefficients(plan.sigmas, i, len(slopes))
        xs = xs + sum(c * d for c, d in zip(coeffs, slopes))
        history = slopes[: order - 1]
        yield make_record("lms", plan, i, to_vp(xs, s_next), pred, denoiser.nfe,
                          {"state": xs, **{f"d{k + 1}": d for k, d in enumerate(history)}})
