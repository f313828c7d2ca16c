"""Qt-free orchestration: open a model for a recipe, run it step by step into a Trajectory, branch.

GUI, CLI, tests and benchmarks all go through ``Run``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch

from ..core import engine
from ..checkpoints.models import apply_model_files, load_model  # model folders, built-ins, single files
from ..core.noise import NoiseSource
from ..core.samplers import get_sampler
from ..core.forward import tail_plan
from ..core.prompt_weights import weight_notes
from ..core.attention import CrossAttentionCapture, has_cross_attention, prompt_tokens
from ..core.loading import BUILTINS
from .attention_maps import AttentionMaps
from .init_image import image_start
from .recipe import Recipe, RecipeError, no_cross_attention
from .decodes import DecodeCache
from .trajectory import Trajectory

PLAN_KEYS = ("sampler", "steps", "spacing", "karras", "schedule", "init_image", "strength", "start_step")


class ModelCache:
    """Keeps the last opened model so repeated runs don't reload it. A recipe's LoRAs and VAE are not part
    of the key: ``Run`` puts them on the open model (loaded once, re-weighted in place)."""

    def __init__(self, allow_pickle: bool = False):
        self._key = None
        self._model = None
        self.allow_pickle = allow_pickle

    @staticmethod
    def key_for(recipe: Recipe) -> tuple:
        """What decides which model a recipe needs: (model, device, dtype, classifier, prediction_type)."""
        return recipe.model, recipe.device, recipe.dtype, recipe.classifier, recipe.prediction_type

    def get(self, recipe: Recipe):
        key = self.key_for(recipe)
        if key != self._key:
            self._model = load_model(recipe.model, recipe.device, recipe.dtype, allow_pickle=self.allow_pickle,
                                     classifier=recipe.classifier, prediction_type=recipe.prediction_type)
            self._key = key
        return self._model

    @property
    def key(self):
        """``key_for`` the recipe of the open model, or None."""
        return self._key

    @property
    def model(self):
        """The open model, or None."""
        return self._model

    def put(self, recipe: Recipe, model) -> None:
        self._key = self.key_for(recipe)
        self._model = model

    def restore(self, key, model) -> None:
        """Put back the (``key``, ``model``) read earlier: a model that opened but failed what followed
        (a damaged weight found by its first evaluation) is not kept in place of the one before it."""
        self._key, self._model = key, model


def load_init_noise(path: str) -> torch.Tensor:
    """Initial noise from a ``.npy`` file, or a ``.safetensors`` file holding one tensor (an inverted
    image's x_T, session/inversion.py)."""
    from ..core.file_reading import open_regular

    with open_regular(path, RecipeError) as f:  # a FIFO or device is refused, not read for ever
        try:
            arr = read_safetensors_noise(f) if str(path).lower().endswith(".safetensors") else np.load(
                f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            why = str(e).splitlines()[0] if str(e) else "the file is empty"
            kind = "safetensors" if str(path).lower().endswith(".safetensors") else "numpy.save"
            raise RecipeError(f"{path}: cannot read initial noise ({why}); the file may be empty, truncated "
                              f"or not made by {kind}") from None
    if arr.dtype != np.float32 or arr.ndim != 4:
        raise RecipeError(f"{path}: initial noise must be a float32 array of shape (batch, C, H, W), got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise RecipeError(f"{path}: initial noise contains NaN or inf")
    return torch.from_numpy(arr)


def read_safetensors_noise(f) -> np.ndarray:
    """The one tensor of a safetensors file (ValueError when it holds another number)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(f.read())
    except SafetensorError as e:
        raise ValueError(str(e)) from None
    if len(tensors) != 1:
        raise ValueError(f"it holds {len(tensors)} tensors, not one")
    return next(iter(tensors.values()))


def image_size(model, recipe: Recipe) -> Optional[tuple[int, int]]:
    """(height, width) a recipe asks for, the model's own for a side it leaves out; None for neither."""
    if recipe.width is None and recipe.height is None:
        return None
    side = model.info.image_size
    try:
        return engine.image_size(model, (recipe.height or side, recipe.width or side))
    except ValueError as e:
        raise RecipeError(str(e)) from None


def prompt_notes(model, recipe: Recipe) -> list[str]:
    """What a user should be told before the run: how brackets were read leniently, text the tokenizer cuts."""
    if not model.info.text_conditioned:
        return []
    notes = []
    for name, text in (("prompt", recipe.prompt), ("negative prompt", recipe.negative_prompt)):
        notes += weight_notes(text or "", name)  # brackets read leniently, as the web UIs read them
        cut = model.truncated_text(text) if text else ""
        if cut:
            notes.append(f"the {name} is longer than the model's {model.info.max_prompt_tokens} tokens; "
                         f"this was cut: {cut!r}")
    return notes


def attention_capture(model, recipe: Recipe, trajectory: Trajectory, steps: int) -> CrossAttentionCapture:
    """A capture of ``model``'s cross-attention maps for a run of ``recipe`` (``--attention``), its maps
    store put on ``trajectory``; a model without cross-attention is refused in one line."""
    if not has_cross_attention(model):
        raise RecipeError(no_cross_attention(recipe.model if recipe.model in BUILTINS else model.info.name))
    ids, strings, weights = prompt_tokens(model, recipe.prompt or "")
    trajectory.attention = AttentionMaps(strings, ids, steps, weights=weights)
    return CrossAttentionCapture(model.unet, batch=recipe.batch, tokens=len(ids))


def same_plan(a: Recipe, b: Recipe) -> bool:
    """Whether ``b`` continues ``a``'s chain unchanged: same plan and the same sampler options."""
    return all(getattr(a, k) == getattr(b, k) for k in PLAN_KEYS) and a.sampler_options() == b.sampler_options()


class SteppedChain:
    """A chain the window and the CLI iterate step by step into ``trajectory`` (a ``Run``, an ``Inversion``):
    ``stop()`` ends the iteration after the current step; ``run_to_end()`` iterates to the end."""

    stopped = False
    trajectory: Trajectory

    def stop(self) -> None:
        self.stopped = True

    def run_to_end(self) -> Trajectory:
        for _ in self:
            pass
        return self.trajectory


class Run(SteppedChain):
    """One reverse chain: iterate it to advance step by step; ``trajectory`` keeps everything."""

    def __init__(self, recipe: Recipe, model=None, cache: Optional[ModelCache] = None,
                 parent: Optional[Trajectory] = None, from_step: Optional[int] = None):
        recipe = recipe.validate().resolved()  # what ran, with the sampler's defaults spelled out
        self.model = model if model is not None else (cache or ModelCache()).get(recipe)
        apply_model_files(self.model, recipe.loras, recipe.vae)  # before any prompt is encoded
        self.spec = get_sampler(recipe.sampler)
        k = -1 if from_step is None else from_step
        if parent is not None:
            if not (-1 <= k < len(parent)):
                raise RecipeError(f"cannot branch from step {k + 1}: the run has {len(parent)} steps")
            recipe = recipe.replace(branch={"parent": parent.recipe.to_dict(), "from_step": k},
                                    batch=parent.recipe.batch)
        self.recipe = recipe
        guidance = recipe.guidance_settings()
        kwargs = dict(
            options=recipe.sampler_options(), seed=recipe.seed, batch=recipe.batch, label=recipe.label,
            guidance=guidance, spacing=recipe.spacing, karras=recipe.karras, x0_mode=recipe.x0_mode, eps_from_x0=recipe.eps_from_x0,
            schedule_overrides=recipe.schedule or None, prompt=recipe.prompt, negative_prompt=recipe.negative_prompt,
            size=image_size(self.model, recipe), guidance_rescale=recipe.guidance_rescale,
        )
        start, self.offset = None, 0
        self.image_notes: tuple[str, ...] = ()  # how an image-to-image run's image was converted and fitted
        if parent is not None and k >= 0 and not same_plan(parent.recipe, recipe):
            # a new branch: a fresh plan from the parent's t, started from its state
            t_start = parent.meta[k].t_next
            if t_start < 0:
                raise RecipeError("cannot branch from the last step: the chain has already reached t = 0")
            sched = engine.schedule_for(self.model, recipe.schedule or None)
            self.plan = engine.branch_plan(self.spec, sched, t_start, recipe.steps)
            initial = parent.full_state(k)["x"]
        else:
            self.plan = engine.model_plan(self.model, self.spec, recipe.steps, recipe.spacing, recipe.karras,
                                          recipe.schedule or None, kwargs["options"])
            if recipe.init_image is not None:  # image-to-image: the plan's last steps, from the noised image
                self.plan = tail_plan(self.plan, recipe.first_step())
            if recipe.init_image is not None and (parent is None or k < 0):
                begin = image_start(self.model, recipe, self.plan, kwargs["size"])
                recipe = self.recipe = recipe.replace(init_image_sha256=begin.sha256)
                initial, self.image_notes = begin.state, begin.notes
            elif parent is None:
                initial = load_init_noise(recipe.init_noise) if recipe.init_noise else NoiseSource(recipe.seed).initial(
                    engine.latent_shape(self.model, recipe.batch, kwargs["size"]))
            elif k < 0:  # the parent's initial noise, from the beginning
                initial = parent.full_state(-1)["x"]
            else:  # exact continuation: the same plan and the parent's solver memory
                start = parent.record(k)
                initial, self.offset = start.x, k + 1
        self._gen = engine.sample(self.model, recipe.sampler, recipe.steps, plan=self.plan, start=start,
                                  init_noise=initial if start is None else None, **kwargs)
        latent = self.model.info.text_conditioned
        self.trajectory = Trajectory(recipe, initial, self.plan.steps, render=self.model.preview if latent else None)
        if latent:
            self.trajectory.preview = self.model.preview_mode  # what its frames are (decodes.SHOWN)
            self.trajectory.decodes = DecodeCache(self.trajectory, self.model)
        self.notes = prompt_notes(self.model, recipe) + [f"the image to start from was {n}" for n in self.image_notes]
        self.guidance = guidance
        self.stopped = False
        self.capture = (attention_capture(self.model, recipe, self.trajectory, self.total_steps)
                        if recipe.attention else None)

    @property
    def total_steps(self) -> int:
        return self.plan.steps - self.offset

    def __iter__(self) -> Iterator:
        capture, maps = self.capture, self.trajectory.attention
        while True:
            # the capture's processors are on the model only while this run's step computes: a paused run
            # leaves the model as it was for anything else that uses it
            with capture if capture is not None else contextlib.nullcontext():
                rec = next(self._gen, None)
            if rec is None:
                self.trajectory.finished = True
                return
            if capture is not None:  # before the step is appended: a reader seeing step k finds its maps
                step = len(self.trajectory)
                maps.append(step, capture.take_step())
                capture.active = maps.wants(step + 1)
            self.trajectory.append(rec, self.guidance.scale_at(rec.index / rec.steps))
            yield rec
            if self.stopped:
                break


def execute(recipe: Recipe, cache: Optional[ModelCache] = None, progress=None, notify=None) -> Trajectory:
    """Run a recipe to the end (re-running its parent first when it is a branch). ``notify(line)`` is told
    how an image-to-image run's image was converted and fitted."""
    cache = cache or ModelCache()
    if recipe.branch:
        parent_recipe = Recipe.from_dict(recipe.branch["parent"])
        parent = execute(parent_recipe, cache)
        run = Run(recipe.replace(branch=None), cache=cache, parent=parent, from_step=int(recipe.branch["from_step"]))
    else:
        run = Run(recipe, cache=cache)
    for note in run.image_notes if notify else ():
        notify(f"the image to start from was {note}")
    for rec in run:
        if progress:
            progress(rec.index + 1 - run.offset, run.total_steps)
    return run.trajectory
