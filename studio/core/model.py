"""What the engine needs from a diffusion model, whatever its origin."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch


@dataclass
class ModelInfo:
    name: str
    sample_size: int
    in_channels: int
    prediction_type: str = "epsilon"
    num_classes: int = 0  # real classes a user can ask for; 0 = unconditional
    null_label: Optional[int] = None  # label fed for the unconditional pass, if trained with one
    class_names: list[str] = field(default_factory=list)
    scheduler_config: dict = field(default_factory=dict)
    source: str = ""
    has_classifier: bool = False
    # guidance scales the model's authors recommend, by guidance mode ("cfg", "classifier"); from the
    # folder's recommended.json ({"cfg_scale": w, "classifier_scale": s})
    recommended_scales: dict = field(default_factory=dict)
    # text-to-image latent pipelines (Stable Diffusion family); empty / 1 / 0 for pixel-space models
    pipeline: str = ""  # "StableDiffusionPipeline" | "StableDiffusionXLPipeline"
    vae_scale_factor: int = 1  # image pixels per latent pixel
    text_encoders: list[str] = field(default_factory=list)  # one line each: class, hidden size, layers
    max_prompt_tokens: int = 0
    sample_prompt: str = ""  # a prompt to start from (the folder's recommended.json "prompt")

    @property
    def text_conditioned(self) -> bool:
        return bool(self.pipeline)

    @property
    def image_size(self) -> int:
        """Side of the images it makes, in pixels (latent side × the VAE's scale factor)."""
        return self.sample_size * self.vae_scale_factor

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def describe(self) -> str:
        sc = self.scheduler_config
        classes = (
            f"{self.num_classes} ({', '.join(self.class_names)})" if self.class_names else str(self.num_classes)
        ) if self.num_classes else "none (unconditional)"
        lines = [
            f"model:           {self.name}",
            f"source:          {self.source}",
        ]
        if self.text_conditioned:
            f = self.vae_scale_factor
            lines += [
                f"pipeline:        {self.pipeline} (text-conditioned latent diffusion)",
                f"image size:      {self.image_size}x{self.image_size} (default; width and height: multiples of {f})",
                f"latents:         {self.in_channels}x{self.sample_size}x{self.sample_size} (VAE scale factor {f})",
                *[f"text encoder:    {t}" for t in self.text_encoders],
                f"prompt length:   {self.max_prompt_tokens} tokens (longer prompts are cut)",
            ]
        else:
            lines += [
                f"resolution:      {self.sample_size}x{self.sample_size}",
                f"channels:        {self.in_channels}",
                f"classes:         {classes}",
                f"null label:      {self.null_label if self.null_label is not None else 'none (no classifier-free guidance)'}",
            ]
        lines += [
            f"classifier:      {'yes (classifier guidance available)' if self.has_classifier else 'none'}",
            f"prediction type: {self.prediction_type}",
            f"schedule:        {sc.get('beta_schedule', 'linear')} betas {sc.get('beta_start', 0.0001)}..{sc.get('beta_end', 0.02)}, "
            f"{sc.get('num_train_timesteps', 1000)} timesteps",
            f"spacing:         {sc.get('timestep_spacing', 'sampler default')}"
            + (", zero terminal SNR" if sc.get("rescale_betas_zero_snr") else ""),
            f"clip x0:         {bool(sc.get('clip_sample', False))}, thresholding: {bool(sc.get('thresholding', False))}",
        ]
        if self.sample_prompt:
            lines.append(f"sample prompt:   {self.sample_prompt}")
        if self.recommended_scales:
            lines.append("recommended:     " + ", ".join(f"{m} scale {v:g}" for m, v in self.recommended_scales.items()))
        return "\n".join(lines)


class Classifier(Protocol):
    """A noise-aware classifier p_φ(y | x_t): logits for x_t at timestep t (σ given for exact models)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor: ...


class DiffusionModel(Protocol):
    info: ModelInfo
    classifier: Optional[Classifier]
    device: torch.device
    dtype: torch.dtype

    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], sigma: float) -> torch.Tensor:
        """The raw network output (per ``info.prediction_type``) for x_t at timestep t."""
        ...


LabelFn = Callable[[int], torch.Tensor]
