"""Guidance settings and the classifier gradient (docs/maths.md, "Classifier-free guidance" and
"Classifier guidance").

Classifier-free guidance (Ho & Salimans 2022): ε̃ = ε̂_u + w (ε̂_c − ε̂_u), with
w the diffusers/web-UI "guidance scale" (w = 1 is plain conditional sampling).
Classifier guidance (Dhariwal & Nichol 2021): Alg. 2's ε form
ε̂′ = ε̂ − s √(1−ᾱ_t) ∇ log p_φ(y|x_t) for any sampler, and Alg. 1's mean shift
μ + s Σ ∇ log p_φ(y|x_t) for ancestral DDPM.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import torch

GUIDANCE_MODES = ("none", "cfg", "classifier")
CLASSIFIER_FORMS = ("eps", "mean")
MAX_SCALE = 1000.0
# the scale a guided run takes when none is given and the model recommends none (its recommended.json):
# CFG w = 3, the usual diffusers / web-UI starting point (w = 1 is plain conditional sampling), and
# classifier s = 1, Dhariwal & Nichol's unscaled ∇ log p_φ(y|x_t): the exact conditional score when the
# classifier is exact (the gmm model's is)
FALLBACK_SCALES = {"cfg": 3.0, "classifier": 1.0}


class GuidanceError(ValueError):
    """A guidance setting that cannot be used."""


def default_scale(mode: str, recommended: Optional[Mapping[str, float]] = None) -> float:
    """The scale of guidance ``mode`` when none is given: the model's recommendation for it
    (``ModelInfo.recommended_scales``, read from its recommended.json), else ``FALLBACK_SCALES``.
    The window, ``studio sample`` and sweeps all start here, so one recipe gives one run everywhere."""
    if mode not in FALLBACK_SCALES:
        raise GuidanceError(f"guidance mode {mode!r} takes no scale; choose one of {', '.join(FALLBACK_SCALES)}")
    return float((recommended or {}).get(mode, FALLBACK_SCALES[mode]))


def fallback_text() -> str:
    """The fallback scales as words, for help texts: "cfg 3, classifier 1"."""
    return ", ".join(f"{mode} {scale:g}" for mode, scale in FALLBACK_SCALES.items())


@dataclass(frozen=True)
class Guidance:
    mode: str = "none"
    scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    classifier_form: str = "eps"

    def validate(self) -> "Guidance":
        if self.mode not in GUIDANCE_MODES:
            raise GuidanceError(f"unknown guidance mode {self.mode!r}; choose one of {', '.join(GUIDANCE_MODES)}")
        s = self.scale
        if not isinstance(s, (int, float)) or not math.isfinite(s):
            raise GuidanceError(f"guidance scale must be a finite number, got {s!r}")
        if s < 0:
            raise GuidanceError(f"guidance scale must be ≥ 0 (got {s}); use 0..{MAX_SCALE:g}")
        if s > MAX_SCALE:
            raise GuidanceError(f"guidance scale {s} is too large; use 0..{MAX_SCALE:g}")
        lo, hi = self.interval
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
            raise GuidanceError(f"guidance interval must satisfy 0 ≤ start < end ≤ 1, got {lo}..{hi}")
        if self.classifier_form not in CLASSIFIER_FORMS:
            raise GuidanceError(f"unknown classifier guidance form {self.classifier_form!r}; choose eps or mean")
        return self

    def active(self, fraction: float) -> bool:
        """Whether guidance applies at a step starting at ``fraction`` of the run (0 = first step)."""
        if self.mode == "none":
            return False
        lo, hi = self.interval
        return lo - 1e-9 <= fraction < hi - 1e-9

    def scale_at(self, fraction: float) -> float:
        """The effective scale at a step (1 for CFG / 0 for classifier when inactive)."""
        if self.mode == "cfg":
            return self.scale if self.active(fraction) else 1.0
        if self.mode == "classifier":
            return self.scale if self.active(fraction) else 0.0
        return 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interval"] = list(self.interval)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Guidance":
        return cls(d.get("mode", "none"), float(d.get("scale", 1.0)), tuple(d.get("interval", (0.0, 1.0))),
                   d.get("classifier_form", "eps")).validate()


def classifier_log_prob_grad(classifier, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """∇_x log p_φ(y | x_t) by autograd, in float32."""
    with torch.enable_grad():
        xi = x.detach().float().requires_grad_(True)
        logits = classifier(xi, t, sigma).float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(logp, xi)
    return grad.to(x.dtype)
