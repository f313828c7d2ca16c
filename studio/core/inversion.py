"""DDIM inversion: the deterministic DDIM ODE run from an image x₀ up to its noise x_T.

Sampling step i of a plan (DDIM with η = 0, Song et al. 2021, eq. 12) takes x_i at ᾱ_i (the network at
timestep t_i) to x_{i+1} at ᾱ' (the plan's next point ᾱ_{i+1}, or diffusers' t_i − T//N with
``prev_timestep="stride"``, as ``samplers.ddpm.sample_ddim``)::

    x_{i+1} = √ᾱ' x̂₀ + √(1 − ᾱ') ε̂,   x̂₀ = (x_i − √(1 − ᾱ_i) ε̂) / √ᾱ_i,   ε̂ = ε̂(x_i, t_i)      (1)

Inversion runs the steps backwards, i = N−1 … 0, each from the known x_{i+1} to the unknown x_i. Solving
(1) for x_i gives the implicit equation (the ε form)::

    x_i = √(ᾱ_i/ᾱ') x_{i+1} + (√(1 − ᾱ_i) − √(ᾱ_i/ᾱ') √(1 − ᾱ')) ε̂(x_i, t_i) =: φ(x_i)           (2)

- Plain inversion (Song et al. 2021, §4.3: eq. 14's ODE run from t = 0 to T) evaluates ε̂ at the
  known state: ε̂(x_{i+1}, t_i), the network at the target timestep t_i and its output converted to ε̂ at
  the current level ᾱ', exactly as a loop over diffusers' ``DDIMInverseScheduler`` does. Each step then
  errs by O(Δt²) and the round trip x₀ → x_T → x₀ does not return the image.
- Fixed-point inversion (Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative
  Diffusion Inversion" (AIDI); Garibi et al. 2024, "ReNoise: Real Image Inversion Through Iterative
  Noising") refines the plain step by K iterations x^(k+1) = φ(x^(k)), ε̂ evaluated at the iterate
  (timestep t_i, level ᾱ_i). At a fixed point
  the sampling step (1) from x_i lands exactly on x_{i+1}, so the forward chain reproduces the image up
  to the iteration's last change (kept in each record's carry as ``fixed_point_change``, an RMS).
  Where ᾱ_i = 0 (the first step of a zero-terminal-SNR plan, Lin et al. 2024) ε̂(x) = x and (2) says
  nothing; the same equation is solved in its x̂₀ form instead, eliminating ε̂ from (1)::

      x_i = √((1 − ᾱ_i)/(1 − ᾱ')) (x_{i+1} − √ᾱ' x̂₀(x_i, t_i)) + √ᾱ_i x̂₀(x_i, t_i)                 (3)

No x̂₀ clipping or thresholding is applied, whatever the model's scheduler config says: (1) is the
inverse of an unclipped step only (a clipped x̂₀ is not a function the ODE can be run backwards through).
Guidance is the denoiser's own (classifier-free ε̃ = ε̂_u + w (ε̂_c − ε̂_u), guidance interval included,
at the fraction i/N of the sampling step being inverted), so a guided fixed-point inversion solves for the
x_T of the same guided DDIM run; guidance makes ε̂ vary faster with x, and the iteration converges more
slowly.

Every step yields a :class:`~studio.core.records.StepRecord`, walking the chain forwards: ``index`` j
inverts sampling step N−1−j; ``alpha_bar`` is the level it starts at, ``alpha_bar_next`` the one it
reaches; ``x`` the new state, ``x0`` the x̂₀ of its last evaluation; ``carry`` holds that ε̂ and the fixed
point's last change. ``nfe`` counts evaluations (1 + K a step).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import torch

from .denoiser import Denoiser
from .options import Option
from .records import StepRecord, check_finite
from .samplers.ddpm import stride_alpha_bar
from .schedule import Plan

INVERSION_METHODS = ("plain", "fixed-point")
INVERSION = Option("inversion", "plain", "choice", "DDIM inversion: plain (ε̂ at the known state, as diffusers' "
                   "DDIMInverseScheduler) or fixed-point (each step refined so that sampling reproduces the image; "
                   "Pan et al. 2023, Garibi et al. 2024)", choices=INVERSION_METHODS,
                   choice_labels=("plain", "fixed-point (exact)"), label="Inversion")
INVERSION_ITERS = Option("inversion_iters", 3, "int", "fixed-point inversion: refinements of each step after the "
                         "plain one (each costs one network evaluation)", low=0, high=50, label="Iterations")
INVERSION_SAMPLER = "ddim_inversion"  # the records' sampler name


class InversionError(ValueError):
    """Settings an inversion cannot use; one line."""


def check_method(method: str, iters: int) -> int:
    """The number of refinements a step gets: 0 for plain inversion, ``iters`` (checked) for fixed-point."""
    try:
        method = INVERSION.check(method)
        iters = INVERSION_ITERS.check(iters)
    except ValueError as e:
        raise InversionError(str(e)) from None
    return iters if method == "fixed-point" else 0


def step_levels(plan: Plan, prev_timestep: str = "plan", train_alpha_bars: Sequence[float] = (),
                final_alpha_bar: float = 1.0) -> list[float]:
    """ᾱ' where each sampling step i of ``plan`` lands (1): the plan's next point, or with ``"stride"``
    diffusers' t_i − T//N (``samplers.ddpm.stride_alpha_bar``). Inversion step for i starts there."""
    if prev_timestep == "stride":
        return [stride_alpha_bar(plan.timesteps[i], plan.steps, train_alpha_bars, final_alpha_bar)
                for i in range(plan.steps)]
    return [float(plan.alpha_bars[i + 1]) for i in range(plan.steps)]


