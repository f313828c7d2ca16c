"""The metrics of a set of samples, each declared once: its name, label, direction, what it needs, its formula.

A :class:`Metric` is a formula over :class:`Samples`: the per-image arrays of one sweep cell, or of
every cell of a setting pooled (the seeds and any pooled axis), so a cell's value and its setting's
are the same computation over fewer or more images. What a metric needs follows from the per-image
arrays it ``uses`` (:data:`ARRAYS`): the clean-image evaluator beside the model's weights (the
digits model's ``evaluator/``), the exact posterior of the closed-form mixture (``gmm``), or
nothing. ``available_metrics(model)``, the sweep spec's check of ``metrics = [...]``, its help
text, the report's tables and plot labels and the window's sweep view all read :data:`METRICS`.

- ``accuracy``: the fraction of labelled samples the evaluator reads as the requested class;
- ``diversity``: mean pairwise distance of the evaluator's penultimate features within each class
  (the requested one, or the one read for unlabelled samples): Ho & Salimans 2022's trade-off;
- ``frechet``: Fréchet distance between Gaussians fitted to the samples' and held-out data's
  evaluator features (Heusel et al. 2017); a property of many samples, so only pooled over a setting;
- ``class_fractions``: the classes the evaluator reads in unlabelled samples;
- ``weight_error``: total-variation distance between the mixture weights the samples carry (the mean
  of the exact posteriors p(k | x₀)) and those they should carry (π, one-hot for a labelled run);
- ``ref_distance``: RMS distance of each sample to a fine solve of the probability-flow ODE from the
  same noise (DPM-Solver++(2M), Lu et al. 2022; the sweep's ``reference_steps``): a deterministic
  sampler's discretisation error. docs/maths.md, "The exact Gaussian mixture";
- ``component_weights``: the mixture weights the samples carry;
- ``seconds_per_image``, ``nfe``: the cost (sampling wall time; denoiser evaluations, counted by the
  denoiser). These need nothing and are always recorded: the report plots every metric against NFE.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..session.provenance import model_folder
from .reference import evaluator_folder

EVALUATOR = "the clean-image evaluator beside the weights"
EXACT = "an exact model (gmm)"
# the per-image arrays a cell keeps for its metrics, and what makes them
ARRAYS = {"features": EVALUATOR, "pred": EVALUATOR, "posterior": EXACT, "ref_distance": EXACT}


@dataclass(frozen=True)
class Samples:
    """Per-image facts of a set of samples (one cell, or the cells of a setting pooled)."""

    label: np.ndarray  # (N,) the class each image was asked for; -1: none
    nfe: np.ndarray  # (N,) denoiser evaluations that made each image
    seconds: float  # sampling wall time of all N images
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)  # ARRAYS the cells kept, N rows each
    mixture_weights: Optional[np.ndarray] = None  # π of the exact mixture
    classes: int = 0  # classes the evaluator reads (the length of class_fractions)
    reference: Optional[Callable[[], np.ndarray]] = None  # held-out evaluator features; None for a cell

    @property
    def images(self) -> int:
        return len(self.label)

    @classmethod
    def pooled(cls, parts: Sequence["Samples"], **kw) -> "Samples":
        """Every image of ``parts`` as one set; an array only where every part kept it."""
        shared = set.intersection(*(set(p.arrays) for p in parts))
        return cls(label=np.concatenate([p.label for p in parts]), nfe=np.concatenate([p.nfe for p in parts]),
                   seconds=sum(p.seconds for p in parts),
                   arrays={a: np.concatenate([p.arrays[a] for p in parts]) for a in sorted(shared)},
                   mixture_weights=parts[0].mixture_weights, classes=max(p.classes for p in parts), **kw)


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # axis labels and the window
    compute: Callable[[Samples], Any]  # the value; None where the samples do not define it
    uses: tuple[str, ...] = ()  # per-image arrays (ARRAYS) it reads
    lower_is_better: bool = False
    scalar: bool = True  # False: a list (one value per class or component), in tables but not plotted

    @property
    def needs(self) -> Optional[str]:
        """What a model must have for this metric (EVALUATOR or EXACT), or None."""
        return next((ARRAYS[a] for a in self.uses), None)

    def value(self, samples: Samples) -> Any:
        if any(a not in samples.arrays for a in self.uses):
            return None
        return self.compute(samples)


def _nfe(s: Samples):
    v = float(s.nfe.mean())
    return int(v) if v.is_integer() else v


def _accuracy(s: Samples) -> Optional[float]:
    labelled = s.label >= 0
    return float((s.arrays["pred"][labelled] == s.label[labelled]).mean()) if labelled.any() else None


def _class_fractions(s: Samples) -> Optional[list]:
    pred = s.arrays["pred"][s.label < 0]
    if not len(pred):
        return None
    k = max(s.classes, int(pred.max()) + 1)
    return (np.bincount(pred, minlength=k) / len(pred)).round(4).tolist()


def _diversity(s: Samples) -> Optional[float]:
    from .features import within_class_diversity

    groups = np.where(s.label >= 0, s.label, s.arrays["pred"])
    if np.bincount(groups).max() < 2:
        return None
    return within_class_diversity(s.arrays["features"].astype(np.float64), groups)


def _frechet(s: Samples) -> Optional[float]:
    from .features import frechet

    if s.reference is None or s.images < 2:
        return None
    return frechet(s.arrays["features"].astype(np.float64), s.reference())


def target_weights(s: Samples) -> np.ndarray:
    """(N, K): the mixture weights each image should carry: π, or one-hot for a labelled image."""
    pi = np.asarray(s.mixture_weights, dtype=np.float64)
    onehot = np.eye(len(pi))[np.clip(s.label, 0, None)]
    return np.where((s.label >= 0)[:, None], onehot, pi)


def _weight_error(s: Samples) -> Optional[float]:
    if s.mixture_weights is None:
        return None
    carried = s.arrays["posterior"].mean(0)
    return float(0.5 * np.abs(carried - target_weights(s).mean(0)).sum())


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", _accuracy, ("pred",)),
    Metric("diversity", "within-class diversity", _diversity, ("features", "pred")),
    Metric("frechet", "Fréchet distance (evaluator features)", _frechet, ("features",), lower_is_better=True),
    Metric("class_fractions", "class fractions (unlabelled samples)", _class_fractions, ("pred",), scalar=False),
    Metric("weight_error", "mixture-weight error (TV)", _weight_error, ("posterior",), lower_is_better=True),
    Metric("ref_distance", "RMS distance to the reference solve", lambda s: float(s.arrays["ref_distance"].mean()),
           ("ref_distance",), lower_is_better=True),
    Metric("component_weights", "mixture weights the samples carry",
           lambda s: s.arrays["posterior"].mean(0).round(4).tolist(), ("posterior",), scalar=False),
    Metric("seconds_per_image", "seconds per image", lambda s: s.seconds / s.images, lower_is_better=True),
    Metric("nfe", "NFE (denoiser evaluations)", _nfe, lower_is_better=True),
)}
COST = tuple(name for name, m in METRICS.items() if m.needs is None)  # what every run records


def is_exact(model: str) -> bool:
    """``gmm``, or ``default`` in a checkout without the digits model (which then opens gmm)."""
    return model == "gmm" or (model == "default" and model_folder("default") is None)


def available_metrics(model: str) -> tuple[str, ...]:
    """The metrics ``model`` (a built-in name or a folder) can report, in :data:`METRICS`' order."""
    has = {None, EXACT if is_exact(model) else None, EVALUATOR if evaluator_folder(model) is not None else None}
    return tuple(name for name, m in METRICS.items() if m.needs in has)


def recorded(names: Sequence[str]) -> list[Metric]:
    """The metrics a run records: those named, and always the ones that need nothing (the cost)."""
    return [m for m in METRICS.values() if m.name in names or m.name in COST]


def measure(metrics: Sequence[Metric], samples: Samples) -> dict:
    """{name: value} of each metric the samples define."""
    out = {}
    for m in metrics:
        v = m.value(samples)
        if v is not None:
            out[m.name] = v
    return out


def evaluator_classes(model: str) -> int:
    """How many classes the model's clean-image evaluator reads (0 without one)."""
    folder = evaluator_folder(model)
    if folder is None:
        return 0
    try:
        return int(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("num_classes", 0))
    except (OSError, ValueError, TypeError):
        return 0


def describe_metric(m: Metric) -> str:
    """For help texts: the label, the direction, what it needs."""
    parts = [m.label] if m.label != m.name else []
    if m.scalar:
        parts.append("lower is better" if m.lower_is_better else "higher is better")
    if m.needs:
        parts.append(f"needs {m.needs}")
    return "; ".join(parts)
