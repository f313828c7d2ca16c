"""Model + labels + guidance → (ε̂, x̂₀) at a point of the chain.

Every sampler calls a Denoiser; it converts the network output to ε̂ and x̂₀
(see ``prediction``), applies classifier-free or classifier guidance in ε
(one batched forward of [cond, uncond] for CFG; classifier guidance starts
from the unconditional ε where the model has a null label, so it samples
p(x) p(y|x)^s), and post-processes x̂₀
(clip / dynamic threshold). When x̂₀ was processed, the returned ε̂ is by default
re-derived from it, ε̂ = (x_t − √ᾱ x̂₀)/√(1−ᾱ), so that DDIM's update
√ᾱ' x̂₀ + √(1−ᾱ') ε̂ stays on the line through x_t and the processed x̂₀
(diffusers' DDIM ``use_clipped_model_output=True``). With ``eps_from_x0=False``
it is the guided but un-clipped ε̂ (diffusers' default). The consistent form is
what makes strong guidance work: a clipped x̂₀ beside an unclipped,
guidance-amplified ε̂ leaves noise in the image (README, "Conventions worth
knowing", gives the measured effect). The maths is in docs/maths.md
("Prediction conversions", "Classifier-free guidance", "Classifier guidance").

The denoiser is where function evaluations are counted: ``nfe`` goes up by one
per call (a CFG call is one evaluation of a doubled batch), and every sampler
records that count in its StepRecords.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .conditioning import join
from .guidance import Guidance, classifier_log_prob_grad
from .prediction import eps_to_x0, process_x0, to_epsilon, to_x0, x0_to_eps


@dataclass(frozen=True)
class Prediction:
    eps: torch.Tensor
    x0: torch.Tensor
    guided: bool = False
    grad: Optional[torch.Tensor] = None  # ∇ log p(y|x_t), for the mean-shift form only
    scale: float = 0.0
    # with ``keep_unguided``, where guidance acted: x̂₀ without it, from the same evaluation (CFG's
    # conditional half; classifier guidance's model output before the gradient), processed like ``x0``
    unguided_x0: Optional[torch.Tensor] = None


class Denoiser:
    def __init__(
        self,
        model,
        labels: Optional[torch.Tensor] = None,
        guidance: Guidance = Guidance(),
        x0_mode: str = "none",
        clip_range: float = 1.0,
        threshold_ratio: float = 0.995,
        threshold_max: float = 1.0,
        eps_from_x0: bool = True,
        uncond=None,
        guidance_rescale: float = 0.0,
        keep_unguided: bool = False,
    ):
        self.model = model
        self.keep_unguided = keep_unguided  # also return the unguided x̂₀ (Prediction.unguided_x0)
        self.guidance = guidance.validate()
        self.x0_mode = x0_mode
        self.clip_range = clip_range
        self.threshold_ratio = threshold_ratio
        self.threshold_max = threshold_max
        self.eps_from_x0 = eps_from_x0
        self.labels = labels
        self.guidance_rescale = float(guidance_rescale)
        self.nfe = 0
        info = model.info
        if uncond is None and info.null_label is not None and isinstance(labels, torch.Tensor):
            uncond = torch.full_like(labels, info.null_label)
        self.uncond = uncond  # the unconditional branch: the null label, or a negative/empty prompt
        if guidance.mode == "cfg" and uncond is None and info.null_label is None:
            raise ValueError(
                f"model {info.name!r} has no null class, so classifier-free guidance is not possible; "
                "use --guidance none or classifier"
            )
        if guidance.mode == "classifier" and getattr(model, "classifier", None) is None:
            raise ValueError(
                f"model {info.name!r} has no noise-aware classifier; pass --classifier PATH or choose another guidance"
            )
        if guidance.mode in ("cfg", "classifier") and labels is None:
            raise ValueError("guidance needs a class label; pass --label K")

    def _forward(self, x: torch.Tensor, t: float, labels: Optional[torch.Tensor], sigma: float) -> torch.Tensor:
        m = self.model
        tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
        out = m.predict(x.to(m.dtype), tt, labels, sigma)
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: float, alpha_bar: float, fraction: float) -> Prediction:
        """Predict at x_t (VP scale) with ᾱ = ``alpha_bar``, timestep ``t`` for the network."""
        self.nfe += 1
        a, b = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        sigma = b / a if a > 0 else math.inf  # ᾱ = 0: the first step of a zero-terminal-SNR schedule
        g = self.guidance
        ptype = self.model.info.prediction_type
        active = g.active(fraction)
        labels = self.labels
        null = self.model.info.null_label
        if g.mode == "cfg" and active and g.scale != 1.0:
            out_c, out_u = self._forward(torch.cat([x, x]), t, join(labels, self.uncond), sigma).chunk(2)
            # guided in the network's own parameterisation (linear, so the same as guiding ε̂), which is
            # where guidance rescale is defined (diffusers' rescale_noise_cfg)
            out = out_u + g.scale * (out_c - out_u)
            if self.guidance_rescale:
                out = rescale_guided(out, out_c, self.guidance_rescale)
            eps = to_epsilon(out, x, a, b, ptype)
            raw, unguided_raw = out, out_c
            guided = True
        else:
            if labels is None or g.mode == "classifier":
                # classifier guidance steers the unconditional model: p(x) p(y|x)^s
                if null is not None:
                    labels = torch.full((x.shape[0],), null, device=x.device, dtype=torch.long)
                elif self.uncond is not None:
                    labels = self.uncond
            raw = unguided_raw = self._forward(x, t, labels, sigma)
            eps = to_epsilon(raw, x, a, b, ptype)
            guided = g.mode == "cfg" and active
        grad = None
        if g.mode == "classifier" and active and g.scale != 0.0:
            tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
            grad = classifier_log_prob_grad(self.model.classifier, x, tt, self.labels, sigma)
            if g.classifier_form == "eps":
                eps = eps - g.scale * b * grad
                grad = None
            guided = True
        # at ᾱ = 0 (pure noise) x̂₀ cannot come from ε̂ (it divides by √ᾱ); the network's own output gives it
        # (v-prediction: x̂₀ = −v̂), as diffusers' schedulers compute it
        x0 = to_x0(raw, x, a, b, ptype) if a == 0 else eps_to_x0(eps, x, a, b)
        unguided = to_x0(unguided_raw, x, a, b, ptype) if self.keep_unguided and guided else None
        if self.x0_mode != "none":
            x0 = process_x0(x0, self.x0_mode, self.clip_range, self.threshold_ratio, self.threshold_max)
            if unguided is not None:
                unguided = process_x0(unguided, self.x0_mode, self.clip_range, self.threshold_ratio, self.threshold_max)
            if self.eps_from_x0:
                eps = x0_to_eps(x0, x, a, b)
        return Prediction(eps, x0, guided, grad, g.scale_at(fraction), unguided)


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", eq. 15–16): scale the guided output to the conditional output's per-sample standard
    deviation, then mix φ of that with 1 − φ of the plain guided output."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided
