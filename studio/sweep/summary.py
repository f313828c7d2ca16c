"""A sweep's results read back from its folder: one row per cell, and one row per setting.

A *setting* is a cell's values on the axes that are not pooled: the seeds (and any axis listed in
the spec's ``pool``, e.g. the label) are replicates of one setting. Metrics that need many samples
are computed here over every image of a setting, from the arrays the cells keep, with the same
formulas as a cell's (studio/evaluation/metrics.py): Fréchet distance and within-class diversity
from the evaluator features (against features of held-out data of the classes the setting asked
for, all of them for unlabelled runs; ``studio eval`` pools all ten), accuracy and
class fractions from the evaluator's predictions, the mixture weights from the exact posteriors.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.gmm import GMM_WEIGHTS
from ..evaluation.metrics import ARRAYS, Samples, evaluator_classes, measure, recorded
from ..core.file_reading import read_json
from ..evaluation.reference import reference_features
from .cells import KEY_CHARS, is_done, read_arrays, read_result

SWEEP_FILE = "sweep.json"


class ReportError(ValueError):
    """A folder that holds no sweep to report; one line."""


SWEEP_LIMIT = 256 << 20  # bytes of a sweep.json: the spec's text and a line per cell (at most MAX_CELLS)
_KEY = re.compile(rf"^[0-9a-f]{{{KEY_CHARS}}}$")


def load_sweep(out: Path) -> dict:
    """``out``'s sweep.json, checked field by field (a malformed one is one line naming the file)."""
    path = Path(out) / SWEEP_FILE
    if not path.exists() and not path.is_symlink():
        raise ReportError(f"{out}: no {SWEEP_FILE} here; give the --out folder of a sweep")
    try:
        doc = read_json(path, SWEEP_LIMIT, ReportError)
    except ReportError as e:
        raise ReportError(f"{e}; give the --out folder of a sweep") from None
    problem = _sweep_problem(doc)
    if problem:
        raise ReportError(f"{path}: not a sweep file ({problem}); give the --out folder of a sweep")
    return doc


def _sweep_problem(doc) -> Optional[str]:
    """What makes ``doc`` not a sweep document, or None: every field the report and the window read."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return "no spec"
    kinds = {"model": str, "axes": dict, "metrics": list, "pool": list, "fd_reference": int, "reference_steps": int}
    for name, kind in kinds.items():
        if not isinstance(spec.get(name), kind) or isinstance(spec.get(name), bool):
            return f"spec.{name} is missing or not a {kind.__name__}"
    if spec.get("title") is not None and not isinstance(spec["title"], str):
        return "spec.title is not a string"
    if not all(isinstance(m, str) for m in spec["metrics"]):
        return "spec.metrics holds a non-string"
    axes = doc.get("setting_axes", [])
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        return "setting_axes is not a list of names"
    cells = doc.get("cells")
    if not isinstance(cells, list):
        return "no list of cells"
    for i, c in enumerate(cells):
        if not isinstance(c, dict) or not isinstance(c.get("key"), str) or not _KEY.match(c["key"]) or \
                not isinstance(c.get("values"), dict):
            return f"cell {i + 1} is not a key of {KEY_CHARS} hex digits with its values"
    return None


def measured_by(spec: dict) -> dict:
    """How a sweep's cells are measured (from its spec, as ``sweep.json`` records it): the metrics they
    record and, where ``ref_distance`` is one, the reference solve's steps. Cells measured otherwise
    are not this sweep's, whatever their recipe."""
    names = {m.name for m in recorded(spec.get("metrics", []))}
    return {"metrics": sorted(names),
            "reference_steps": spec.get("reference_steps") if "ref_distance" in names else None}


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


def covered_labels(results: list[dict]) -> Optional[tuple[int, ...]]:
    """The class labels a setting's cells asked for, or None when any is unlabelled (every class): the
    held-out images its Fréchet distance compares with are of these classes."""
    labels = {r["recipe"].get("label") for r in results}
    if None in labels or not all(isinstance(k, int) for k in labels):
        return None
    return tuple(sorted(labels))


def summarise(out: Path, doc: dict, results: list[dict]) -> list[dict]:
    """One row per setting: its values, how many cells and images, and the pooled metrics."""
    spec = doc["spec"]
    axes = doc.get("setting_axes", [])
    metrics = recorded(spec.get("metrics", []))
    classes = evaluator_classes(spec["model"]) if any(m.uses for m in metrics) else 0
    references = functools.cache(lambda labels: reference_features(out, spec["model"], int(spec["fd_reference"]),
                                                                   labels))
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
            labels = covered_labels(ok)
            pooled = Samples.pooled(parts, reference=lambda labels=labels: references(labels))
            row["images"] = pooled.images
            row.update(measure(metrics, pooled))
        rows.append(row)
    return rows
