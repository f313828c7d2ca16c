"""Latent Consistency Model sampling (Luo et al. 2023, "Latent Consistency Models", Alg. 3, multistep
consistency sampling; Song et al. 2023, "Consistency Models", Alg. 1), as diffusers' ``LCMScheduler``.

A consistency model f(x_t, t) maps any point of a probability-flow trajectory to its start. LCM parameterises it
with the boundary conditions of Song et al. 2023, eq. 8 (σ_data = 0.5, the timestep scaled by 10 as LCM was
distilled; diffusers' ``timestep_scaling``):

    f(x_t, t) = c_skip(t) x_t + c_out(t) x̂₀(x_t, t),  c_skip = σ_d²/((10t)² + σ_d²),  c_out = 10t/√((10t)² + σ_d²)

so that f(x, 0) = x. Each step evaluates f once and, except on the last step, noises the result forward to the
next timestep with fresh noise, x_{t'} = √ᾱ_{t'} f(x_t, t) + √(1 − ᾱ_{t'}) z; the last step returns f itself.

The timesteps are LCM's own (:func:`lcm_plan`): the distillation's skipping schedule of
``original_inference_steps`` timesteps k−1, 2k−1, …, T−1 (k = T // original_inference_steps; Luo et al. 2023,
§4.3 "skipping-step"), of which ``steps`` are taken at evenly spaced indices. The spacing and Karras settings of
the other samplers do not apply.

This is not a solver of the probability-flow ODE: run on a diffusion model it returns re-noised posterior means,
not samples of the model's distribution, which is why its registry entry is flagged ``for_consistency_models``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from ..records import StepRecord
from ..schedule import MAX_TRAIN_TIMESTEPS, NoiseSchedule, Plan, ScheduleError, _check_steps
from .base import Denoiser, NoiseSource, Option, make_record, predict

ORIGINAL_STEPS = Option("original_inference_steps", 50, "int", "length of the distillation's timestep schedule "
                        "the steps are taken from (diffusers' LCMScheduler; LCM and LCM-LoRA were distilled on 50)",
                        low=1, high=MAX_TRAIN_TIMESTEPS, label="Original steps", step=1)
SIGMA_DATA = 0.5  # Song et al. 2023, eq. 8
TIMESTEP_SCALING = 10.0  # diffusers' LCMScheduler default, the scaling LCM was distilled with


def lcm_plan(sched: NoiseSchedule, steps: int, options: Mapping[str, Any]) -> Plan:
    """diffusers ``LCMScheduler.set_timesteps(steps, original_inference_steps=…)``: the origin schedule
    (1, 2, …, n)·k − 1 with k = T // n, reversed, at indices ⌊linspace(0, n, steps, endpoint=False)⌋. The chain
    ends at ᾱ = 1: the last step returns the consistency function's x̂₀."""
    _check_steps(sched, steps, "leading")
    n, total = options["original_inference_steps"], sched.num_train_timesteps
    if n > total:
        raise ScheduleError(f"original_inference_steps ({n}) cannot exceed the model's {total} training timesteps")
    if steps > n:
        raise ScheduleError(f"LCM takes at most original_inference_steps = {n} steps; use fewer steps or raise "
                            "original_inference_steps")
    origin = (np.arange(1, n + 1) * (total // n) - 1)[::-1]
    ts = origin[np.floor(np.linspace(0, n, steps, endpoint=False)).astype(np.int64)]
    ab = np.array([sched.alpha_bar(int(t)) for t in ts] + [1.0], dtype=np.float64)
    with np.errstate(divide="ignore"):  # ᾱ = 0 (zero terminal SNR): σ = ∞
        sig = np.sqrt((1 - ab) / ab)
    return Plan(ts.astype(np.float64), sig, ab, "lcm")


def boundary_scalings(t: float) -> tuple[float, float]:
    """(c_skip, c_out) at timestep t (Song et al. 2023, eq. 8, with LCM's timestep scaling)."""
    scaled = t * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / math.sqrt(scaled**2 + SIGMA_DATA**2)
    return c_skip, c_out


def sample_lcm(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, original_inference_steps: int,
) -> Iterator[StepRecord]:
    """Multistep consistency sampling (Luo et al. 2023, Alg. 3): f(x_t, t) with the boundary conditions, then
    x_{t'} = √ᾱ_{t'} f + √(1 − ᾱ_{t'}) z; the last step returns f. The record's x̂₀ is f. The state is x_t itself
    (no memory), so a run resumes exactly from any record. ``original_inference_steps`` acts through the plan."""
    for i in range(start, plan.steps):
        pred = predict(denoiser, x, plan, i)
        c_skip, c_out = boundary_scalings(float(plan.timesteps[i]))
        f = c_out * pred.x0 + c_skip * x
        if i < plan.steps - 1:
            ab_next = float(plan.alpha_bars[i + 1])
            x = math.sqrt(ab_next) * f + math.sqrt(1.0 - ab_next) * noise.step(i, tuple(x.shape))
        else:
            x = f
        yield make_record("lcm", plan, i, x, dataclasses.replace(pred, x0=f), denoiser.nfe, {})
