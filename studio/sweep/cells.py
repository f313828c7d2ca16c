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
staging folders that the next run removes. The two-character shard keeps folders small. A cell
damaged afterwards (a ``result.json`` cut short, an unreadable ``final.npz``) is found when the
sweep resumes and computed again; a report that meets one names the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..core.file_reading import RECIPE_LIMIT, parse_json, read_text
from ..evaluation.metrics import COST
from ..session.atomic import sweep_stale, write_folder
from ..session.recipe import RECIPE_FORMAT

CELLS = "cells"
KEY_CHARS = 16
RESULT_LIMIT = RECIPE_LIMIT  # bytes of a result.json: the cell's recipe and metrics
RESULT_STATUSES = ("ok", "failed")  # what a written cell holds ("error" cells are never written)


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


class BrokenCell(ValueError):
    """A cell folder whose files cannot be read back (cut short, edited, damaged); one line naming the file."""


def is_done(out: Path, key: str) -> bool:
    """Whether the cell is on disk (its folder only ever appears complete)."""
    return (cell_folder(out, key) / "result.json").is_file()


def done_keys(out: Path, keys: Iterable[str]) -> set[str]:
    return {k for k in keys if is_done(out, k)}


def check_cell(out: Path, key: str) -> None:
    """Raise BrokenCell unless the cell's ``result.json`` reads back as this cell's result and, for a
    computed cell, its ``final.npz`` opens: what a resumed sweep and a report rely on."""
    result = read_result(out, key)
    if result["status"] == "ok":
        path = cell_folder(out, key) / "final.npz"
        try:
            with zipfile.ZipFile(path) as z:  # the archive's directory is at its end: a cut file fails here
                z.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            raise _broken(path, getattr(e, "strerror", None) or str(e) or "unreadable") from None


def verified_done(out: Path, keys: Iterable[str]) -> tuple[set[str], list[tuple[str, str]]]:
    """(the keys whose cells are whole, [(key, problem)] of the cells on disk that are not)."""
    done, broken = set(), []
    for k in keys:
        if not is_done(out, k):
            continue
        try:
            check_cell(out, k)
        except BrokenCell as e:
            broken.append((k, str(e)))
        else:
            done.add(k)
    return done, broken


def remove_cell(out: Path, key: str) -> None:
    """Take a broken cell out of the way so that it is computed again: renamed to a staging name first
    (session/atomic.py's pattern, so a removal cut short is finished by the next run), then deleted."""
    folder = cell_folder(out, key)
    aside = folder.with_name(f".{key}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


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


def _broken(path: Path, problem: str) -> BrokenCell:
    return BrokenCell(f"{path}: {problem}; run the sweep again (the same command) to compute this cell anew")


def read_result(out: Path, key: str) -> dict:
    """The cell's ``result.json``, checked to be this cell's result (BrokenCell names the file otherwise)."""
    path = cell_folder(out, key) / "result.json"
    try:
        doc = parse_json(read_text(path, RESULT_LIMIT, BrokenCell), str(path), BrokenCell)
    except BrokenCell as e:
        raise _broken(path, str(e).removeprefix(f"{path}: ")) from None
    if not isinstance(doc, dict) or doc.get("key") != key:
        raise _broken(path, "not this cell's result")
    if doc.get("status") not in RESULT_STATUSES or not isinstance(doc.get("metrics"), dict) or \
            not isinstance(doc.get("values"), dict) or not isinstance(doc.get("recipe"), dict):
        raise _broken(path, "not a finished cell's result (status, values, recipe or metrics missing)")
    if doc["status"] == "ok" and not (all(isinstance(doc["metrics"].get(m), (int, float)) for m in COST) and
                                      isinstance(doc["recipe"].get("batch"), int)):
        raise _broken(path, f"a computed cell's result without its batch or {' and '.join(COST)}")
    return doc


def read_arrays(out: Path, key: str) -> dict[str, np.ndarray]:
    """The cell's arrays (``x`` and the metrics' per-image arrays); {} for a failed cell."""
    path = cell_folder(out, key) / "final.npz"
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _broken(path, f"cannot be read ({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None
