"""A sweep's cells on disk: one folder per recipe, written whole or not at all.

A cell's key is a hash of its canonical recipe (the resolved recipe's JSON with sorted keys and
without the ``versions`` block), so the same settings always land in the same folder and a sweep
re-run into its folder finds what is already done, whatever spec or executor made it::

    DIR/cells/ab/ab12cd34ef56ab78/
        result.json   the cell's axis values, canonical recipe, metrics, timing, worker
        recipe.json   the full recipe document with versions and the weights' SHA-256:
                      ``studio sample --recipe …/recipe.json`` reproduces the cell alone
        final.png     the final images as a grid, with the recipe in its PNG text chunks
        final.npz     float32 ``x``: the final samples (a latent model's: its latents), and the
                      per-image arrays the metrics need (evaluator features, posteriors)

Each cell is staged in a hidden folder beside it and renamed into place by the studio's one
atomic writer (session/atomic.py): a sweep killed at any moment leaves whole cells and, at most,
staging folders that the next run removes. The two-character shard keeps folders small.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..session.atomic import sweep_stale, write_folder
from ..session.recipe import RECIPE_FORMAT

CELLS = "cells"
KEY_CHARS = 16


def canonical_dict(recipe) -> dict:
    """``recipe.resolved().to_dict()`` without the ``versions`` block (which costs milliseconds of
    package-metadata reads per call: too much for a grid of many thousand cells)."""
    r = recipe.resolved()
    d = asdict(r)
    d["guidance_interval"] = list(r.guidance_interval)
    return {"format": RECIPE_FORMAT, **d}


def recipe_document_json(recipe, versions: dict, fingerprint: dict) -> str:
    """The recipe as ``studio sample`` writes it (session/provenance.py: the recipe, its versions and
    the weights' SHA-256), with the versions read once per sweep rather than once per cell."""
    from ..session.provenance import WEIGHTS_KEY

    doc = canonical_dict(recipe)
    doc["versions"] = dict(versions, **({WEIGHTS_KEY: fingerprint} if fingerprint else {}))
    return json.dumps(doc, indent=2)


def canonical_json(recipe) -> str:
    """The resolved recipe as compact JSON with sorted keys, without versions: what a key hashes."""
    return json.dumps(canonical_dict(recipe), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cell_key(recipe) -> str:
    """A stable key for a cell: the first 16 hex digits of SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(recipe).encode("utf-8")).hexdigest()[:KEY_CHARS]


def cell_folder(out: Path, key: str) -> Path:
    return Path(out) / CELLS / key[:2] / key


def is_done(out: Path, key: str) -> bool:
    """Whether the cell is on disk (its folder only ever appears complete)."""
    return (cell_folder(out, key) / "result.json").is_file()


def done_keys(out: Path, keys: Iterable[str]) -> set[str]:
    return {k for k in keys if is_done(out, k)}


def remove_stale_staging(out: Path) -> int:
    """Remove the staging folders of sweeps that were killed (their process is gone); returns how many."""
    root = Path(out) / CELLS
    if not root.is_dir():
        return 0
    return sum(len(sweep_stale(shard)) for shard in root.iterdir() if shard.is_dir())


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_cell(out: Path, key: str, result: dict, recipe_document_json: str, png: Optional[bytes] = None,
               npz: Optional[bytes] = None) -> Path:
    """Write one cell folder atomically (refused if it exists: a cell is computed once)."""

    def fill(tmp: Path) -> None:
        (tmp / "recipe.json").write_text(recipe_document_json + "\n", encoding="utf-8")
        if png is not None:
            (tmp / "final.png").write_bytes(png)
        if npz is not None:
            (tmp / "final.npz").write_bytes(npz)
        (tmp / "result.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")

    return write_folder(cell_folder(out, key), fill)


def read_result(out: Path, key: str) -> dict:
    return json.loads((cell_folder(out, key) / "result.json").read_text(encoding="utf-8"))


def read_arrays(out: Path, key: str) -> dict[str, np.ndarray]:
    """The cell's arrays (``x`` and the metrics' per-image arrays); {} for a failed cell."""
    path = cell_folder(out, key) / "final.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
