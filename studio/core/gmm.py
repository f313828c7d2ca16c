"""An exact diffusion model: a class-labelled Gaussian mixture in image space.

With components (π_k, μ_k, s_k² I) and x_t = a x₀ + b ε (a = √ᾱ_t, b = √(1−ᾱ_t)),
p_t = Σ π_k N(a μ_k, v_k I), v_k = a² s_k² + b². Responsibilities r_k = p(k | x_t);
∇log p_t = Σ r_k (a μ_k − x_t)/v_k; ε* = −b ∇log p_t; p(y | x_t) = r_y exactly.
Every quantity the samplers need is closed-form, so sampler accuracy and guidance
can be checked against truth (docs/maths.md, "The exact Gaussian mixture").
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .model import ModelInfo

GMM_CLASS_NAMES = ["disc", "square", "cross", "stripes"]
GMM_WEIGHTS = [0.4, 0.3, 0.2, 0.1]
GMM_STDS = [0.10, 0.15, 0.20, 0.10]
GMM_COLOURS = [(0.9, 0.2, 0.2), (0.2, 0.8, 0.3), (0.25, 0.4, 0.95), (0.95, 0.85, 0.2)]


def template_images(size: int = 16) -> torch.Tensor:
    """Four small RGB templates in [−1, 1]: a disc, a square, a cross and stripes, each in its own colour."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    masks = [
        r < size * 0.32,
        (np.abs(yy - c) < size * 0.28) & (np.abs(xx - c) < size * 0.28),
        (np.abs(yy - c) < size * 0.1) | (np.abs(xx - c) < size * 0.1),
        (np.floor(xx / max(size // 8, 1)) % 2 == 0),
    ]
    out = []
    for m, col in zip(masks, GMM_COLOURS):
        img = np.full((3, size, size), -0.8)
        for ch in range(3):
            img[ch][m] = 2 * col[ch] - 1
        out.append(img)
    return torch.tensor(np.stack(out), dtype=torch.float64)


class GaussianMixtureModel:
    """The built-in ``gmm`` model: exact ε*, x̂₀*, p(y | x_t) for every t."""

    def __init__(self, means: Optional[torch.Tensor] = None, weights=GMM_WEIGHTS, stds=GMM_STDS,
                 class_names=GMM_CLASS_NAMES, scheduler_config: Optional[dict] = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.means = (template_images() if means is None else means.double())
        k = self.means.shape[0]
        self.weights = torch.tensor(list(weights), dtype=torch.float64)
        self.stds = torch.tensor(list(stds), dtype=torch.float64)
        if len(self.weights) != k or len(self.stds) != k or abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError("mixture weights must sum to 1 and match the number of components")
        self.device = torch.device(device)
        self.dtype = dtype
        c, h, w = self.means.shape[1:]
        self.info = ModelInfo(
            name="gmm", sample_size=h, in_channels=c, prediction_type="epsilon", num_classes=k, null_label=k,
            class_names=list(class_names), source="built-in exact Gaussian mixture",
            scheduler_config=scheduler_config or {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                                                  "num_train_timesteps": 1000, "clip_sample": False,
                                                  "prediction_type": "epsilon"},
            has_classifier=True,
        )
        self.classifier = self.class_logits
        self.means = self.means.to(self.device)
        self.weights = self.weights.to(self.device)
        self.stds = self.stds.to(self.device)

    def to(self, device=None, dtype=None) -> "GaussianMixtureModel":
        if device is not None:
            self.device = torch.device(device)
            self.means, self.weights, self.stds = (v.to(self.device) for v in (self.means, self.weights, self.stds))
        if dtype is not None:
            self.dtype = dtype
        return self

    @property
    def dim(self) -> int:
        return int(self.means[0].numel())

    # -- closed forms ---------------------------------------------------------
    @staticmethod
    def _ab(sigma: float) -> tuple[float, float]:
        a = 1.0 / math.sqrt(1.0 + sigma * sigma)
        return a, sigma * a

    def component_log_densities(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log π_k + log N(x; a μ_k, v_k I) for every sample and component, shape (B, K)."""
        a, b = self._ab(sigma)
        xf = x.to(torch.float64).reshape(x.shape[0], 1, -1)
        mu = (a * self.means).reshape(1, self.means.shape[0], -1)
        v = a * a * self.stds**2 + b * b
        sq = ((xf - mu) ** 2).sum(-1)
        return torch.log(self.weights) - sq / (2 * v) - 0.5 * self.dim * torch.log(2 * math.pi * v)

    def responsibilities(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.softmax(self.component_log_densities(x, sigma), dim=-1)

    def score(self, x: torch.Tensor, sigma: float, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """∇ log p_t(x) of the mixture, or of component y where ``labels`` names one (null = mixture)."""
        a, b = self._ab(sigma)
        k = self.means.shape[0]
        xf = x.to(torch.float64)
        r = self.responsibilities(xf, sigma)
        if labels is not None:
            onehot = torch.nn.functional.one_hot(labels.clamp(max=k - 1).long(), k).to(torch.float64)
            cond = (labels < k).view(-1, 1)
            r = torch.where(cond, onehot, r)
        v = a * a * self.stds**2 + b * b
        per = (a * self.means.unsqueeze(0) - xf.unsqueeze(1)) / v.view(1, k, 1, 1, 1)
        return (r.view(*r.shape, 1, 1, 1) * per).sum(1)

    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], sigma: float) -> torch.Tensor:
        """Exact ε* = −b ∇log p_t(x_t)."""
        _, b = self._ab(sigma)
        return (-b * self.score(x, sigma, labels)).to(x.dtype)

    def x0(self, x: torch.Tensor, sigma: float, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact x̂₀* = E[x₀ | x_t] = (x_t + b² ∇log p_t) / a (Tweedie)."""
        a, b = self._ab(sigma)
        return ((x.double() + b * b * self.score(x, sigma, labels)) / a).to(x.dtype)

    def class_logits(self, x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact classifier: softmax of these logits is p(y | x_t) (differentiable)."""
        return self.component_log_densities(x, sigma).to(x.dtype)

    def sample_exact(self, n: int, generator: torch.Generator, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n clean samples from the mixture (or from the given components)."""
        if labels is None:
            labels = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        x = self.means.cpu()[labels] + self.stds.cpu()[labels].view(-1, 1, 1, 1) * z
        return x.float(), labels

    def nearest_component(self, x: torch.Tensor) -> torch.Tensor:
        """The component whose clean density is highest at x (the class of a finished sample)."""
        return self.component_log_densities(x, 0.0).argmax(-1)
