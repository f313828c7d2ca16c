"""Shared pieces of the samplers: the signature, the record builder, the registry entry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch

from ..denoiser import Denoiser, Prediction
from ..noise import NOISE_TYPES, NoiseSource
from ..options import Option, OptionError
from ..records import StepRecord, check_finite
from ..schedule import NoiseSchedule, Plan, sigma_to_t

# fn(denoiser, x, plan, noise, *, start=0, carry=None, **options) -> iterator of StepRecord;
# every declared option is passed (the engine fills in the declared defaults)
SamplerFn = Callable[..., Iterator[StepRecord]]


def one_evaluation(i: int, steps: int, options: Mapping[str, Any], plan: Optional[Plan] = None) -> int:
    return 1


# where an SDE sampler's noise comes from (k-diffusion's samplers that take a BrownianTreeNoiseSampler)
NOISE_TYPE = Option("noise_type", "per-step", "choice", "where the SDE steps' noise comes from: independent draws per "
                    "step, or increments of one Brownian motion per sample (k-diffusion's BrownianTreeNoiseSampler, "
                    "what the web UIs draw from; the same seed then gives related images at any step count)",
                    choices=NOISE_TYPES, choice_labels=("per step", "Brownian tree"), label="Noise")


def sde_noise(noise: NoiseSource, noise_type: str, plan: Plan, i: int, shape: tuple, sigma: float,
              sigma_next: float, draw: int = 0) -> torch.Tensor:
    """N(0, I) noise for the part of step i that goes from ``sigma`` to ``sigma_next``: the step's own draw
    ``draw`` (per-step), or the normalised increment of each sample's Brownian motion over [σ_next, σ] on the
    plan's σ range (brownian; :meth:`NoiseSource.brownian`), so that sub-steps sharing an interval share noise
    as k-diffusion's do."""
    if noise_type == "brownian":
        sig = np.asarray(plan.sigmas)
        return noise.brownian(sigma, sigma_next, shape, float(sig[sig > 0].min()), float(sig.max()))
    return noise.step(i, shape, draw)


