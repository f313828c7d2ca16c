"""A sweep's results read back from its folder: one row per cell, and one row per setting.

A *setting* is a cell's values on the axes that are not pooled: the seeds (and any axis listed in
the spec's ``pool``, e.g. the label) are replicates of one setting. Metrics that need many samples
are computed here over every image of a setting, from the arrays the cells keep, with the same
formulas as a cell's (studio/evaluation/metrics.py): Fréchet distance and within-class diversity
from the evaluator features (against features of held-out data, as ``studio eval``), accuracy and
class fractions from the evaluator's predictions, the mixture weights from the exact posteriors.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ..core.gmm import GMM_WEIGHTS
from ..evaluation.metrics import ARRAYS, Samples, evaluator_classes, measure, recorded
from ..evaluation.reference import reference_features
from .cells import is_done, read_arrays, read_result

SWEEP_FILE = "sweep.json"


class ReportError(ValueError):
    """A folder that holds no sweep to report; one line."""


def load_sweep(out: Path) -> dict:
    path = Path(out) / SWEEP_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{out}: no {SWEEP_FILE} here; give the --out folder of a sweep") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: cannot read the sweep ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(doc, dict) or "cells" not in doc or "spec" not in doc:
        raise ReportError(f"{path}: not a sweep file")
    return doc


def cell_results(out: Path, doc: dict) -> list[dict]:
    """The result of every cell of the sweep that is on disk, in the spec's order."""
    return [read_result(out, c["key"]) for c in doc["cells"] if is_done(out, c["key"])]


def _key(values: dict, axes: list[str]) -> tuple:
    return tuple(json.dumps(values.get(a)) for a in axes)


def cell_samples(result: dict, arrays: dict, classes: int = 0) -> Samples:
    """The images of one finished cell, as its metrics saw them (studio/evaluation/metrics.py)."""
    recipe, batch = result["recipe"], result["recipe"]["batch"]
    pi = np.array(GMM_WEIGHTS, dtype=np.float64) if "posterior" in arrays else None  # the exact model is gmm
    return Samples(label=np.full(batch, -1 if recipe["label"] is None else recipe["label"]),
                   nfe=np.full(batch, result["metrics"]["nfe"]),
                   seconds=result["metrics"]["seconds_per_image"] * batch,
                   arrays={k: v for k, v in arrays.items() if k in ARRAYS}, mixture_weights=pi, classes=classes)


def summarise(out: Path, doc: dict, results: list[dict]) -> list[dict]:
    """One row per setting: its values, how many cells and images, and the pooled metrics."""
    spec = doc["spec"]
    axes = doc.get("setting_axes", [])
    metrics = recorded(spec.get("metrics", []))
    classes = evaluator_classes(spec["model"]) if any(m.uses for m in metrics) else 0
    reference = functools.cache(lambda: reference_features(out, spec["model"], int(spec["fd_reference"])))
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_key(r["values"], axes), []).append(r)
    rows = []
    for members in groups.values():
        ok = [r for r in members if r["status"] == "ok"]
        row: dict = {a: members[0]["values"].get(a) for a in axes}
        row.update(cells=len(members), failed=len(members) - len(ok))
        if ok:
            parts = [cell_samples(r, read_arrays(out, r["key"]), classes) for r in ok]
            pooled = Samples.pooled(parts, reference=reference)
            row["images"] = pooled.images
            row.update(measure(metrics, pooled))
        rows.append(row)
    return rows
