"""DPM-Solver++(2M) SDE and (3M) SDE: multistep solvers of the reverse SDE in data prediction (Lu et al. 2022,
"DPM-Solver++", §4 and App. B; Gonzalez et al. 2023, "SEEDS"), in k-diffusion's forms ``sample_dpmpp_2m_sde`` and
``sample_dpmpp_3m_sde`` with η scaling the noise (docs/maths.md, "DPM-Solver++ SDE").

With λ = −log σ, h = λ_{t'} − λ_t, a = 1/√(1+σ²), b = σ a and H = (1 + η) h, one step is

    x_{t'} = (b_{t'}/b_t) e^{−ηh} x_t + a_{t'} (1 − e^{−H}) x̂₀ + a_{t'} C + b_{t'} √(1 − e^{−2ηh}) z

where C corrects with the previous x̂₀'s (divided differences over the log-σ steps, r = h_prev/h):
2M midpoint C = (1 − e^{−H})/(2r) (x̂₀ − x̂₀′); 2M heun C = φ₂ (x̂₀ − x̂₀′)/r with φ₂ = 1 − (1 − e^{−H})/H;
3M C = φ₂ D₁ − φ₃ D₂ with φ₃ = φ₂/H − 1/2 once two previous x̂₀ exist (k-diffusion's D₁, D₂). η = 0 is the ODE
solver (2M midpoint = dpmpp_2m); η = 1 is the reverse SDE, diffusers' ``sde-dpmsolver++``. The first step is
first order, and the step to σ = 0 returns x̂₀. The carry keeps the previous x̂₀'s, so a run resumes exactly.
z is the step's own draw, or with ``noise_type="brownian"`` the increment of each sample's Brownian motion over
[σ_{t'}, σ_t] (k-diffusion's default ``BrownianTreeNoiseSampler``; :func:`~.base.sde_noise`).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, sde_noise
from .dpmsolver import x0_multistep

SDE_ETA = Option("eta", 1.0, "float", "noise of the SDE step: 1 the reverse SDE (k-diffusion's default), 0 none "
                 "(then it is the ODE solver)", low=0.0, high=1.0, label="η", step=0.1)
SOLVER_TYPES = ("midpoint", "heun")
SOLVER_TYPE = Option("solver_type", "midpoint", "choice", "2nd-order correction: midpoint (k-diffusion's, "
                     "diffusers' and the web UIs' default) or heun", choices=SOLVER_TYPES, label="Solver type")


def _first_order(x: torch.Tensor, x0: torch.Tensor, s: float, s_next: float, h: float, eta: float) -> tuple:
    """(b_{t'}/b_t) e^{−ηh} x + a_{t'} (1 − e^{−H}) x̂₀, and a_{t'}, H = (1 + η) h."""
    a_t, a_s = 1.0 / math.sqrt(s_next**2 + 1.0), 1.0 / math.sqrt(s * s + 1.0)
    big_h = (1.0 + eta) * h
    x = (s_next * a_t) / (s * a_s) * math.exp(-eta * h) * x + a_t * -math.expm1(-big_h) * x0
    return x, a_t, big_h


def _noise(x: torch.Tensor, noise: NoiseSource, noise_type: str, plan: Plan, i: int, h: float,
           eta: float) -> torch.Tensor:
    """+ b_{t'} √(1 − e^{−2ηh}) z, z the step's noise (:func:`~.base.sde_noise`)."""
    if not eta:
        return x
    s, s_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
    b_t = s_next / math.sqrt(s_next**2 + 1.0)
    z = sde_noise(noise, noise_type, plan, i, tuple(x.shape), s, s_next)
    return x + z * (b_t * math.sqrt(-math.expm1(-2.0 * eta * h)))


def _log_step(plan: Plan, i: int) -> float:
    """h of step i: log σ_i − log σ_{i+1}."""
    return math.log(float(plan.sigmas[i])) - math.log(float(plan.sigmas[i + 1]))


def sample_dpmpp_2m_sde(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, solver_type: str, noise_type: str,
) -> Iterator[StepRecord]:
    def update(i: int, x: torch.Tensor, x0: torch.Tensor, s: float, s_next: float, earlier: list) -> torch.Tensor:
        h = _log_step(plan, i)
        x, a_t, big_h = _first_order(x, x0, s, s_next, h, eta)
        if earlier[0] is not None and i > 0:
            r = _log_step(plan, i - 1) / h
            phi = -math.expm1(-big_h)
            coef = phi / -big_h + 1.0 if solver_type == "heun" else 0.5 * phi
            x = x + a_t * coef / r * (x0 - earlier[0])
        return _noise(x, noise, noise_type, plan, i, h, eta)

    return x0_multistep("dpmpp_2m_sde", denoiser, x, plan, start, carry, ("prev_x0",), update)


def sample_dpmpp_3m_sde(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, noise_type: str,
) -> Iterator[StepRecord]:
    def update(i: int, x: torch.Tensor, x0: torch.Tensor, s: float, s_next: float, earlier: list) -> torch.Tensor:
        x0_1, x0_2 = earlier
        h = _log_step(plan, i)
        x, a_t, big_h = _first_order(x, x0, s, s_next, h, eta)
        phi_2 = math.expm1(-big_h) / big_h + 1.0
        if x0_2 is not None and i > 1:
            r0, r1 = _log_step(plan, i - 1) / h, _log_step(plan, i - 2) / h
            d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / big_h - 0.5
            x = x + a_t * (phi_2 * d1 - phi_3 * d2)
        elif x0_1 is not None and i > 0:
            x = x + a_t * phi_2 / (_log_step(plan, i - 1) / h) * (x0 - x0_1)
        return _noise(x, noise, noise_type, plan, i, h, eta)

    return x0_multistep("dpmpp_3m_sde", denoiser, x, plan, start, carry, ("prev_x0", "prev2_x0"), update)
