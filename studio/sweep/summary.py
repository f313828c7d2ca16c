"""A sweep's results read back from its folder: one row per cell, and one row per setting.

A *setting* is a cell's values on the axes that are not pooled: the seeds (and any axis listed in
the spec's ``pool``, e.g. the label) are replicates of one setting. Metrics that need many samples
are computed here over every image of a setting, from the arrays the cells keep: Fréchet distance
and within-class diversity from the evaluator features (with sweep/evaluate.py's functions,
against features of held-out data, as ``studio eval``), accuracy and class fractions from the
evaluator's predictions, the mixture weights from the exact posteriors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

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


def summarise(out: Path, doc: dict, results: list[dict]) -> list[dict]:
    """One row per setting: its values, how many cells and images, and the pooled metrics."""
    from ..evaluation.features import frechet, within_class_diversity
    from ..evaluation.reference import reference_features

    spec = doc["spec"]
    axes = doc.get("setting_axes", [])
    metrics = spec.get("metrics", [])
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_key(r["values"], axes), []).append(r)
    ref: Optional[np.ndarray] = None
    rows = []
    for members in groups.values():
        ok = [r for r in members if r["status"] == "ok"]
        row: dict = {a: members[0]["values"].get(a) for a in axes}
        row.update(cells=len(members), failed=len(members) - len(ok))
        if not ok:
            rows.append(row)
            continue
        images = sum(r["recipe"]["batch"] for r in ok)
        row["images"] = images
        row["nfe"] = float(np.mean([r["metrics"]["nfe"] for r in ok]))
        if row["nfe"].is_integer():
            row["nfe"] = int(row["nfe"])
        row["seconds_per_image"] = sum(r["metrics"]["seconds_per_image"] * r["recipe"]["batch"] for r in ok) / images
        arrays = [read_arrays(out, r["key"]) for r in ok]
        if any("features" in a for a in arrays):
            feats = np.concatenate([a["features"] for a in arrays]).astype(np.float64)
            pred = np.concatenate([a["pred"] for a in arrays])
            label = np.concatenate([np.full(len(a["pred"]), -1 if r["recipe"]["label"] is None else r["recipe"]["label"])
                                    for a, r in zip(arrays, ok)])
            labelled = label >= 0
            if "accuracy" in metrics and labelled.any():
                row["accuracy"] = float((pred[labelled] == label[labelled]).mean())
            if "class_fractions" in metrics and (~labelled).any():
                k = max(int(pred.max()) + 1, 10)
                row["class_fractions"] = (np.bincount(pred[~labelled], minlength=k) / (~labelled).sum()).round(4).tolist()
            groups_of = np.where(labelled, label, pred)
            if "diversity" in metrics and np.bincount(groups_of).max() > 1:
                row["diversity"] = within_class_diversity(feats, groups_of)
            if "frechet" in metrics and len(feats) > 1:
                if ref is None:
                    ref = reference_features(out, spec["model"], int(spec.get("fd_reference", 2000)))
                row["frechet"] = frechet(feats, ref)
        if any("posterior" in a for a in arrays):
            post = np.concatenate([a["posterior"] for a in arrays])
            weights = post.mean(0)
            target = np.concatenate([_targets(r, a["posterior"].shape) for a, r in zip(arrays, ok)]).mean(0)
            row["component_weights"] = weights.round(4).tolist()
            if "weight_error" in metrics:
                row["weight_error"] = float(0.5 * np.abs(weights - target).sum())
            dist = [a["ref_distance"] for a in arrays if "ref_distance" in a]
            if "ref_distance" in metrics and dist:
                row["ref_distance"] = float(np.concatenate(dist).mean())
        rows.append(row)
    return rows


def _targets(result: dict, shape: tuple) -> np.ndarray:
    """The mixture weights each image of a gmm cell should carry: π, or one-hot for a labelled run."""
    from ..core.gmm import GMM_WEIGHTS

    label = result["recipe"]["label"]
    t = np.array(GMM_WEIGHTS, dtype=np.float64) if label is None else np.eye(shape[1])[label]
    return np.broadcast_to(t, shape)
