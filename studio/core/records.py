"""The immutable per-step record every sampler yields."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class StepRecord:
    """One completed step of a reverse chain.

    ``x`` is the state after the update, in the variance-preserving scale of
    x_t = √ᾱ x₀ + √(1−ᾱ) ε, at the next point of the plan (``t_next``; at the end
    of a run ᾱ = 1 and x is the sample). ``x0`` is the clean image predicted at
    this step. ``carry`` holds what the sampler needs to continue exactly from
    here (its internal state and any multistep memory).
    """

    sampler: str
    index: int
    steps: int
    t: float
    sigma: float
    alpha_bar: float
    t_next: float
    sigma_next: float
    alpha_bar_next: float
    x: torch.Tensor
    x0: torch.Tensor
    nfe: int
    guided: bool = False
    carry: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Fraction of the run completed after this step."""
        return (self.index + 1) / self.steps


class SamplingError(RuntimeError):
    """A run that cannot continue (for example the chain became NaN or inf)."""


def check_finite(x: torch.Tensor, index: int, what: str = "x_t") -> None:
    # a sum is one cheap pass and is NaN/inf whenever an element is; only then (or on overflow of a
    # huge but finite state) is the exact element-wise test run
    if not math.isfinite(float(x.sum())) and not torch.isfinite(x).all():
        raise SamplingError(
            f"the chain produced NaN or inf in {what} at step {index + 1}; lower the guidance scale or steps size, "
            "or try another sampler"
        )
