"""Ancestral DDPM and DDIM: samplers on integer timesteps."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional, Sequence

import torch

from ..records import StepRecord
from ..schedule import NoiseSchedule
from .base import Denoiser, NoiseSource, Option, Plan, make_record, predict

VARIANCE_TYPES = ("fixed_small", "fixed_large")

VARIANCE = Option("variance", "fixed_small", "choice", "DDPM posterior variance: β̃ (fixed_small) or β (fixed_large), "
                  "Ho et al. 2020 §3.2", choices=VARIANCE_TYPES, choice_labels=("fixed small (β̃)", "fixed large (β)"),
                  label="Variance")
DDIM_ETA = Option("eta", 0.0, "float", "DDIM η: 0 deterministic, 1 the DDPM posterior variance (Song et al. 2021, "
                  "eq. 16)", low=0.0, high=1.0, label="η", step=0.1)
PREV_TIMESTEP_RULES = ("plan", "stride")
PREV_TIMESTEP = Option("prev_timestep", "plan", "choice", "where each DDIM step lands: the plan's next timestep "
                       "(plan), or t − T//N as diffusers' DDIMScheduler (stride; differs on trailing and linspace "
                       "spacing, diffusers issues #12633, #11347, #9261)", choices=PREV_TIMESTEP_RULES,
                       choice_labels=("next planned t", "t − T/N (diffusers)"), label="Step to")


def posterior(x: torch.Tensor, x0: torch.Tensor, ab: float, ab_prev: float, variance: str) -> tuple[torch.Tensor, float]:
    """q(x_{t'} | x_t, x̂₀) of Ho et al. 2020, eq. 6–7, with β_t generalised to 1 − ᾱ_t/ᾱ_{t'} for skipped steps.
    Returns the mean μ and the variance (β̃ for fixed_small, β for fixed_large)."""
    alpha = ab / ab_prev
    beta = 1.0 - alpha
    mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(alpha) * (1 - ab_prev) / (1 - ab)) * x
    var = max((1 - ab_prev) / (1 - ab) * beta, 1e-20) if variance == "fixed_small" else beta
    return mean, var


def sample_ddpm(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, variance: str,
) -> Iterator[StepRecord]:
    """Ancestral sampling, Ho et al. 2020, Alg. 2; classifier guidance's mean form is Dhariwal & Nichol 2021, Alg. 1
    (docs/maths.md, "DDPM" and "Classifier guidance")."""
    for i in range(start, plan.steps):
        ab, ab_prev = float(plan.alpha_bars[i]), float(plan.alpha_bars[i + 1])
        pred = predict(denoiser, x, plan, i)
        mean, var = posterior(x, pred.x0, ab, ab_prev, variance)
        if pred.grad is not None:  # μ + s Σ ∇ log p(y|x_t)
            mean = mean + pred.scale * var * pred.grad
        last = i == plan.steps - 1
        x = mean if last else mean + math.sqrt(var) * noise.step(i, tuple(x.shape))
        yield make_record("ddpm", plan, i, x, pred, denoiser.nfe, {})


def training_alpha_bars(sched: NoiseSchedule) -> dict:
    """ᾱ_t of every training timestep and the final ᾱ: where the ``stride`` rule's t − T//N lands."""
    return {"train_alpha_bars": sched.alphas_cumprod.tolist(), "final_alpha_bar": sched.final_alpha_cumprod}


def stride_alpha_bar(t: float, steps: int, train_alpha_bars: Sequence[float], final_alpha_bar: float) -> float:
    """ᾱ at diffusers' DDIMScheduler's previous timestep t − T//N (``DDIMScheduler.step``), the final ᾱ
    (``set_alpha_to_one``) once that is negative. On trailing and linspace spacing with N not dividing T it is
    not the plan's next timestep, and the last step can land on ᾱ_0 instead of the final ᾱ."""
    prev = int(t) - len(train_alpha_bars) // steps
    return float(train_alpha_bars[prev]) if prev >= 0 else float(final_alpha_bar)


def sample_ddim(
    denoiser: Denoiser, x: torch.Tensor, plan: Plan, noise: NoiseSource, *, start: int = 0,
    carry: Optional[dict] = None, eta: float, prev_timestep: str,
    train_alpha_bars: Sequence[float] = (), final_alpha_bar: float = 1.0,
) -> Iterator[StepRecord]:
    """DDIM, Song et al. 2021, eq. 12: x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,
    σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}) (eq. 16; docs/maths.md, "DDIM"). η = 0 is deterministic.

    t' is the plan's next timestep, or with ``prev_timestep="stride"`` diffusers' t − T//N
    (:func:`stride_alpha_bar`); the network still sees the plan's next timestep at the next step, as in
    diffusers, and the record's ᾱ_next and σ_next are those of the state actually reached."""
    stride = prev_timestep == "stride"
    for i in range(start, plan.steps):
        ab, ab_prev = float(plan.alpha_bars[i]), float(plan.alpha_bars[i + 1])
        if stride:
            ab_prev = stride_alpha_bar(plan.timesteps[i], plan.steps, train_alpha_bars, final_alpha_bar)
        pred = predict(denoiser, x, plan, i)
        std = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * pred.x0 + math.sqrt(max(1 - ab_prev - std**2, 0.0)) * pred.eps
        if std > 0:
            x = x + std * noise.step(i, tuple(x.shape))
        record = make_record("ddim", plan, i, x, pred, denoiser.nfe, {})
        if stride:
            record = dataclasses.replace(record, alpha_bar_next=ab_prev, sigma_next=math.sqrt((1 - ab_prev) / ab_prev))
        yield record
