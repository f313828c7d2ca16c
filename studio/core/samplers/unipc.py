"""UniPC: a unified predictor–corrector for the diffusion ODE (Zhao et al. 2023, "UniPC", Alg. 2 and 3, data
prediction with B(h)), as diffusers' ``UniPCMultistepScheduler`` (docs/maths.md, "UniPC").

With λ = −log σ, a = 1/√(1+σ²), b = σ a, h = λ_{t'} − λ_t and x̂₀ the data predictions m of earlier steps,
both stages are the exponential-integrator step plus a B(h)-weighted sum of divided differences:

    x_{t'} = (b_{t'}/b_t) x_t + a_{t'} (1 − e^{−h}) m_t − a_{t'} B(h) Σ_k ρ_k (m_{s_k} − m_t)/r_k,
    r_k = (λ_{s_k} − λ_t)/h,   B(h) = −h (bh1) or e^{−h} − 1 (bh2)

- UniP-p (the predictor) uses the p − 1 previous m (ρ = 1/2 for p = 2, else R_{p−1} ρ = g_{p−1});
- UniC-p (the corrector), once the network has seen the predicted x_{t'}, redoes the step that reached it
  with m_{t'} as one more point (r = 1; ρ = 1/2 for p = 1, else R_p ρ = g_p), raising the order by one at no
  extra evaluation. R_p is the Vandermonde matrix of the r_k (rows r^0 … r^{p−1}), g_p the φ-function terms
  g_k = z φ_{k+1}(z) k!/B(h) at z = −h, with φ₁(z) = (e^z − 1)/z and φ_{k+1}(z) = (φ_k(z) − 1/k!)/z.

The order of step i is min(order, i + 1, steps − i) (a warm start and, as diffusers' ``lower_order_final``,
lower orders at the end); the step to σ = 0 returns x̂₀ (it is first order, and its correction would be
multiplied by b = 0). Records hold the predicted state; the carry keeps the corrected state the last
prediction started from and the previous x̂₀'s, so a run resumes exactly.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..records import StepRecord
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict

UNIPC_ORDER = Option("order", 2, "int", "how many earlier x̂₀ the multistep solver uses (UniPC: 2, diffusers' default "
                     "and the authors' choice for guided sampling; 3 for unguided; the corrector adds one)",
                     low=1, high=4, label="Order", step=1)
VARIANTS = ("bh1", "bh2")
UNIPC_VARIANT = Option("variant", "bh2", "choice", "UniPC's B(h): bh2 (diffusers' default; the authors' choice "
                       "for guided or ≥ 10-step sampling) or bh1 (A1111's default; for unguided sampling in few "
                       "steps)", choices=VARIANTS, label="Variant")


def _lam(sigma: float) -> float:
    return -math.log(sigma)


def _phi_terms(h: float, order: int, variant: str) -> tuple[float, float, np.ndarray]:
    """(e^{−h} − 1, B(h), g) for the data-prediction step of length h (UniPC's ``hh`` = −h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    g, factorial = [], 1
    for k in range(1, order + 1):
        g.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.array(g)


def _step(x: torch.Tensor, m0: torch.Tensor, earlier: Sequence[torch.Tensor], earlier_sigmas: Sequence[float],
          s: float, s_next: float, variant: str, m_next: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The UniP step from σ = s to s_next with m0 = x̂₀ at s and ``earlier`` x̂₀ (newest first) at
    ``earlier_sigmas``; with ``m_next`` (x̂₀ at the predicted point), the UniC step instead."""
    h = _lam(s_next) - _lam(s)
    rks = [(_lam(si) - _lam(s)) / h for si in earlier_sigmas]
    order = len(earlier) + 1  # the points: the earlier ones and (r = 1) the end of the step
    h_phi_1, b_h, g = _phi_terms(h, order, variant)
    vander = np.vander(np.array([*rks, 1.0]), order, increasing=True).T  # rows r^0 … r^{p−1}
    diffs = [(m - m0) / r for m, r in zip(earlier, rks)]
    if m_next is None:
        rhos = [0.5] if order == 2 else (np.linalg.solve(vander[:-1, :-1], g[:-1]) if order > 2 else [])
    else:
        rhos = [0.5] if order == 1 else np.linalg.solve(vander, g)
        diffs.append(m_next - m0)
    a_next, a = 1.0 / math.sqrt(s_next**2 + 1.0), 1.0 / math.sqrt(s * s + 1.0)
    out = (s_next * a_next) / (s * a) * x - (a_next * h_phi_1) * m0
    if diffs:
        out = out - (a_next * b_h) * sum(float(r) * d for r, d in zip(rhos, diffs))
    return out


def _order_at(i: int, steps: int, order: int) -> int:
    return min(order, i + 1, steps - i)


def sample_unipc(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, order: int, variant: str,
) -> Iterator[StepRecord]:
    carry = carry or {}
    last: Optional[torch.Tensor] = carry.get("last_state")  # the corrected state the last prediction left from
    history = [carry[f"x0_{k}"] for k in range(order) if f"x0_{k}" in carry]  # x̂₀ of steps i−1, i−2, … here
    sig = [float(v) for v in plan.sigmas]
    for i in range(start, plan.steps):
        s, s_next = sig[i], sig[i + 1]
        pred = predict(denoiser, x, plan, i)
        if s_next == 0:
            x_next = pred.x0
        else:
            if last is not None and i > 0:  # UniC: redo step i − 1 with the x̂₀ just seen at its end
                q = _order_at(i - 1, plan.steps, order)
                x = _step(last, history[0], history[1:q], [sig[i - 1 - k] for k in range(1, q)], sig[i - 1], s,
                          variant, m_next=pred.x0)
            p = _order_at(i, plan.steps, order)
            x_next = _step(x, pred.x0, history[: p - 1], [sig[i - k] for k in range(1, p)], s, s_next, variant)
        history = [pred.x0, *history][:order]
        last = x
        yield make_record("unipc", plan, i, x_next, pred, denoiser.nfe,
                          {"last_state": x, **{f"x0_{k}": m for k, m in enumerate(history)}})
        x = x_next
