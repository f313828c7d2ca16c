"""The start of an image-to-image run (SDEdit, Meng et al. 2022): a recipe's image, noised to its start step.

The image is opened and fitted by ``core.images`` (its conversions come back as notes for the user), encoded
to the model's x₀ (a latent model's VAE mean), repeated over the batch and noised by the forward process
x_t = √ᾱ x₀ + √(1 − ᾱ) ε at the first point of the run's plan, with ε the seed's initial noise
(``NoiseSource.initial``, the x_T an ordinary run with that seed starts from; so strength 1 is that run up
to the √ᾱ_T x₀ the schedule leaves). The recipe records the image's SHA-256; a replay whose image has
changed is refused (one line), since the run would not be the one recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import engine, images
from ..core.forward import noised
from ..core.noise import NoiseSource
from ..core.schedule import Plan
from .provenance import image_sha256
from .recipe import Recipe, RecipeError


@dataclass(frozen=True)
class ImageStart:
    """x₀ (batch, C, h, w) in the model's state space, the noised state at the plan's first point, the image's
    SHA-256 and the conversion notes."""

    x0: torch.Tensor
    state: torch.Tensor
    sha256: str
    notes: tuple[str, ...]


def checked_sha256(recipe: Recipe) -> str:
    """The image's SHA-256, refused (RecipeError) when the recipe recorded another."""
    digest = image_sha256_or_error(recipe.init_image)
    if recipe.init_image_sha256 is not None and recipe.init_image_sha256.lower() != digest:
        raise RecipeError(f"init_image: {recipe.init_image} is not the image this recipe was made with (SHA-256 "
                          f"{digest[:12]}…, recorded {recipe.init_image_sha256[:12]}…); use the original image, or "
                          "remove init_image_sha256 from the recipe to start from this one")
    return digest


def image_sha256_or_error(path: str) -> str:
    try:
        return image_sha256(path)
    except (OSError, ValueError) as e:
        raise RecipeError(f"init_image: {e}") from None


def open_x0(model, recipe: Recipe, size=None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The recipe's image as the model's x₀ for one sample (1, C, h, w), and the conversion notes."""
    h, w = engine.image_size(model, size)
    try:
        fitted = images.open_image(recipe.init_image, (h, w), model.info.in_channels if not
                                   model.info.text_conditioned else 3, recipe.init_image_fit)
    except images.ImageError as e:
        raise RecipeError(f"init_image: {e}") from None
    return images.encode(model, fitted.pixels), fitted.notes


def image_start(model, recipe: Recipe, plan: Plan, size=None) -> ImageStart:
    """The noised image at ``plan``'s first point (the run's tail plan), for the recipe's batch and seed."""
    digest = checked_sha256(recipe)
    x0, notes = open_x0(model, recipe, size)
    shape = engine.latent_shape(model, recipe.batch, size)
    x0 = x0.expand(shape).contiguous()
    eps = NoiseSource(recipe.seed, x0.device, torch.float32).initial(shape)
    return ImageStart(x0, noised(x0, eps, float(plan.alpha_bars[0])), digest, notes)
