"""Inverting a user's image to noise and regenerating from it: what `studio invert` and the window use.

``inversion_recipe`` turns a recipe's settings (model, prompt, negative prompt, guidance and scale, steps,
spacing, sampler) and an image into an inversion recipe (its ``inversion`` field names the image and the
method). ``Inversion`` runs it, step by step like a ``Run``: the image is opened and fitted as an
image-to-image run's is (core/images.py: a latent model's x₀ is its VAE's mean), then inverted on the
DDIM plan of the recipe's steps and spacing by ``core.inversion`` (never clipping x̂₀); its ``trajectory``
starts at the image (``xt[0]``) and ends at the inverted x_T, so the scrubber walks it forwards.

``regenerate`` is a ``Run`` from that x_T (``init_noise``: a safetensors file) with the inversion's settings
or changed ones (prompt, guidance, sampler, LoRA weight: an edit). It is unclipped (``x0_mode`` "none")
unless the changes say otherwise: the inversion ran the unclipped ODE, and a clipped step on the way back
is not that ODE's inverse. A stochastic sampler is refused (``Recipe``'s
inversion rules). ``round_trip`` measures the regenerated image against the original: PSNR in pixels
(values in [−1, 1], peak-to-peak 2), and for a latent model also the RMS error of the latents and the
VAE's own round trip PSNR, the ceiling the pixel PSNR approaches (an exact latent round trip
reaches it; the regenerated latents may even decode a little closer).
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..checkpoints.models import apply_model_files
from ..core import engine, images
from ..core.file_hashes import user_cache_dir
from ..core.inversion import INVERSION, INVERSION_ITERS, InversionError, check_method, invert
from ..core.samplers import OPTION_SCHEMA, get_sampler
from .decodes import DecodeCache
from .init_image import image_sha256_or_error
from .recipe import Recipe, RecipeError
from .runner import ModelCache, Run, SteppedChain, image_size
from .trajectory import Trajectory

X_T_KEY = "x_T"  # the tensor's name in an x_T file
PEAK_TO_PEAK = 2.0  # pixels in [−1, 1]


def inversion_recipe(base: Recipe, image: str, method: str = INVERSION.default,
                     iters: Optional[int] = None) -> Recipe:
    """``base``'s settings as the recipe of an inversion of ``image``: one image (batch 1), x̂₀ unclipped,
    ``inversion`` = {method, iters, image}. ``iters`` defaults to the declared number for fixed-point, 0 for
    plain. Refuses (RecipeError, one line) an initial-noise file, an image-to-image image and a stochastic
    sampler."""
    if base.init_noise is not None:
        raise RecipeError("an inversion computes x_T from the image, so it cannot start from an initial noise file; "
                          "leave --init-noise out")
    if base.init_image is not None:
        raise RecipeError("an inversion takes its image as the image to invert, not as an image-to-image start; "
                          "leave --init-image, --strength and --start-step out")
    if iters is None:
        iters = INVERSION_ITERS.default if method == "fixed-point" else 0
    try:
        check_method(method, iters)
    except InversionError as e:
        raise RecipeError(str(e)) from None
    if method == "plain" and iters:
        raise RecipeError(f"{INVERSION_ITERS.name} applies to fixed-point inversion; leave it out or use "
                          "--inversion fixed-point")
    return base.replace(batch=1, x0_mode="none", strength=None, start_step=None, init_image_sha256=None,
                        inversion={"method": method, "iters": int(iters), "image": str(image)}).validate()


class Inversion(SteppedChain):
    """One inversion: iterate to advance step by step; ``trajectory`` keeps everything (the image first, x_T
    last). ``x0`` is the image in the model's state space, ``pixels`` the fitted image in [−1, 1]."""

    def __init__(self, recipe: Recipe, model=None, cache: Optional[ModelCache] = None):
        recipe = recipe.validate()
        if recipe.inversion is None:
            raise RecipeError("this recipe is not an inversion: it names no image to invert (inversion_recipe)")
        if recipe.init_noise is not None:
            raise RecipeError("an inversion computes x_T from the image, so it cannot start from an initial noise "
                              "file; leave --init-noise out")
        recipe = recipe.resolved()
        spec = get_sampler(recipe.sampler)
        self.model = model if model is not None else (cache or ModelCache()).get(recipe)
        apply_model_files(self.model, recipe.loras, recipe.vae)
        inv = recipe.inversion
        path = inv["image"]
        digest = image_sha256_or_error(path)
        recorded = inv.get("image_sha256")
        if recorded is not None and recorded.lower() != digest:
            raise RecipeError(f"inversion.image: {path} is not the image this recipe inverted (SHA-256 "
                              f"{digest[:12]}…, recorded {recorded[:12]}…); use the original image")
        recipe = recipe.replace(inversion={**inv, "image_sha256": digest})
        self.recipe = recipe
        size = image_size(self.model, recipe)
        h, w = engine.image_size(self.model, size)
        info = self.model.info
        try:
            fitted = images.open_image(path, (h, w), 3 if info.text_conditioned else info.in_channels,
                                       recipe.init_image_fit)
        except images.ImageError as e:
            raise RecipeError(f"inversion.image: {e}") from None
        self.notes = tuple(fitted.notes)
        self.pixels = fitted.pixels
        self.x0 = images.encode(self.model, fitted.pixels)
        self.iters = check_method(inv["method"], inv.get("iters", 0))
        self.guidance = recipe.guidance_settings()
        # the DDIM step rule of the regeneration, where it is DDIM (the inversion is the exact inverse of that)
        prev = recipe.prev_timestep if spec.name == "ddim" else None
        try:
            self.plan = engine.model_plan(self.model, get_sampler("ddim"), recipe.steps, recipe.spacing, None,
                                          recipe.schedule or None)
            self._gen = invert(self.model, self.x0, recipe.steps, iters=self.iters, guidance=self.guidance,
                               label=recipe.label, prompt=recipe.prompt, negative_prompt=recipe.negative_prompt,
                               size=size, guidance_rescale=recipe.guidance_rescale, plan=self.plan,
                               prev_timestep=prev or "plan", schedule_overrides=recipe.schedule or None)
        except (InversionError, ValueError) as e:
            raise RecipeError(str(e)) from None
        latent = info.text_conditioned
        self.trajectory = Trajectory(recipe, self.x0, self.plan.steps, render=self.model.preview if latent else None)
        if latent:
            self.trajectory.preview = self.model.preview_mode
            self.trajectory.decodes = DecodeCache(self.trajectory, self.model)
        self.stopped = False

    @property
    def total_steps(self) -> int:
        return self.plan.steps

    def __iter__(self) -> Iterator:
        n = self.plan.steps
        for rec in self._gen:
            # the guidance of the sampling step this inverts (step n − 1 − index)
            self.trajectory.append(rec, self.guidance.scale_at((n - 1 - rec.index) / n))
            yield rec
            if self.stopped:
                break
        else:
            self.trajectory.finished = True

    @property
    def x_T(self) -> torch.Tensor:
        """The inverted noise (after the last step taken)."""
        return self.trajectory.final()


