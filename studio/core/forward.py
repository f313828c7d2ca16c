"""The forward process and where an image-to-image run starts (docs/maths.md, "The forward process").

q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4), so one draw ε ~ N(0, I) gives
x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε. SDEdit (Meng et al. 2022) noises a user's image to an intermediate t and
runs the reverse chain from there. The start is chosen as diffusers' ``StableDiffusionImg2ImgPipeline``
does: with a plan of N steps and strength s ∈ (0, 1], the run takes the plan's last int(N·s) steps,
starting at plan step N − int(N·s); or a plan step k given directly. The state is the variance-preserving
x_t at that plan point (ᾱ from the plan, so a σ plan's interpolated σ is used exactly, as diffusers'
``add_noise`` does with its sigmas); σ-space samplers scale it by √(1 + σ²) themselves.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .schedule import Plan


def start_index(steps: int, strength: Optional[float] = None, start_step: Optional[int] = None) -> int:
    """The plan step (0-based) an image-to-image run starts at: N − int(N·s), or ``start_step``."""
    if (strength is None) == (start_step is None):
        raise ValueError("give a strength or a start step, not both or neither")
    if start_step is not None:
        if not 0 <= start_step < steps:
            raise ValueError(f"start step {start_step} is beyond the plan: it has {steps} steps, 0..{steps - 1}")
        return int(start_step)
    if not 0 < strength <= 1:
        raise ValueError(f"strength {strength!r} is outside (0, 1]")
    run = int(steps * strength)  # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps
    if run < 1:
        raise ValueError(f"strength {strength:g} of {steps} steps leaves no step (int({steps}·{strength:g}) = 0); "
                         f"raise the strength to at least {1 / steps:.3g} or use more steps")
    return steps - run


def tail_plan(plan: Plan, start: int) -> Plan:
    """The plan from its point ``start`` on: the steps an image-to-image run takes."""
    if not 0 <= start < plan.steps:
        raise ValueError(f"start step {start} is beyond the plan: it has {plan.steps} steps, 0..{plan.steps - 1}")
    return Plan(plan.timesteps[start:].copy(), plan.sigmas[start:].copy(), plan.alpha_bars[start:].copy(),
                plan.spacing, plan.karras)


def noised(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x_t = √ᾱ x₀ + √(1 − ᾱ) ε, the forward process's draw at ᾱ (Ho et al. 2020, eq. 4)."""
    a = float(alpha_bar)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"ᾱ must lie in [0, 1], got {a!r}")
    return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * eps
