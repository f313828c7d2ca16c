"""Running a sweep into its folder: what is missing is computed, as it finishes it is written.

The driver (this process) owns the folder: it takes the folder's lock (one sweep writes a folder at
a time), records the spec in ``sweep.json``, asks the executor — the local pool (local.py) or Ray
(ray_exec.py) — for the cells not yet on disk, and writes each result as it arrives (cells.py);
workers only compute, so a cluster's nodes need no shared file system. A cell is written once: a
result for a key already written (a replaced Ray worker's cell that finished after all) is dropped.

Before ``--out`` is created or written and before any worker starts, the driver checks every distinct
setting against the model's description, read from its configs and weight-file headers without loading
a weight (session/model_description.py): a label beyond its classes, a prompt for a class model, a
guidance it cannot run, weights cut short. A refusal is one line naming the spec's line, like the
spec's own errors, and leaves the folder as it was. A folder whose sweep measures its cells otherwise
(other metrics, another reference solve) is refused, since its cells would be taken as this spec's; a
resumed sweep checks the cells it finds and computes damaged ones again. A Ray cluster lost mid-sweep
(ray_exec.py's ``ClusterLost``) is one line saying how many cells the folder keeps.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..session.atomic import OutputError, Reservation
from ..session.model_description import check_recipe, describe_model
from ..session.provenance import added_files, weights_fingerprint
from ..session.recipe import versions
from .cells import (canonical_dict, canonical_json, is_done, recipe_document_json, remove_cell, remove_stale_staging,
                    verified_done, write_cell)
from .local import LocalPool, SweepError, default_workers
from .progress import SweepProgress
from .ray_exec import ClusterLost
from .spec import SpecError, SweepSpec, describe, refusal_path
from .summary import SWEEP_FILE, ReportError, load_sweep, measured_by
from .toml_lines import key_lines, line_of
from .worker import cannot_open, one_line

SWEEP_FORMAT = "sampling-studio/sweep@1"


class CellRefused(ValueError):
    """A cell the model or the workers cannot run at all (every try would fail the same way)."""


@dataclass
class SweepStats:
    total: int = 0
    already: int = 0  # cells found in the folder
    computed: int = 0  # cells written by this run (ok or failed)
    failed: int = 0  # of those, chains that diverged
    errors: list = field(default_factory=list)  # (key, message) of cells not written (retried next time)
    duplicates: int = 0  # results dropped because the cell was already written
    replaced_workers: int = 0
    seconds: float = 0.0
    executor: str = ""
    written_at: list = field(default_factory=list)  # time.perf_counter() as each cell was written


def check_folder(out: Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / SWEEP_FILE).is_file():
        visible = [p for p in out.iterdir() if not p.name.startswith(".")]
        if visible:
            raise OutputError(f"{out}: is not empty and holds no sweep ({SWEEP_FILE}); choose a new or empty "
                              "folder, or the folder of the sweep to continue")
    return out


def sweep_document(spec: SweepSpec) -> dict:
    return {"format": SWEEP_FORMAT, "spec_file": spec.path, "spec_text": spec.text, "spec": spec.to_dict(),
            "setting_axes": spec.setting_axes,
            "cells": [{"key": c.key, "values": c.values} for c in spec.cells],
            "merged": spec.merged, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions()}


def make_executor(spec: SweepSpec, workers: Optional[int], ray: Optional[str], gpus_per_worker: float,
                  fingerprint: dict, todo: int, allow_pickle: bool = False, cpus_per_worker: float = 1.0,
                  threads: Optional[int] = None):
    fixed = spec.fixed
    config = {"model": spec.model, "device": fixed.get("device", "auto"), "dtype": fixed.get("dtype", "float32"),
              "classifier": fixed.get("classifier"), "prediction_type": fixed.get("prediction_type"),
              "metrics": list(spec.metrics),
              "reference_steps": spec.reference_steps, "fingerprint": fingerprint, "allow_pickle": allow_pickle}
    if ray is not None:
        from .ray_exec import RayPool

        return RayPool(config, ray, workers, gpus_per_worker, cpus_per_worker, todo)
    if gpus_per_worker:
        raise SweepError("--gpus-per-worker applies to --ray; a local sweep uses the device of the recipe "
                         "(set device in [fixed])")
    n = workers or default_workers(spec.model, config["device"], todo)
    return LocalPool(config, n, threads)


def check_same_sweep(out: Path, spec: SweepSpec) -> None:
    """Refuse a folder whose sweep measures its cells otherwise (other metrics, another reference solve):
    cells are keyed by their recipe, so this spec would take those cells as its own."""
    if not (out / SWEEP_FILE).is_file():
        return
    try:
        doc = load_sweep(out)
    except ReportError as e:
        raise OutputError(f"{str(e).split('; give the')[0]}; choose a new --out, or delete {SWEEP_FILE} to run "
                          f"this spec into {out} again") from None
    theirs, ours = measured_by(doc["spec"]), measured_by(spec.to_dict())
    if theirs["metrics"] != ours["metrics"]:
        raise OutputError(f"{out} holds a sweep whose cells record {', '.join(theirs['metrics'])}; this spec records "
                          f"{', '.join(ours['metrics'])}, and would take those cells as its own: choose a new --out, "
                          "or ask for the same metrics")
    if theirs["reference_steps"] != ours["reference_steps"]:
        raise OutputError(f"{out} holds a sweep measured with reference_steps = {theirs['reference_steps']}; this "
                          f"spec says {ours['reference_steps']}, and would take those cells as its own: choose a new "
                          "--out, or use the same reference_steps")


def run_sweep(spec: SweepSpec, out, workers: Optional[int] = None, ray: Optional[str] = None,
              gpus_per_worker: float = 0.0, stream=None, report: bool = True, allow_pickle: bool = False,
              cpus_per_worker: float = 1.0, progress_every_s: float = 30.0,
              threads: Optional[int] = None) -> SweepStats:
    """Compute the cells of ``spec`` missing from ``out``, then write the tables and plots. ``threads``:
    torch threads of each local worker (default: the cores shared out, capped by OMP_NUM_THREADS)."""
    stream = stream if stream is not None else sys.stderr
    out = check_folder(out)
    check_same_sweep(out, spec)
    created = not out.exists()
    try:
        return _run(spec, out, workers, ray, gpus_per_worker, stream, report, allow_pickle, cpus_per_worker,
                    progress_every_s, threads)
    except BaseException:
        if created:  # a sweep that could not start leaves no empty folder behind
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def _run(spec, out: Path, workers, ray, gpus_per_worker, stream, report, allow_pickle, cpus_per_worker,
         progress_every_s, threads) -> SweepStats:
    stats = SweepStats(total=len(spec.cells))
    t0 = time.perf_counter()
    done, broken = verified_done(out, (c.key for c in spec.cells)) if out.is_dir() else (set(), [])
    todo = [c for c in spec.cells if c.key not in done]
    executor, fingerprint, progress = None, {}, None
    try:
        if todo:  # every setting checked against the model's description before a worker or --out exists
            check_cells(spec, todo, allow_pickle)
            fingerprint = weights_fingerprint(spec.model, spec.fixed.get("classifier"))
            executor = make_executor(spec, workers, ray, gpus_per_worker, fingerprint, len(todo), allow_pickle,
                                     cpus_per_worker, threads)
            stream = executor.terminal(stream)  # Ray's own output is kept off the terminal, the sweep's is not
        with Reservation(out / SWEEP_FILE, overwrite=True) as lock:
            remove_stale_staging(out)
            for key, _ in broken:
                remove_cell(out, key)
            todo = [c for c in todo if not is_done(out, c.key)]  # as the folder is now that it is ours
            stats.already = len(spec.cells) - len(todo)
            progress = SweepProgress(stats.total, stats.already, stream, every_s=progress_every_s)
            if broken:
                progress.note(f"{len(broken)} damaged cell{'s' if len(broken) != 1 else ''} will be computed again "
                              f"(first: {broken[0][1].split('; run the sweep again')[0]})")
            staged = lock.stage_file()
            Path(staged).write_text(json.dumps(sweep_document(spec), indent=1) + "\n", encoding="utf-8")
            lock.commit()
            if executor is not None and todo:
                stats.executor = executor.describe()
                merged = f"; {spec.merged} repeated settings merged" if spec.merged else ""
                progress.note(f"{len(todo)} of {stats.total} cells to compute{merged}, on {stats.executor}")
                _compute(spec, out, todo, executor, fingerprint, stats, progress)
            else:
                progress.note(f"all {stats.total} cells are already in {out}")
    finally:
        if progress is not None:
            progress.end_line()
        if executor is not None:
            stats.replaced_workers = executor.replaced
            executor.close()
    stats.seconds = time.perf_counter() - t0
    if report:
        from .report import write_report

        write_report(out)
    return stats


def check_cells(spec: SweepSpec, todo, allow_pickle: bool = False) -> None:
    """Every distinct setting of ``todo`` (the seed changes no check) against the model's description
    (``describe_model``: configs and weight headers, no weights): a model that would not open is a
    ``CellRefused``, a setting it refuses a ``SpecError`` naming the spec's line."""
    fixed = spec.fixed
    try:
        model = describe_model(spec.model, fixed.get("classifier"), fixed.get("prediction_type"), allow_pickle)
    except (ValueError, OSError) as e:
        raise CellRefused(cannot_open(spec.model, e)) from None
    seen: set[str] = set()
    for c in todo:
        distinct = canonical_json(c.recipe.replace(seed=0))
        if distinct in seen:
            continue
        seen.add(distinct)
        try:
            check_recipe(model, c.recipe)
        except (ValueError, OSError) as e:
            message = one_line(e)
            path = refusal_path(spec, message)
            line = line_of(key_lines(spec.text), *path)
            raise SpecError(f"{spec.path} line {line}: {'.'.join(path)}: the model refuses the cell "
                            f"{describe(c.values)}: {message}") from None