def save_x_T(path: Path, x_T: torch.Tensor, recipe: Recipe) -> Path:
    """Write ``x_T`` as a safetensors file (one float32 tensor, ``X_T_KEY``; the inversion's method and image
    digest in its metadata), through a temporary name renamed into place."""
    from safetensors.torch import save_file

    inv = recipe.inversion or {}
    meta = {"format": "sampling-studio/x_T@1", "method": str(inv.get("method")), "iters": str(inv.get("iters", 0)),
            "image_sha256": str(inv.get("image_sha256", "")), "steps": str(recipe.steps)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        save_file({X_T_KEY: x_T.detach().to("cpu", torch.float32).contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached_x_T(x_T: torch.Tensor, recipe: Recipe) -> Path:
    """``x_T`` saved in the user cache folder under its own SHA-256 (``inverted/<sha>.safetensors``), so that a
    regeneration's recipe names a file that stays: what the window regenerates from."""
    import hashlib

    data = x_T.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    folder = user_cache_dir() / "inverted"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}.safetensors"
    return path if path.exists() else save_x_T(path, x_T, recipe)


def regeneration_recipe(inversion_recipe: Recipe, x_T_path, **changes) -> Recipe:
    """The recipe of a run from an inverted x_T (the file ``x_T_path``): the inversion's settings with
    ``changes`` (prompt, guidance, scale, sampler, loras, …), x̂₀ unclipped unless ``changes`` set ``x0_mode``;
    its ``inversion`` names the image, the method and the inversion's own recipe."""
    inv = dict(inversion_recipe.inversion or {})
    if not inv:
        raise RecipeError("not an inversion's recipe: it names no image to invert")
    inv["recipe"] = {k: v for k, v in inversion_recipe.replace(inversion=None).to_dict().items() if k != "versions"}
    base = inversion_recipe.replace(init_noise=str(x_T_path), x0_mode="none", inversion=inv)
    if changes.get("sampler", base.sampler) != base.sampler:  # another sampler starts from its own defaults
        base = base.replace(**{name: None for name in OPTION_SCHEMA})
    return base.replace(**changes).validate()


def regenerate(inversion: Inversion, x_T_path=None, cache: Optional[ModelCache] = None, **changes) -> Run:
    """A ``Run`` from the inverted x_T with the inversion's settings or ``changes``; x_T is saved to
    ``x_T_path`` and read from there, or without one kept in the user cache (``cached_x_T``).
    Iterate it, or ``run_to_end()``."""
    x_T = inversion.x_T
    x_T_path = cached_x_T(x_T, inversion.recipe) if x_T_path is None else save_x_T(Path(x_T_path), x_T,
                                                                                  inversion.recipe)
    recipe = regeneration_recipe(inversion.recipe, x_T_path, **changes)
    same_model = ModelCache.key_for(recipe) == ModelCache.key_for(inversion.recipe)
    return Run(recipe, model=inversion.model if same_model else None, cache=cache)


def caption(recipe: Recipe) -> str:
    """What a run from an inverted x_T is, for a caption: the image, the method and whether x̂₀ was clipped."""
    inv = recipe.inversion
    if not inv:
        return ""
    k = inv.get("iters", 0)
    how = f"fixed-point DDIM inversion (K = {k})" if inv.get("method") == "fixed-point" else "plain DDIM inversion"
    clip = "x̂₀ unclipped" if recipe.x0_mode == "none" else f"x̂₀ {recipe.x0_mode or 'processed as the model config says'}"
    start = "inverted" if recipe.init_noise is None else "regenerated from the"
    return f"{start} {how} of {Path(inv['image']).name}; {clip}"


@dataclass(frozen=True)
class RoundTrip:
    """How well a regeneration returns the original: ``psnr`` in pixels (mean of per-image PSNRs, dB; inf when
    equal); for a latent model ``latent_rms`` (the RMS difference of the latents) and ``vae_psnr``, the VAE's own
    round trip decode(encode(image)), the ceiling ``psnr`` approaches."""

    psnr: float
    latent_rms: Optional[float] = None
    vae_psnr: Optional[float] = None

    def line(self) -> str:
        text = f"round trip: {self.psnr:.2f} dB PSNR in pixels"
        if self.latent_rms is not None:
            text += (f" (the VAE's own round trip: {self.vae_psnr:.2f} dB), latent RMS error "
                     f"{self.latent_rms:.3g}")
        return text


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = PEAK_TO_PEAK) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log₁₀(peak² / MSE), over (batch, …) tensors; inf where they are equal."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(peak_to_peak ** 2 / mse)


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    values = psnr(a, b)
    return float(values.mean()) if torch.isfinite(values).all() else math.inf


def round_trip(inversion: Inversion, regenerated: torch.Tensor) -> RoundTrip:
    """``regenerated`` (the state a regeneration ended at: pixels, or a latent model's latents) against the
    inverted image; pixels are compared as shown, clamped to [−1, 1]."""
    model, x0 = inversion.model, inversion.x0
    final = regenerated.to(x0.device, torch.float32)
    if not model.info.text_conditioned:
        return RoundTrip(mean_psnr(final.clamp(-1, 1), x0.expand_as(final)))
    original = inversion.pixels.to(torch.float32)
    shown = model.decode(final).clamp(-1, 1)
    bound = model.decode(x0).clamp(-1, 1)
    rms = float((final - x0.expand_as(final)).double().pow(2).mean().sqrt())
    return RoundTrip(mean_psnr(shown, original.expand_as(shown)), rms, mean_psnr(bound, original))


X_T_FILE = "x_T.safetensors"


def write_inversion_folder(inversion: Inversion, regenerated: Trajectory, trip: RoundTrip, reservation, stage: Path,
                           image_copy: str, fingerprint: Optional[dict] = None, save_raw: bool = False,
                           scale: int = 1) -> Path:
    """Write what `studio invert` makes into ``reservation``'s staging folder and commit it::

        xt/0000.png      the image as the model sees it (fitted), xt/000k.png the state after inversion step k,
        xt/NNNN.png      the last one x_T; x0/000k.png the x̂₀ of step k (frames as `studio sample` numbers them)
        x_T.safetensors  the inverted noise (one float32 tensor, batch × C × H × W)
        recipe.json      the regeneration's recipe: `studio sample --recipe DIR/recipe.json` regenerates, and
                         with changed flags (--prompt, --scale, --sampler, --lora) edits
        regenerated.png  the regeneration's image (its recipe in a PNG text chunk); original.png the image fitted
        round_trip.json  the reconstruction's PSNR (and a latent model's latent error and VAE ceiling)
        init_image.EXT   the image inverted, byte for byte (its SHA-256 is in the recipe)
        trajectory.npz   with ``save_raw``: the inversion's float32 xt, x0, t

    ``stage`` is the reservation's staging folder (``stage_folder()``), where the regeneration's x_T was saved as
    ``X_T_FILE`` (``regenerate(…, x_T_path=stage / X_T_FILE)``); nothing is visible under the folder's name
    until all of it is written (session/atomic.py)."""
    import json
    import shutil

    import numpy as np

    from .atomic import OutputError
    from .frames import make_grid, to_uint8
    from .output import final_scale, frame_name, save_png
    from .provenance import recipe_json

    tmp = Path(stage)
    traj = inversion.trajectory
    try:
        (tmp / "xt").mkdir()
        (tmp / "x0").mkdir()
        for pos in range(len(traj.xt)):
            grid = make_grid(traj.frame_xt(pos))
            save_png(tmp / frame_name("xt", pos), grid, scale=final_scale(grid, scale))
        for k in range(len(traj.x0)):
            grid = make_grid(traj.frame_x0(k))
            save_png(tmp / frame_name("x0", k + 1), grid, scale=final_scale(grid, scale))
        inv = {**regenerated.recipe.inversion, "image": image_copy}
        recipe = regenerated.recipe.replace(init_noise=X_T_FILE, inversion=inv)
        text = recipe_json(recipe, fingerprint)
        (tmp / "recipe.json").write_text(text + "\n", encoding="utf-8")
        decodes = regenerated.decodes
        final = make_grid(decodes.final() if decodes is not None else to_uint8(regenerated.final()))
        save_png(tmp / "regenerated.png", final, text, scale=final_scale(final, scale))
        original = make_grid(to_uint8(inversion.pixels))
        save_png(tmp / "original.png", original, scale=final_scale(original, scale))
        numbers = {"psnr_db": trip.psnr, "latent_rms": trip.latent_rms, "vae_psnr_db": trip.vae_psnr,
                   "method": inv["method"], "iters": inv.get("iters", 0), "steps": recipe.steps,
                   "peak_to_peak": PEAK_TO_PEAK}
        (tmp / "round_trip.json").write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(inversion.recipe.inversion["image"], tmp / image_copy)
        if save_raw:
            np.savez(tmp / "trajectory.npz", **traj.arrays())
    except OSError as e:
        raise OutputError(f"{reservation.target}: writing failed ({e.strerror or e}); nothing was written") from None
    reservation.commit()
    return reservation.target
