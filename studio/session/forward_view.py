"""The forward view's numbers and pictures: a user's image x₀ noised to any t, and what the model recovers.

The forward process q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4; docs/maths.md, "The
forward process") is drawn with one fixed ε, the recipe seed's initial noise (``NoiseSource.initial``, the
ε an image-to-image run with that seed noises its image with), so x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε moves
smoothly with t and "Denoise from here" starts from the picture shown when t is a point of its plan.

At each t the model's x̂₀(x_t, t) comes from one network evaluation through the studio's ``Denoiser``
(a CFG evaluation is one doubled batch, as in sampling), unclipped (``x0_mode="none"``: what the network
predicts, not what a sampler would keep): the guided x̂₀, and with guidance the unguided one from the same
evaluation (CFG: the conditional half; classifier guidance: the model's own prediction before the
classifier's gradient). The guidance interval is read on the fraction of a full run that t lies at,
1 − (t + 1)/T. Every position is computed once and kept (``point``), with the reconstruction error
RMS(x̂₀ − x₀) in the model's state space (the VAE's latents for a latent model, ``error_space``).

The captions' numbers are ᾱ_t, σ_t = √((1 − ᾱ_t)/ᾱ_t) (the k-diffusion / EDM noise level) and
SNR_t = ᾱ_t / (1 − ᾱ_t) = 1/σ_t² (Kingma et al. 2021).

Pictures: a pixel model's x_t and x̂₀ are its images; a latent model's are full VAE decodes (a person
looks at one position closely, as at a settled step in the main view; ``decodes.FULL``).
Nothing here imports Qt: the window's worker thread calls ``point`` and ``open``.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..core import engine, images
from ..core.denoiser import Denoiser
from ..core.guidance import Guidance
from ..core.forward import noised
from ..core.noise import NoiseSource
from ..core.samplers import get_sampler
from .decodes import FULL
from .frames import to_uint8
from .recipe import Recipe, RecipeError
from .runner import image_size

FILL_POINTS = 50  # positions "compute all" fills, evenly spaced over the training timesteps


@dataclass(frozen=True)
class NoiseLevel:
    """Where t sits on the schedule: ᾱ_t, σ_t = √((1 − ᾱ_t)/ᾱ_t) and SNR_t = ᾱ_t/(1 − ᾱ_t)."""

    t: int
    alpha_bar: float
    sigma: float
    snr: float

    def caption(self) -> str:
        return f"t={self.t}  ᾱ={self.alpha_bar:.4g}  σ={self.sigma:.3g}  SNR={self.snr:.3g}"


def noise_level(t: int, alpha_bar: float) -> NoiseLevel:
    a = float(alpha_bar)
    sigma = math.sqrt((1.0 - a) / a) if a > 0 else math.inf
    snr = a / (1.0 - a) if a < 1 else math.inf
    return NoiseLevel(int(t), a, sigma, snr)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference, over every element."""
    return float(torch.sqrt(torch.mean((a.double() - b.double()) ** 2)))


@dataclass(frozen=True)
class ForwardPoint:
    """One position of the forward view: x_t, the model's x̂₀ (guided where guidance acts) and, with
    guidance, the unguided x̂₀; their errors against x₀; and their pictures (1, H, W, 3) uint8."""

    level: NoiseLevel
    xt: torch.Tensor
    x0: torch.Tensor
    error: float
    xt_frame: np.ndarray
    x0_frame: np.ndarray
    unguided_x0: Optional[torch.Tensor] = None
    unguided_error: Optional[float] = None
    unguided_frame: Optional[np.ndarray] = None


# the recipe fields the view's pictures depend on: a change of any of them is a new view
VIEW_FIELDS = ("model", "seed", "label", "prompt", "negative_prompt", "guidance", "scale", "guidance_interval",
               "classifier_form", "guidance_rescale", "width", "height", "schedule", "init_image_fit", "device",
               "dtype", "classifier", "prediction_type", "loras", "vae")


