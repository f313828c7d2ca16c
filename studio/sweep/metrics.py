"""What a sweep's worker measures in each cell: the per-image arrays its metrics use, then the metrics.

The metrics themselves are declared in studio/evaluation/metrics.py (one formula for a cell and for
a pooled setting); here are the arrays a cell keeps for them (in its ``final.npz``), made once per
cell: the clean-image evaluator's float32 features and predictions, the exact mixture's posteriors
p(k | x₀), and the RMS distance of each image to a fine solve of the probability-flow ODE
(DPM-Solver++(2M), ``reference_steps`` steps, Lu et al. 2022) from the same initial noise.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..evaluation.metrics import Samples, evaluator_classes, measure, recorded
from ..evaluation.reference import evaluator_folder

REFERENCE_SAMPLER = "dpmpp_2m"
MAX_REFERENCES = 256  # reference solves a worker keeps (one per distinct noise and setting)


class CellMetrics:
    """The per-cell metrics of one worker: holds the evaluator and the reference solves they need."""

    def __init__(self, model_spec: str, model, metrics: tuple[str, ...], reference_steps: int):
        self.model = model
        self.metrics = recorded(metrics)
        self.uses = {a for m in self.metrics for a in m.uses}
        self.reference_steps = reference_steps
        self.evaluator = None
        self.classes = 0
        self.mixture_weights = None  # π of the exact mixture
        if "posterior" in self.uses:
            self.mixture_weights = model.weights.cpu().numpy().astype(np.float64)
        if self.uses & {"features", "pred"}:
            from ..evaluation.evaluator import load_evaluator

            self.evaluator = load_evaluator(evaluator_folder(model_spec)).eval()
            self.classes = evaluator_classes(model_spec)
        self._references: dict[str, np.ndarray] = {}

    def compute(self, recipe, x, nfe: int, seconds: float) -> tuple[dict, dict]:
        """(metrics, arrays) of a finished cell; ``x`` the final samples (B, C, H, W) float32 tensor."""
        arrays = self.arrays(recipe, x)
        samples = Samples(label=np.full(recipe.batch, -1 if recipe.label is None else recipe.label),
                          nfe=np.full(recipe.batch, int(nfe)), seconds=seconds, arrays=arrays,
                          mixture_weights=self.mixture_weights, classes=self.classes)
        return measure(self.metrics, samples), arrays

    def arrays(self, recipe, x) -> dict:
        """The per-image arrays the metrics use, as the cell keeps them."""
        out: dict = {}
        if self.evaluator is not None:
            from ..evaluation.features import evaluator_outputs

            feats, pred = evaluator_outputs(self.evaluator, x.clamp(-1, 1).numpy())
            out["features"] = feats.astype(np.float32)  # the evaluator's own float32 features, exactly
            out["pred"] = pred.astype(np.int64)
        if "posterior" in self.uses:
            import torch

            out["posterior"] = self.model.responsibilities(x.to(torch.float64), 0.0).cpu().numpy()  # exact p(k | x₀)
        if "ref_distance" in self.uses:
            ref = self.reference(recipe)
            if ref is not None:
                diff = x.cpu().numpy().astype(np.float64) - ref.astype(np.float64)
                out["ref_distance"] = np.sqrt((diff.reshape(len(diff), -1) ** 2).mean(1))
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
            if len(self._references) >= MAX_REFERENCES:
                self._references.pop(next(iter(self._references)))
            self._references[key] = traj.final().cpu().numpy()
            traj.close()
        return self._references[key]