def _compute(spec: SweepSpec, out: Path, todo, executor, fingerprint: dict, stats: SweepStats,
             progress: SweepProgress) -> None:
    by_key = {c.key: c for c in todo}
    written: set[str] = set()
    run_versions = versions()

    def on_result(p: dict) -> None:
        key = p["key"]
        cell = by_key[key]
        if key in written:
            stats.duplicates += 1
            return
        if p["status"] == "error":
            if p.get("fatal"):
                raise CellRefused(f"the cell {describe(cell.values)} cannot run: {p['error']}")
            stats.errors.append((key, p["error"]))
            progress.note(f"cell {describe(cell.values)} not computed: {p['error']} (a re-run retries it)")
            return
        result = {"key": key, "values": cell.values, "status": p["status"],
                  "recipe": canonical_dict(cell.recipe), "metrics": p.get("metrics", {}),
                  "error": p.get("error"), "seconds": p.get("seconds"), "worker_seconds": p.get("worker_seconds"),
                  "worker": p.get("worker"),
                  "device": p.get("device"), "executor": executor.name,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        cell_weights = {**fingerprint, **added_files(cell.recipe.loras, cell.recipe.vae)}  # the cell's LoRAs and VAE
        write_cell(out, key, result, recipe_document_json(cell.recipe, run_versions, cell_weights), p.get("png"),
                   p.get("npz"))
        written.add(key)
        stats.written_at.append(time.perf_counter())
        stats.computed += 1
        if p["status"] == "failed":
            stats.failed += 1
        progress.update(stats.computed + len(stats.errors), stats.failed)

    try:
        executor.run([(c.key, canonical_dict(c.recipe)) for c in todo], on_result)
    except ClusterLost as e:  # the cells written so far stay; the same command continues
        raise SweepError(e.told(stats.already + stats.computed, out)) from None
