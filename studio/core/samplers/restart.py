"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Alg. 1), as the
authors' code and AUTOMATIC1111's "Restart" sampler (``modules/sd_samplers_extra.py``, contributed by the authors)
run it: Heun's method on the probability-flow ODE (Karras et al. 2022, Alg. 1), plus a restart interval
[t_min, t_max] in σ that is re-solved K times.

When the main chain reaches the plan's σ nearest t_min (σ_r, step i to plan point i + 1), each of the K restarts

1. adds forward noise to jump back up to t_max:  x ← x + S_noise √(t_max² − σ_r²) z  (the forward process
   from σ_r to t_max, so the marginal at t_max is the model's again), and
2. solves the ODE back down to σ_r with Heun steps on ``restart_steps`` Karras intervals (Karras et al. 2022,
   eq. 5, ρ = 7) from t_max to σ_r.

The forward noise contracts the accumulated error of the ODE solve (Xu et al. 2023, Thm. 2), while the ODE steps
keep each step's discretisation error small: better samples per evaluation than SDE samplers at moderate NFE.
Then the main chain goes on from σ_r. All of this is step i's work: its record is the state at σ_r after the
restarts, and its NFE includes their 2·K·restart_steps evaluations. The plan's σ_r is a positive σ of the plan; no
restart happens where it is not below t_max. K = 0 is plain Heun.

A1111 keeps the total number of Heun steps equal to the requested steps by shortening the main chain (and
restarts only from 20 steps up); here ``steps`` is the main chain's length and the restarts come on top.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import numpy as np
import torch

from ..records import StepRecord
from ..schedule import karras_sigmas
from .base import Denoiser, NoiseSource, Option, Plan, Prediction, predict, predict_at
from .kdiffusion import S_NOISE, sigma_steps, to_vp, two_but_the_last

RESTART_TIMES = Option("restart_times", 1, "int", "K: how often the restart interval is re-solved (Xu et al. 2023, "
                       "Alg. 1; A1111 takes 1, and 2 from 36 steps); 0 none (then it is Heun)", low=0, high=10,
                       label="Restarts (K)", step=1)
RESTART_STEPS = Option("restart_steps", 9, "int", "Heun steps of each re-solve, on Karras σ from t_max down to the "
                       "restart point (A1111 takes 9)", low=1, high=100, label="Restart steps", step=1)
RESTART_SIGMA_MIN = Option("restart_sigma_min", 0.1, "float", "t_min: the restarts come when the chain reaches the "
                           "plan's σ nearest this (Xu et al. 2023's and A1111's 0.1 for Stable Diffusion)",
                           low=0.0, low_open=True, high=2.0, label="Restart t_min", step=0.01)
RESTART_SIGMA_MAX = Option("restart_sigma_max", 2.0, "float", "t_max: the σ each restart's forward noise jumps back "
                           "up to (Xu et al. 2023's and A1111's 2); no restart where it is not above the restart point",
                           low=0.0, low_open=True, high=100.0, label="Restart t_max", step=0.1)
RESTART_S_NOISE = dataclasses.replace(S_NOISE, help="scale of each restart's forward noise (1: the forward process "
                                      "exactly, as A1111)")
RESTART = (RESTART_TIMES, RESTART_STEPS, RESTART_SIGMA_MIN, RESTART_SIGMA_MAX, RESTART_S_NOISE)


def restart_index(plan: Plan, restart_sigma_min: float, restart_sigma_max: float) -> Optional[int]:
    """The plan point r the restarts return to (they come after step r − 1): the positive σ of the plan nearest
    t_min (the authors' ``argmin |t_steps − t_min|``), or None where that is the first point or not below t_max."""
    sig = np.asarray(plan.sigmas[:plan.steps], dtype=np.float64)
    candidates = np.where(sig > 0, np.abs(sig - restart_sigma_min), np.inf)
    r = int(np.argmin(candidates))
    if r == 0 or not np.isfinite(candidates[r]) or not sig[r] < restart_sigma_max:
        return None
    return r


def restart_evals(i: int, steps: int, options, plan: Optional[Plan] = None) -> int:
    """Heun's 2 evaluations (1 on the last step, to σ = 0), plus 2·K·restart_steps in the step that reaches the
    restart point. Without a plan (a cost estimate) those are counted with the last step."""
    n = two_but_the_last(i, steps, options)
    extra = 2 * options["restart_times"] * options["restart_steps"]
    if plan is None:
        return n + (extra if i == steps - 1 else 0)
    r = restart_index(plan, options["restart_sigma_min"], options["restart_sigma_max"])
    return n + (extra if r is not None and i + 1 == r else 0)


def sample_restart(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, restart_times: int, restart_steps: int, restart_sigma_min: float, restart_sigma_max: float, s_noise: float,
    log_sigmas: np.ndarray,
) -> Iterator[StepRecord]:
    """Heun steps between plan points, and K restarts of [σ_r, t_max] in the step reaching σ_r (module docstring).
    The restarts' noise is step i's draws 0 … K − 1, so a run resumes exactly from any record."""
    r = restart_index(plan, restart_sigma_min, restart_sigma_max) if restart_times else None

    def x0_at(xs: torch.Tensor, i: int, sigma: float, point: Optional[int]) -> torch.Tensor:
        """x̂₀ at state x_σ: at plan point ``point`` (i or i + 1) with its timestep, else at σ off the plan."""
        if point is not None:
            return predict(denoiser, to_vp(xs, sigma), plan, i, at_next=point == i + 1).x0
        return predict_at(denoiser, to_vp(xs, sigma), plan, i, sigma, log_sigmas).x0

    def heun(xs: torch.Tensor, i: int, x0: torch.Tensor, sigma: float, target: float,
             target_point: Optional[int]) -> torch.Tensor:
        """Karras et al. 2022, Alg. 1: an Euler step from σ to ``target``, corrected by the slope there."""
        d = (xs - x0) / sigma
        x2 = xs + d * (target - sigma)
        d2 = (x2 - x0_at(x2, i, target, target_point)) / target
        return xs + (d + d2) / 2 * (target - sigma)

    def step(i: int, xs: torch.Tensor, s: float, s_next: float) -> tuple[torch.Tensor, Prediction]:
        pred = predict(denoiser, to_vp(xs, s), plan, i)
        xs = xs + (xs - pred.x0) / s * (s_next - s) if s_next == 0 else heun(xs, i, pred.x0, s, s_next, i + 1)
        if r is not None and i + 1 == r:
            levels = karras_sigmas(s_next, restart_sigma_max, restart_steps + 1)
            levels[-1] = s_next  # the restart returns to the plan point itself
            jump = s_noise * math.sqrt(restart_sigma_max**2 - s_next**2)
            for k in range(restart_times):
                xs = xs + noise.step(i, tuple(xs.shape), draw=k) * jump
                for j in range(restart_steps):
                    a, b = float(levels[j]), float(levels[j + 1])
                    last = j == restart_steps - 1
                    xs = heun(xs, i, x0_at(xs, i, a, None), a, b, i + 1 if last else None)
        return xs, pred

    return sigma_steps("restart", denoiser, x, plan, start, carry, step)
