"""What the worker thread runs: open a model, iterate a Run or an inversion, run a comparison.

These generators run off the GUI thread and hand back only plain data: uint8
frames (numpy), StepMeta and the Trajectory object (read-only for the GUI).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..core import engine
from ..session.decodes import decode_share, preview_for
from ..session.provenance import weights_fingerprint
from ..session.recipe import Recipe
from ..session.runner import ModelCache, Run


@dataclass
class ModelSummary:
    spec: str
    info: Any  # ModelInfo
    device: str
    dtype: str
    t: np.ndarray  # training timesteps 0..T-1
    log_snr: np.ndarray
    alpha_bar: np.ndarray
    weights: dict = field(default_factory=dict)  # {weight file: SHA-256} (provenance.py); {} for gmm
    # a text-to-image model: a full VAE decode's cost over a UNet evaluation's, measured as it opened, and
    # the preview its runs stream by default (session/decodes.py: full where that share is small)
    decode_share: Optional[float] = None
    preview: str = "linear"


@dataclass
class Started:
    tag: Any
    trajectory: Any
    total: int  # steps this run will take
    plan_t: np.ndarray  # timesteps of the plan
    summary: ModelSummary
    notes: list = field(default_factory=list)  # what the user should know (e.g. text cut from a prompt)


@dataclass
class Step:
    tag: Any
    trajectory: Any
    pos: int  # x_t position (1 = after the first step of this run)
    xt: np.ndarray  # (B, H, W, 3) uint8
    x0: np.ndarray
    meta: Any  # StepMeta


def summarize(spec: str, recipe: Recipe, model) -> ModelSummary:
    sched = engine.schedule_for(model, recipe.schedule or None)
    ab = sched.alphas_cumprod.double().numpy()
    return ModelSummary(spec, model.info, str(model.device), recipe.dtype,
                        np.arange(len(ab), dtype=np.float64), sched.log_snr(), ab)


def load_job(cache: ModelCache, recipe: Recipe) -> ModelSummary:
    """Open the model and fingerprint its weights (digests cached per file; cancellable); time a text
    model's full decode against a UNet evaluation to choose its default preview."""
    before = cache.key, cache.model
    model = cache.get(recipe)
    try:
        summary = summarize(recipe.model, recipe, model)
        summary.weights = weights_fingerprint(recipe.model, recipe.classifier, recipe.loras, recipe.vae)
        if model.info.text_conditioned:  # its first evaluations: a damaged weight shows here
            summary.decode_share = decode_share(model)
            summary.preview = preview_for(summary.decode_share)
    except BaseException:  # the window keeps the model it had, so the cache does too
        cache.restore(*before)
        raise
    return summary


def run_job(cache: ModelCache, recipe: Recipe, parent=None, from_step: Optional[int] = None, tag: Any = None,
            preview: Optional[tuple] = None):
    """Yield Started, then one Step per step; return the trajectory. ``preview``: (mode, AutoencoderTiny
    folder or None), how a text-to-image model renders each step's latents (TextToImageModel.set_preview)."""
    model = cache.get(recipe)
    if preview is not None and model.info.text_conditioned:
        model.set_preview(*preview)
    run = Run(recipe, model=model, parent=parent, from_step=from_step)
    yield from streamed(run, lambda: Started(
        tag, run.trajectory, run.total_steps, np.asarray(run.plan.timesteps, dtype=np.float64)[run.offset:],
        summarize(recipe.model, recipe, model), list(run.notes)), tag)
    return run.trajectory


def streamed(chain, started, tag: Any = None):
    """Drive ``chain`` (a ``Run`` or an ``Inversion``): ``started()``'s Started, then one Step per step; an
    error is kept on the trajectory (and raised), and the chain is stopped whatever happens."""
    traj = chain.trajectory
    try:
        yield started()
        for _ in chain:
            pos = len(traj)
            yield Step(tag, traj, pos, traj.frame_xt(pos), traj.frame_x0(pos - 1), traj.meta[pos - 1])
    except Exception as e:
        traj.error = str(e)
        raise
    finally:
        chain.stop()


def inversion_job(cache: ModelCache, recipe: Recipe, tag: Any = None, preview: Optional[tuple] = None):
    """Invert the image of ``recipe`` (an inversion recipe, session/inversion.py) as ``run_job`` runs a
    sampling run: Started, one Step per inversion step (position 0 is the image, the last x_T); return the
    ``Inversion`` (its model, x₀ and x_T are what a regeneration and its round trip need)."""
    from ..session.inversion import Inversion

    model = cache.get(recipe)
    if preview is not None and model.info.text_conditioned:
        model.set_preview(*preview)
    inversion = Inversion(recipe, model=model)
    # the plan's timesteps in the order the inversion visits them: from the image up to the first one
    plan_t = np.asarray(inversion.plan.timesteps, dtype=np.float64)[::-1].copy()
    yield from streamed(inversion, lambda: Started(
        tag, inversion.trajectory, inversion.total_steps, plan_t, summarize(recipe.model, recipe, model),
        [f"the image was {n}" for n in inversion.notes]), tag)
    return inversion


def compare_job(cache: ModelCache, recipes: list[Recipe]):
    """Run each configuration in turn from the same seed; tags are the configuration indices."""
    out = []
    for i, r in enumerate(recipes):
        traj = yield from run_job(cache, r, tag=i)
        out.append(traj)
    return out