def view_key(recipe: Recipe) -> tuple:
    """What decides a view's contents, from a recipe: its ``VIEW_FIELDS``."""
    return tuple(repr(getattr(recipe, name)) for name in VIEW_FIELDS)


class ForwardView:
    """x₀ (1, C, h, w) in ``model``'s state space, noised and denoised at any training timestep t.

    ``point(t)`` evaluates the network once the first time and returns the kept result after;
    ``evaluations`` counts the network evaluations made. Thread-safe: a worker computes while the GUI
    thread reads ``cached``, ``errors`` and the level numbers."""

    def __init__(self, model, recipe: Recipe, x0: torch.Tensor, path: str = "", notes: tuple[str, ...] = ()):
        self.model = model
        self.recipe = recipe
        self.key = view_key(recipe)
        self.path = path
        self.notes = tuple(notes)
        self.x0 = x0.to(model.device, torch.float32)
        sched = engine.schedule_for(model, recipe.schedule or None)
        self.alpha_bars = sched.alphas_cumprod.double().numpy()
        self.steps = len(self.alpha_bars)  # T: t runs over 0..T − 1
        self.eps = NoiseSource(recipe.seed, model.device, torch.float32).initial(tuple(self.x0.shape))
        self.latent = bool(model.info.text_conditioned)
        guidance = recipe.guidance_settings()
        if guidance.mode == "cfg" and guidance.scale == 1.0:
            guidance = Guidance()  # w = 1 is the conditional prediction itself
        self.guidance = guidance
        size = image_size(model, recipe)
        try:
            cond, uncond = engine.conditioning(model, recipe.label, 1, guidance, recipe.prompt,
                                               recipe.negative_prompt, size)
            self.denoiser = Denoiser(model, cond, guidance, "none", uncond=uncond,
                                     guidance_rescale=recipe.guidance_rescale, keep_unguided=True)
        except ValueError as e:
            raise RecipeError(str(e)) from None
        self._points: dict[int, ForwardPoint] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, model, recipe: Recipe, path: str) -> "ForwardView":
        """The view of the image at ``path`` fitted to ``recipe``'s size by its ``init_image_fit`` rule
        (``core.images``; a bad file is an ``ImageError``, one line) and encoded to the model's x₀."""
        h, w = engine.image_size(model, image_size(model, recipe))
        channels = 3 if model.info.text_conditioned else model.info.in_channels
        fitted = images.open_image(path, (h, w), channels, recipe.init_image_fit)
        return cls(model, recipe, images.encode(model, fitted.pixels), str(path), fitted.notes)

    # -- what the captions say ---------------------------------------------------------------------
    @property
    def guided(self) -> bool:
        """Guidance acts here: there are two x̂₀, the guided and the unguided."""
        g = self.guidance
        return g.mode != "none" and not (g.mode == "classifier" and g.scale == 0.0)

    @property
    def unguided_name(self) -> str:
        """What the unguided x̂₀ is: the conditional one (CFG) or the model's own (classifier guidance)."""
        return "conditional" if self.guidance.mode == "cfg" else "unguided"

    @property
    def error_space(self) -> str:
        return "latent" if self.latent else "pixel"

    def level(self, t: int) -> NoiseLevel:
        t = self.check_t(t)
        return noise_level(t, self.alpha_bars[t])

    def check_t(self, t) -> int:
        if not isinstance(t, (int, np.integer)) or not 0 <= t < self.steps:
            raise ValueError(f"t must be an integer timestep 0..{self.steps - 1}, got {t!r}")
        return int(t)

    def fraction(self, t: int) -> float:
        """Where t lies in a full run from t = T − 1 (0) to t = 0 (just below 1): the guidance interval's axis."""
        return 1.0 - (t + 1) / self.steps

    # -- the forward process and the model's x̂₀ ---------------------------------------------------
    def xt(self, t: int) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, with the view's fixed ε."""
        return noised(self.x0, self.eps, self.alpha_bars[self.check_t(t)])

    def cached(self, t: int) -> Optional[ForwardPoint]:
        with self._lock:
            return self._points.get(int(t))

    @property
    def evaluations(self) -> int:
        """Network evaluations made so far (a CFG evaluation of the doubled batch counts once)."""
        return self.denoiser.nfe

    @torch.no_grad()
    def point(self, t: int) -> ForwardPoint:
        """Position t: computed with one network evaluation the first time, kept after."""
        t = self.check_t(t)
        hit = self.cached(t)
        if hit is not None:
            return hit
        a = float(self.alpha_bars[t])
        xt = self.xt(t)
        pred = self.denoiser(xt, float(t), a, self.fraction(t))
        x0 = pred.x0.float()
        ung = pred.unguided_x0.float() if self.guided and pred.unguided_x0 is not None else None
        pics = self.picture(torch.cat([xt, x0] + ([ung] if ung is not None else [])))  # one batched decode
        p = ForwardPoint(self.level(t), xt, x0, rms(x0, self.x0), pics[0:1], pics[1:2], ung,
                         None if ung is None else rms(ung, self.x0), None if ung is None else pics[2:3])
        with self._lock:
            self._points.setdefault(t, p)
            return self._points[t]

    def picture(self, x: torch.Tensor) -> np.ndarray:
        """(B, H, W, 3) uint8: a pixel model's images, a latent model's full VAE decodes."""
        return to_uint8(self.model.decode(x) if self.latent else x)

    @property
    def shown(self) -> str:
        """What the pictures are, for captions ("" for a pixel model)."""
        return FULL if self.latent else ""

    def source_picture(self) -> np.ndarray:
        """The image as the model sees it (a latent model: the decode of its encoding)."""
        return self.picture(self.x0)

    def errors(self) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(t, error, unguided error or None) of every position computed so far, in order of t."""
        with self._lock:
            pts = sorted(self._points.items())
        t = np.array([k for k, _ in pts], dtype=np.float64)
        err = np.array([p.error for _, p in pts], dtype=np.float64)
        ung = np.array([p.unguided_error for _, p in pts], dtype=np.float64) if self.guided else None
        return t, err, ung

    def fill_positions(self, n: int = FILL_POINTS) -> list[int]:
        """``n`` timesteps evenly spread over 0..T − 1 that are not computed yet, from t = 0 up."""
        grid = np.unique(np.linspace(0, self.steps - 1, n).round().astype(int))
        with self._lock:
            return [int(t) for t in grid if int(t) not in self._points]


@dataclass(frozen=True)
class StartStep:
    """Where "Denoise from here" starts: plan step ``index`` (0-based) at timestep ``t`` of a plan of
    ``steps``, the nearest to the scrubbed ``wanted`` t."""

    index: int
    t: float
    wanted: int
    steps: int

    def describe(self) -> str:
        tt = f"{self.t:.0f}" if float(self.t).is_integer() else f"{self.t:.1f}"
        return (f"plan step {self.index} of {self.steps} (t={tt}, the nearest to the scrubbed t={self.wanted}); "
                f"{self.steps - self.index} steps to run")


def nearest_start(model, recipe: Recipe, t: int) -> StartStep:
    """The plan step of ``recipe``'s run (its sampler, steps, spacing, Karras, schedule) whose timestep is
    nearest to ``t``; the earlier one on a tie (more steps to run)."""
    spec = get_sampler(recipe.sampler)
    try:
        plan = engine.model_plan(model, spec, recipe.steps, recipe.spacing, recipe.karras, recipe.schedule or None,
                                 options=recipe.sampler_options())
    except ValueError as e:
        raise RecipeError(str(e)) from None
    ts = np.asarray(plan.timesteps, dtype=np.float64)
    k = int(np.argmin(np.abs(ts - float(t))))
    return StartStep(k, float(ts[k]), int(t), plan.steps)


def denoise_recipe(recipe: Recipe, path: str, start: StartStep) -> Recipe:
    """The image-to-image recipe of "Denoise from here": ``recipe``'s settings, the image, the start step."""
    return recipe.replace(init_image=str(path), start_step=start.index, strength=None, init_image_sha256=None,
                          init_noise=None, branch=None).validate()
