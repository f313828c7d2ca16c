"""Conversions between model outputs and (ε̂, x̂₀), and x̂₀ post-processing (docs/maths.md,
"Prediction conversions").

With x_t = a x₀ + b ε, a = √ᾱ_t, b = √(1−ᾱ_t) (Ho et al. 2020, eq. 4):
  epsilon:      x̂₀ = (x_t − b ε̂) / a
  v_prediction: x̂₀ = a x_t − b v̂,  ε̂ = b x_t + a v̂   (Salimans & Ho 2022, §4)
  sample:       ε̂ = (x_t − a x̂₀) / b
"""
from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
X0_MODES = ("none", "clip", "threshold")


def to_epsilon(output: torch.Tensor, x: torch.Tensor, a: float, b: float, prediction_type: str) -> torch.Tensor:
    """The model's output as a noise prediction ε̂."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return b * x + a * output
    if prediction_type == "sample":
        return x0_to_eps(output, x, a, b)
    raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def to_x0(output: torch.Tensor, x: torch.Tensor, a: float, b: float, prediction_type: str) -> torch.Tensor:
    """The model's output as a clean-image prediction x̂₀."""
    if prediction_type == "epsilon":
        return (x - b * output) / a
    if prediction_type == "v_prediction":
        return a * x - b * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, a, b, prediction_type: str) -> torch.Tensor:
    """What a model of ``prediction_type`` outputs for x_t = a x₀ + b ε: the inverse of :func:`to_x0`
    and :func:`to_epsilon`, i.e. the training target (v = a ε − b x₀); ``a``, ``b`` may be tensors
    that broadcast against ``x0``."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - b * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def eps_to_x0(eps: torch.Tensor, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return (x - b * eps) / a


def x0_to_eps(x0: torch.Tensor, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return (x - a * x0) / b


def score_from_eps(eps: torch.Tensor, b: float) -> torch.Tensor:
    """∇ log p_t(x_t) = −ε̂ / √(1−ᾱ_t) (Song et al. 2021; Vincent 2011)."""
    return -eps / b


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Imagen dynamic thresholding (Saharia et al. 2022, §2.3): s = quantile(|x̂₀|, p),
    s ← clamp(s, 1, max_value), x̂₀ ← clamp(x̂₀, −s, s) / s, per sample."""
    dtype = x0.dtype
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def process_x0(x0: torch.Tensor, mode: str, clip_range: float = 1.0, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    if mode == "none":
        return x0
    if mode == "clip":
        return x0.clamp(-clip_range, clip_range)
    if mode == "threshold":
        return dynamic_threshold(x0, ratio, max_value)
    raise ValueError(f"unknown x̂₀ processing {mode!r}; choose one of {', '.join(X0_MODES)}")