def eps_form(x_from: torch.Tensor, eps: torch.Tensor, ab_from: float, ab_to: float) -> torch.Tensor:
    """Equation (2): the state at ᾱ_to whose DDIM step with ``eps`` lands on ``x_from`` at ᾱ_from."""
    r = math.sqrt(ab_to / ab_from)
    return r * x_from + (math.sqrt(1.0 - ab_to) - r * math.sqrt(1.0 - ab_from)) * eps


def x0_form(x_from: torch.Tensor, x0: torch.Tensor, ab_from: float, ab_to: float) -> torch.Tensor:
    """Equation (3): the same state from x̂₀ (used where ᾱ_to = 0, where ε̂ carries no information)."""
    return (math.sqrt((1.0 - ab_to) / (1.0 - ab_from)) * (x_from - math.sqrt(ab_from) * x0)
            + math.sqrt(ab_to) * x0)


def invert_ddim(denoiser: Denoiser, x0: torch.Tensor, plan: Plan, *, iters: int = 0, prev_timestep: str = "plan",
                train_alpha_bars: Sequence[float] = (), final_alpha_bar: float = 1.0) -> Iterator[StepRecord]:
    """Run the DDIM ODE of ``plan`` backwards from ``x0`` (the state at the plan's end) to its start, yielding
    one record per step; ``iters`` fixed-point refinements per step (0: plain inversion). The denoiser must
    not clip or threshold x̂₀ (module docstring)."""
    if denoiser.x0_mode != "none":
        raise InversionError(f"inversion runs the ODE without x̂₀ processing; the denoiser has x0_mode "
                             f"{denoiser.x0_mode!r}: build it with x0_mode='none'")
    n = plan.steps
    levels = step_levels(plan, prev_timestep, train_alpha_bars, final_alpha_bar)
    x = x0
    for j in range(n):
        i = n - 1 - j  # the sampling step this inverts
        ab_from, ab_to = levels[i], float(plan.alpha_bars[i])
        t, fraction = float(plan.timesteps[i]), i / n
        # plain step: the network at the target timestep on the known state, ε̂ at the current level
        pred = denoiser(x, t, ab_from, fraction)
        eps = pred.eps
        new = eps_form(x, eps, ab_from, ab_to)
        x0_hat = pred.x0
        change = math.nan
        refinable = ab_to > 0 or ab_from < 1  # (3) needs ᾱ' < 1 where ᾱ_i = 0
        for _ in range(iters if refinable else 0):
            check_finite(new, j)
            pred = denoiser(new, t, ab_to, fraction)
            eps = pred.eps
            nxt = eps_form(x, eps, ab_from, ab_to) if ab_to > 0 else x0_form(x, pred.x0, ab_from, ab_to)
            change = float((nxt - new).pow(2).mean().sqrt())
            new = nxt
            x0_hat = pred.x0
        check_finite(new, j)
        yield StepRecord(
            sampler=INVERSION_SAMPLER, index=j, steps=n,
            t=float(plan.timesteps[i + 1]) if i + 1 < n else -1.0,
            sigma=_sigma(ab_from), alpha_bar=ab_from,
            t_next=t, sigma_next=float(plan.sigmas[i]), alpha_bar_next=ab_to,
            x=new, x0=x0_hat, nfe=denoiser.nfe, guided=pred.guided,
            carry={"eps": eps, "fixed_point_change": change},
        )
        x = new


def _sigma(alpha_bar: float) -> float:
    return math.sqrt((1.0 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf


def invert(model, x0: torch.Tensor, steps: int, *, iters: int = 0, guidance=None, label: Optional[int] = None,
           prompt: Optional[str] = None, negative_prompt: Optional[str] = None,
           size: Optional[tuple[int, int]] = None, guidance_rescale: float = 0.0, spacing: Optional[str] = None,
           prev_timestep: str = "plan", schedule_overrides: Optional[dict] = None,
           plan: Optional[Plan] = None) -> Iterator[StepRecord]:
    """Invert ``x0`` (batch, C, h, w in the model's state space: pixels in [−1, 1], or a latent model's
    scaled latents) on the DDIM plan of ``steps`` steps, as ``engine.sample`` would sample it with the
    same settings (its conditioning and guidance); x̂₀ is never clipped (module docstring)."""
    from . import engine
    from .guidance import Guidance
    from .samplers import get_sampler
    from .samplers.ddpm import training_alpha_bars

    guidance = guidance or Guidance()
    if guidance.mode == "classifier" and guidance.classifier_form == "mean":
        raise InversionError("the mean-shift form of classifier guidance belongs to an ancestral step and has no "
                             "ODE to invert; use the eps form (--classifier-form eps)")
    spec = get_sampler("ddim")
    sched = engine.schedule_for(model, schedule_overrides)
    plan = plan or engine.model_plan(model, spec, steps, spacing, False, schedule_overrides)
    shape = engine.latent_shape(model, x0.shape[0], size)
    if tuple(x0.shape) != shape:
        raise InversionError(f"the image has shape {tuple(x0.shape)} but the model's state is {shape}")
    cond, uncond = engine.conditioning(model, label, x0.shape[0], guidance, prompt, negative_prompt, size)
    den = Denoiser(model, cond, guidance, "none", uncond=uncond, guidance_rescale=guidance_rescale)
    return invert_ddim(den, x0.to(model.device, torch.float32), plan, iters=iters, prev_timestep=prev_timestep,
                       **training_alpha_bars(sched))