# the families every sampler declares one of (``SamplerSpec.group``), in the order the sampler picker and
# `studio samplers` show them, each with the line that says what its members share
SAMPLER_GROUPS = {
    "ODE": "one-step solvers of the probability-flow ODE: the same noise gives the same image",
    "multistep": "ODE solvers that reuse earlier evaluations: a higher order for one evaluation a step",
    "ancestral": "a step past the next noise level, then fresh noise back up to it: each step forgets part of the last",
    "SDE": "solvers of the reverse SDE: fresh noise within every step (η scales it)",
    "consistency": "for consistency-distilled models (LCM, LCM-LoRA): x̂₀ in one evaluation, then fresh noise down "
                   "to the next level",
    "other": "predictor–corrector and restart samplers: extra noise-and-correct work on top of a reverse chain",
}


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler and everything the rest of the studio needs to know about it.

    ``options`` are declared once here (a tuple of :class:`Option`, kept as {name: Option}); the
    engine checks a run's options against them, and the recipe, the command line and the window
    take their defaults, ranges, choices and help from them. ``deterministic`` is the behaviour with
    the default options; ``noise_option`` names the option that scales the fresh noise of each step
    (0 makes the sampler deterministic). ``group`` is its family in ``SAMPLER_GROUPS`` (what the sampler
    picker and `studio samplers` group it under). ``step_evals(i, steps, options, plan)`` is the number of
    denoiser evaluations in step ``i`` of ``steps``; only a sampler whose extra work sits at a noise level
    (restart) reads the plan, and without one counts as if that level were in it. ``schedule_inputs``
    derives inputs from the model's training schedule that are not user options (the Langevin corrector's
    α_t). ``own_plan(schedule, steps, options)`` builds the timestep plan of a sampler that has one of its
    own (``plan_kind`` "own": LCM's skipping rule), from its resolved options.

    Capabilities (the help texts and refusals that name samplers are derived from them, never listed):
    ``takes_karras`` follows from ``plan_kind``; ``classifier_mean_shift`` says the sampler applies
    classifier guidance's mean form μ + s Σ ∇ log p_φ(y|x_t) (Dhariwal & Nichol 2021, Alg. 1), which
    needs an ancestral step with a Gaussian posterior of known variance Σ. ``for_consistency_models``
    says the sampler is meant for consistency-distilled models (Song et al. 2023; Luo et al. 2023): it
    does not discretise the reverse process of a diffusion model, so on one (the exact ``gmm``) its
    samples need not follow the model's distribution, and the accuracy tests against that truth leave
    it out."""

    name: str
    fn: SamplerFn
    description: str
    plan_kind: str  # "discrete" | "sigma" | "dpm" | "own": which timestep plan it runs on
    deterministic: bool
    options: Mapping[str, Option] = ()
    default_spacing: str = "leading"
    step_evals: Callable[[int, int, Mapping[str, Any], Optional[Plan]], int] = one_evaluation
    noise_option: Optional[str] = None
    schedule_inputs: Optional[Callable[[NoiseSchedule], dict]] = None
    classifier_mean_shift: bool = False
    group: str = ""
    own_plan: Optional[Callable[[NoiseSchedule, int, Mapping[str, Any]], Plan]] = None
    for_consistency_models: bool = False

    def __post_init__(self) -> None:
        if self.group not in SAMPLER_GROUPS:
            raise ValueError(f"sampler {self.name}: group {self.group!r} is not one of {', '.join(SAMPLER_GROUPS)}")
        opts = self.options
        if not isinstance(opts, Mapping):
            opts = {o.name: o for o in opts}
        object.__setattr__(self, "options", dict(opts))
        if self.noise_option is not None and self.noise_option not in self.options:
            raise ValueError(f"sampler {self.name}: noise_option {self.noise_option!r} is not one of its options")
        if (self.plan_kind == "own") != (self.own_plan is not None):
            raise ValueError(f"sampler {self.name}: plan_kind 'own' and own_plan go together")

    @property
    def takes_karras(self) -> bool:
        """Runs on a σ plan (σ-space or DPM-Solver), where Karras et al. 2022 σ spacing applies; a
        discrete-timestep sampler (ddpm, ddim, …) runs on integer timesteps instead, and one with a plan of its
        own (lcm) on that."""
        return self.plan_kind in ("sigma", "dpm")

    def resolve(self, options: Optional[Mapping[str, Any]] = None) -> dict:
        """Every option of this sampler: the given value (checked) or the declared default.

        Raises OptionError (one line) for a name the sampler does not declare or a value its
        declaration does not allow."""
        options = dict(options or {})
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise OptionError(f"sampler {self.name} has no option {unknown[0]!r}; "
                              f"its options: {', '.join(self.options) or 'none'}")
        return {name: opt.check(options[name]) if options.get(name) is not None else opt.default
                for name, opt in self.options.items()}

    def is_deterministic(self, options: Optional[Mapping[str, Any]] = None) -> bool:
        """Whether a run with these options draws no fresh noise after x_T."""
        if self.noise_option is None:
            return self.deterministic
        return self.resolve(options)[self.noise_option] == 0

    def evals(self, steps: int, options: Optional[Mapping[str, Any]] = None, plan: Optional[Plan] = None) -> int:
        """Denoiser evaluations (NFE) of a run of ``steps`` steps on ``plan``: the cost shown before a run.
        Without the plan, a restart's extra evaluations are counted as if its interval were in the plan."""
        opts = self.resolve(options)
        return sum(self.step_evals(i, steps, opts, plan) for i in range(steps))


def make_record(name: str, plan: Plan, i: int, x: torch.Tensor, pred: Prediction, nfe: int, carry: dict) -> StepRecord:
    """The record of step ``i``; ``nfe`` is the denoiser's own count (``Denoiser.nfe``)."""
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


def training_log_sigmas(sched: NoiseSchedule) -> dict:
    """log σ of every training timestep (finite at a zero-SNR ᾱ_T, as on the σ plans): the table that gives
    the network's timestep at a σ off the plan (:func:`predict_at`)."""
    return {"log_sigmas": np.log(sched.finite_terminal().sigmas)}


def predict_at(denoiser: Denoiser, x: torch.Tensor, plan: Plan, i: int, sigma: float,
               log_sigmas: np.ndarray) -> Prediction:
    """Evaluate the denoiser in step i at a σ that is not a plan point (a churned σ̂, a midpoint): ``x`` in VP
    scale, ᾱ = 1/(1+σ²), the network's timestep t(σ) interpolated in log σ over the training σ (k-diffusion's
    ``DiscreteSchedule.sigma_to_t``, diffusers' ``_sigma_to_t``)."""
    pred = denoiser(x, sigma_to_t(sigma, log_sigmas), 1.0 / (1.0 + sigma * sigma), i / plan.steps)
    check_finite(pred.x0, i, "x̂₀")
    return pred


__all__ = ["NOISE_TYPE", "SAMPLER_GROUPS", "SamplerSpec", "sde_noise", "Option", "make_record", "predict", "predict_at",
           "training_log_sigmas", "Denoiser", "NoiseSource", "Plan", "Prediction", "Optional"]
