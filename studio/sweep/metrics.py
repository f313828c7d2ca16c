"""What a sweep measures in each cell, computed by the worker that ran it.

Every model: ``seconds_per_image`` (the sampling wall time of the cell over its batch) and ``nfe``
(denoiser evaluations, counted by the denoiser itself).

Models with the clean-image evaluator beside their weights (the built-in digits model:
``evaluator/``), as ``studio eval`` computes them, with its functions (studio/evaluation):
``accuracy`` (the fraction of samples the evaluator reads as the requested label), ``diversity``
(mean pairwise distance in the evaluator's penultimate features within each class; Ho & Salimans
2022's trade-off), ``class_fractions`` (of unlabelled samples) and ``frechet`` (Heusel et al. 2017's
Fréchet distance between Gaussians fitted to sample and held-out-data features). Fréchet distance
and diversity are properties of many samples, so the summary (summary.py) computes them over every
image of a setting from the features each cell keeps.

``gmm`` (exact): ``weight_error``, the total-variation distance between the mixture weights the
samples carry — the mean of the exact posteriors p(k | x₀) — and the weights they should carry (the
true π_k; one-hot for a labelled run), and ``ref_distance``, the RMS distance of each sample to a
fine solve of the probability-flow ODE (DPM-Solver++(2M), ``reference_steps`` steps, Lu et al.
2022) from the same initial noise: the sampler's discretisation error for deterministic samplers
(stochastic ones also differ by their fresh noise). docs/maths.md, "The exact Gaussian mixture".
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..evaluation.reference import evaluator_folder
from ..session.provenance import model_folder

COMMON = ("seconds_per_image", "nfe")
EVALUATOR = ("accuracy", "diversity", "frechet", "class_fractions")
EXACT = ("weight_error", "ref_distance")
REFERENCE_SAMPLER = "dpmpp_2m"
LOWER_IS_BETTER = {"seconds_per_image", "nfe", "frechet", "weight_error", "ref_distance"}
LABELS = {"seconds_per_image": "seconds per image", "nfe": "NFE (denoiser evaluations)", "accuracy": "accuracy",
          "diversity": "within-class diversity", "frechet": "Fréchet distance (evaluator features)",
          "weight_error": "mixture-weight error (TV)", "ref_distance": "RMS distance to the reference solve"}


def is_exact(model: str) -> bool:
    """``gmm``, or ``default`` in a checkout without the digits model (which then opens gmm)."""
    return model == "gmm" or (model == "default" and model_folder("default") is None)


def available_metrics(model: str) -> tuple[str, ...]:
    if is_exact(model):
        return COMMON + EXACT
    if evaluator_folder(model) is not None:
        return COMMON + EVALUATOR
    return COMMON


class CellMetrics:
    """The per-cell metrics of one worker: holds the evaluator and the reference solves it needs."""

    def __init__(self, model_spec: str, model, metrics: tuple[str, ...], reference_steps: int = 500):
        self.model_spec, self.model, self.metrics = model_spec, model, tuple(metrics)
        self.reference_steps = reference_steps
        self.evaluator = None
        if any(m in EVALUATOR for m in self.metrics):
            from ..evaluation.evaluator import load_evaluator

            self.evaluator = load_evaluator(evaluator_folder(model_spec)).eval()
        self._references: dict[str, np.ndarray] = {}

    def compute(self, recipe, x, nfe: int, seconds: float) -> tuple[dict, dict]:
        """(metrics, arrays) of a finished cell; ``x`` the final samples (B, C, H, W) float32 tensor."""
        metrics: dict = {"nfe": int(nfe), "seconds_per_image": seconds / recipe.batch}
        arrays: dict = {}
        if self.evaluator is not None:
            metrics.update(self._evaluator_metrics(recipe, x, arrays))
        if any(m in EXACT for m in self.metrics):
            metrics.update(self._exact_metrics(recipe, x, arrays))
        return metrics, arrays

    # -- the clean-image evaluator ----------------------------------------------------------------
    def _evaluator_metrics(self, recipe, x, arrays: dict) -> dict:
        from ..evaluation.features import evaluator_outputs, within_class_diversity

        feats, pred = evaluator_outputs(self.evaluator, x.clamp(-1, 1).numpy())
        arrays["features"] = feats.astype(np.float32)  # the evaluator's own float32 features, exactly
        arrays["pred"] = pred.astype(np.int64)
        out: dict = {}
        labels = pred if recipe.label is None else np.full(len(pred), recipe.label)
        if recipe.label is not None:
            out["accuracy"] = float((pred == recipe.label).mean())
        else:
            k = self.model.info.num_classes or int(pred.max()) + 1
            out["class_fractions"] = (np.bincount(pred, minlength=k) / len(pred)).round(6).tolist()
        if np.bincount(labels).max() > 1:
            out["diversity"] = within_class_diversity(feats, labels)
        return out

    # -- the exact mixture ------------------------------------------------------------------------
    def target_weights(self, label: Optional[int]) -> np.ndarray:
        w = self.model.weights.cpu().numpy().astype(np.float64)
        if label is None:
            return w
        t = np.zeros_like(w)
        t[label] = 1.0
        return t

    def _exact_metrics(self, recipe, x, arrays: dict) -> dict:
        import torch

        post = self.model.responsibilities(x.to(torch.float64), 0.0).cpu().numpy()  # exact p(k | x₀)
        arrays["posterior"] = post
        weights = post.mean(0)
        out = {"component_weights": weights.round(6).tolist(),
               "weight_error": float(0.5 * np.abs(weights - self.target_weights(recipe.label)).sum())}
        ref = self.reference(recipe)
        if ref is not None:
            diff = x.cpu().numpy().astype(np.float64) - ref.astype(np.float64)
            per_image = np.sqrt((diff.reshape(len(diff), -1) ** 2).mean(1))
            arrays["ref_distance"] = per_image
            out["ref_distance"] = float(per_image.mean())
        return out

    def reference(self, recipe) -> Optional[np.ndarray]:
        """The fine ODE solve from the cell's initial noise (kept per worker: it does not depend on the
        cell's sampler or steps); None where the guidance has no ODE form (classifier mean shift)."""
        from ..session.recipe import RecipeError
        from ..session.runner import Run
        from .cells import canonical_json

        try:
            ref_recipe = recipe.replace(sampler=REFERENCE_SAMPLER, steps=self.reference_steps, eta=None,
                                        variance=None, corrector_steps=None, snr=None, spacing=None,
                                        karras=None).validate().resolved()
        except RecipeError:
            return None
        key = canonical_json(ref_recipe)
        if key not in self._references:
            try:
                run = Run(ref_recipe, model=self.model)
            except (RecipeError, ValueError):
                return None
            traj = run.run_to_end()
            if len(self._references) >= 256:
                self._references.pop(next(iter(self._references)))
            self._references[key] = traj.final().cpu().numpy()
            traj.close()
        return self._references[key]
