"""Shared pieces of the samplers: the signature, the record builder, the registry entry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from ..denoiser import Denoiser, Prediction
from ..noise import NoiseSource
from ..records import StepRecord, check_finite
from ..schedule import Plan

# fn(denoiser, x, plan, noise, *, start=0, carry=None, **options) -> iterator of StepRecord
SamplerFn = Callable[..., Iterator[StepRecord]]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: SamplerFn
    description: str
    plan_kind: str  # "discrete" | "sigma" | "dpm": which timestep plan it runs on
    deterministic: bool
    options: tuple[str, ...] = ()
    default_spacing: str = "leading"
    evals_per_step: Callable[[int], int] = field(default=lambda steps: steps)


def make_record(name: str, plan: Plan, i: int, x: torch.Tensor, pred: Prediction, nfe: int, carry: dict) -> StepRecord:
    check_finite(x, i)
    return StepRecord(
        sampler=name,
        index=i,
        steps=plan.steps,
        t=float(plan.timesteps[i]),
        sigma=float(plan.sigmas[i]),
        alpha_bar=float(plan.alpha_bars[i]),
        t_next=float(plan.timesteps[i + 1]) if i + 1 < plan.steps else -1.0,
        sigma_next=float(plan.sigmas[i + 1]),
        alpha_bar_next=float(plan.alpha_bars[i + 1]),
        x=x,
        x0=pred.x0,
        nfe=nfe,
        guided=pred.guided,
        carry=carry,
    )


def predict(denoiser: Denoiser, x: torch.Tensor, plan: Plan, i: int, at_next: bool = False) -> Prediction:
    """Evaluate the denoiser at plan point i (or i+1 for a corrector/2nd-order evaluation)."""
    j = i + 1 if at_next else i
    pred = denoiser(x, float(plan.timesteps[j]), float(plan.alpha_bars[j]), i / plan.steps)
    check_finite(pred.x0, i, "x̂₀")
    return pred


__all__ = ["SamplerSpec", "make_record", "predict", "Denoiser", "NoiseSource", "Plan", "Optional"]
