"""``studio eval``: measure the built-in model with a separate clean-image evaluator.

Each setting of the grid below is a sweep with a fixed spec (``setting_spec``, run by studio/sweep on
the local worker pool), and its result is the sweep's summary row: the metrics of
studio/evaluation/metrics.py in the evaluator's penultimate features or its predictions —
accuracy (the fraction of samples read as the requested digit), within-class diversity (Ho &
Salimans' trade-off), the class fractions of unconditional (null-label) samples, and the Fréchet
distance between sample and held-out-data feature Gaussians (Heusel et al. 2017, "FID", here in
the evaluator's features: FD = ‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})).

``--model digits-text`` runs studio/evaluation/text_eval.py instead, its batches of images kept as cells
of the same cell store (:class:`ChunkCells`). Either way the work goes to a folder of the user's cache
named by the model's weights, n and seed (``default_out``), so the same command continues a stopped
evaluation, and :class:`OverallProgress` prints the time left for all of it.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core.guidance import default_scale
from ..core.loading import DEFAULT_MODEL_DIR, TEXT_MODEL_DIR, TEXT_MODEL_NAME, read_recommended_scales
from ..core.arg_types import positive
from ..evaluation import text_eval

DIGITS_GROUPS = ("cfg", "classifier", "uncond", "ddim_table")  # the keys of standard_settings
# network evaluations per sampler step, by guidance: CFG runs the UNet twice, classifier guidance adds the
# classifier's forward and backward pass (about one UNet evaluation). The overall time estimate weighs
# each setting's work by images × steps × these.
EVALS_PER_STEP = {"none": 1, "cfg": 2, "classifier": 2}


@dataclass(frozen=True)
class Setting:
    name: str
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: str = "cfg"
    scale: float = 3.0
    conditional: bool = True  # False: null label, no guidance


def setting_spec(s: Setting, n: int, seed: int, model_dir: Path, fd_reference: Optional[int] = None,
                 batch: int = 50) -> str:
    """The sweep spec (TOML) of one setting: labels 0..K−1 (n/K samples each, or n unlabelled), in
    batches of at most ``batch`` whose seeds are ``seed``, ``seed + 1``, …; every metric the model's
    evaluator gives (Fréchet distance, diversity, accuracy or class fractions) pooled over the labels
    and seeds. ``fd_reference``: held-out images of the Fréchet distance (None: the sweep's default)."""
    k = 10  # the evaluator reads digits
    per_class = int(np.ceil(n / k)) if s.conditional else n
    chunks = int(np.ceil(per_class / batch))
    b = int(np.ceil(per_class / chunks))
    guided = s.conditional and s.guidance != "none"
    lines = [f"title = {json.dumps(s.name)}", f"model = {json.dumps(str(model_dir))}",
             *([f"fd_reference = {int(fd_reference)}"] if fd_reference is not None else []),
             f"pool = {json.dumps(['label'] if s.conditional else [])}", "", "[fixed]",
             f"sampler = {json.dumps(s.sampler)}", f"steps = {int(s.steps)}", f"batch = {b}",
             f"guidance = {json.dumps(s.guidance if guided else 'none')}"]
    from ..core.samplers import SAMPLERS

    if "eta" in SAMPLERS[s.sampler].options:
        lines.append(f"eta = {float(s.eta)!r}")
    if guided:
        lines.append(f"scale = {float(s.scale)!r}")
    lines += ["", "[axes]", f"seeds = {{start = {int(seed)}, count = {chunks}}}"]
    if s.conditional:
        lines.append(f"label = {{start = 0, count = {k}}}")
    return "\n".join(lines) + "\n"


def setting_work(s: Setting, n: int) -> float:
    """A setting's relative cost: images × steps × network evaluations per step (``EVALS_PER_STEP``)."""
    return n * s.steps * EVALS_PER_STEP[s.guidance if s.conditional else "none"]


class OverallProgress:
    """One line after each unit of work (a digits model's setting, a text model's chunk): units done and
    the time left for all of them, from the time the work computed so far took (units continued from an
    earlier run count only what was computed now). ``clock`` is injectable, so the estimate can be tested
    without waiting."""

    def __init__(self, works: list[float], stream=None, clock=time.perf_counter, unit: str = "settings"):
        self.works, self.stream, self.clock, self.unit = works, stream, clock, unit
        self.t0 = clock()
        self.computed = 0.0  # work computed by this run
        self.done = 0  # units finished

    def unit_done(self, computed_share: float) -> str:
        """Unit ``self.done`` finished, ``computed_share`` of it computed now (the rest found on disk)."""
        from .progress import duration

        self.computed += self.works[self.done] * computed_share
        self.done += 1
        elapsed = self.clock() - self.t0
        left_work = sum(self.works[self.done:])
        if not left_work:
            eta = "done"
        elif self.computed > 0 and elapsed > 0:
            eta = f"about {duration(elapsed / self.computed * left_work)} left"
        else:
            eta = "time left not known yet"
        line = f"studio eval: {self.done}/{len(self.works)} {self.unit}, {duration(elapsed)} so far, {eta}"
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        return line


def default_out(model_dir: Path, n: int, seed: int, fd_reference: Optional[int]) -> Path:
    """Where ``studio eval`` keeps its work without --out (a digits model's sweeps, a text model's chunks):
    a folder of the user's cache named by what decides the results (the model's weights, n, seed, the
    Fréchet reference), so running the same command again continues an interrupted evaluation and a
    retrained model starts afresh."""
    import hashlib

    from ..core.file_hashes import user_cache_dir
    from ..session.provenance import weights_fingerprint

    ident = json.dumps({"model": str(Path(model_dir).resolve()), "weights": weights_fingerprint(str(model_dir)),
                        "n": n, "seed": seed, "fd_reference": fd_reference}, sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return user_cache_dir() / "eval" / f"{Path(model_dir).name}-n{n}-seed{seed}-{digest}"


def evaluate(settings: list[Setting], n: int, seed: int = 0, model_dir: Path = DEFAULT_MODEL_DIR,
             fd_reference: Optional[int] = None, progress_stream=None, workers: int | None = None,
             out: Path | None = None, threads: int | None = None) -> dict:
    """Each setting is a sweep with a fixed spec (``setting_spec``; studio/sweep) run into
    ``out/<setting>`` (kept, so an interrupted evaluation continues) or a temporary folder; its
    summary row is the result. ``progress_stream``: where the sweeps' progress lines and the overall
    estimate (``OverallProgress``) go (None: nowhere)."""
    import os
    import tempfile

    from .driver import run_sweep
    from .spec import parse_spec
    from .summary import cell_results, load_sweep, summarise

    results = []
    overall = OverallProgress([setting_work(s, n) for s in settings], progress_stream)
    with tempfile.TemporaryDirectory(prefix="studio-eval-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for s in settings:
            t0 = time.perf_counter()
            spec = parse_spec(setting_spec(s, n, seed, model_dir, fd_reference), f"{s.name} (studio eval)")
            folder = root / "".join(c if c.isalnum() or c in "=._-" else "_" for c in s.name)
            with open(os.devnull, "w") as devnull:
                stats = run_sweep(spec, folder, workers=workers, threads=threads, stream=progress_stream or devnull,
                                  report=False, progress_every_s=5.0)
            overall.unit_done((stats.total - stats.already) / max(stats.total, 1))
            doc = load_sweep(folder)
            (row,) = summarise(folder, doc, cell_results(folder, doc))
            out_row = {"setting": s.name, "sampler": s.sampler, "steps": s.steps, "eta": s.eta,
                       "guidance": s.guidance if s.conditional else "none", "scale": s.scale if s.conditional else None,
                       "n": int(row["images"]), "seconds": round(time.perf_counter() - t0, 1),
                       "frechet": row["frechet"], "fd_reference": spec.fd_reference}
            if s.conditional:
                out_row["accuracy"] = row["accuracy"]
            else:
                out_row["class_fractions"] = [round(float(h), 4) for h in row["class_fractions"]]
            out_row["diversity"] = row.get("diversity", float("nan"))  # nan: no class has two samples
            results.append(out_row)
    return {"model": str(model_dir), "n_per_setting": n, "seed": seed, "results": results}


CFG_SCALES = (1, 2, 3, 5, 8)
DDIM_ETAS = (0, 1)
DDIM_STEPS = (10, 20, 50, 100)


def standard_settings(classifier_scale: float = 1.0, cfg_scales=CFG_SCALES, ddim_etas=DDIM_ETAS,
                      ddim_steps=DDIM_STEPS) -> dict[str, list[Setting]]:
    """The issue's evaluation grid; the tuples pick a subset of cells (to split a long run)."""
    return {
        "cfg": [Setting(f"cfg w={w:g}", scale=float(w)) for w in cfg_scales],
        "classifier": [Setting(f"classifier s={classifier_scale:g}", guidance="classifier", scale=classifier_scale)],
        "uncond": [Setting("unconditional", guidance="none", conditional=False)],
        "ddim_table": [Setting(f"ddim eta={eta:g} S={S}", steps=S, eta=float(eta), guidance="none", conditional=False)
                       for eta in ddim_etas for S in ddim_steps],
    }


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a built-in model: guided accuracy, diversity, Fréchet distance; "
                                    "for digits-text, whether digit and colours follow the prompt")
    p.add_argument("--model", default="default",
                   help="default (the shipped digits model), digits-text, a folder with evaluator/ "
                        "or a digits-text pipeline folder (model_index.json)")
    p.add_argument("--n", type=int, default=500, help="samples per setting (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first batch of each setting (default 0)")
    p.add_argument("--only", nargs="+", choices=sorted(set(DIGITS_GROUPS) | set(text_eval.GROUPS)),
                   help=f"run only these groups of settings (digits models: {' '.join(DIGITS_GROUPS)}; "
                        f"digits-text: {' '.join(text_eval.GROUPS)})")
    p.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance scale (default: the model card's recommendation)")
    p.add_argument("--cfg-scales", type=positive(float), nargs="+", default=None, metavar="W",
                   help="guidance scales of the cfg group (default 1 2 3 5 8; digits-text: 1 3 5)")
    p.add_argument("--ddim-steps", type=positive(int), nargs="+", default=list(DDIM_STEPS), metavar="S",
                   help="step counts of the ddim_table group (default 10 20 50 100)")
    p.add_argument("--ddim-etas", type=float, nargs="+", default=list(DDIM_ETAS), metavar="ETA",
                   help="η values of the ddim_table group (default 0 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--threads", type=positive(int), default=None,
                   help="torch CPU threads of each worker (default: the cores shared out)")
    p.add_argument("--workers", type=positive(int), default=None,
                   help="worker processes (default: one per core; each setting is a sweep, studio sweep)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="keep the work in DIR (each setting's sweep in DIR/<setting>; a text model's image chunks "
                        "in DIR/cells), so a re-run continues it; default: a folder of the user cache "
                        "($STUDIO_CACHE_DIR/eval/…) named by the model's weights, --n and --seed")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if args.model == TEXT_MODEL_NAME or (Path(args.model).expanduser() / "model_index.json").is_file():
        return cmd_eval_text(args)
    model_dir = DEFAULT_MODEL_DIR if args.model == "default" else Path(args.model).expanduser()
    if set(args.only or ()) - set(DIGITS_GROUPS):
        raise ValueError(f"--only {' '.join(args.only)}: a digits model has the groups {' '.join(DIGITS_GROUPS)}")
    if not (model_dir / "evaluator" / "config.json").exists():
        raise ValueError(f"{model_dir}: no evaluator/ folder; `studio eval` needs the clean-image evaluator beside the model")
    if args.n < 10:
        raise ValueError("--n must be at least 10")
    scale = args.classifier_scale
    if scale is None:
        scale = default_scale("classifier", read_recommended_scales(model_dir))
    if any(not 0 <= e <= 1 for e in args.ddim_etas):
        raise ValueError("--ddim-etas must be between 0 and 1")
    groups = standard_settings(scale, args.cfg_scales or CFG_SCALES, args.ddim_etas, args.ddim_steps)
    chosen = args.only or list(groups)
    settings = [s for g in chosen for s in groups[g]]
    out = args.out if args.out is not None else default_out(model_dir, args.n, args.seed, None)
    print(f"studio eval: {len(settings)} settings of {args.n} samples each, kept in {out} (run the same command "
          "again to continue an interrupted evaluation)", file=sys.stderr)
    res = evaluate(settings, args.n, args.seed, model_dir, progress_stream=sys.stderr, workers=args.workers,
                   out=out, threads=args.threads)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for r in res["results"]:
            extra = f"acc {r['accuracy']:.3f}" if "accuracy" in r else f"classes {r['class_fractions']}"
            print(f"{r['setting']:<22} {extra}  diversity {r['diversity']:.3f}  FD {r['frechet']:.2f}  ({r['seconds']}s)")
    return 0


class ChunkCells:
    """A text evaluation's chunks (``text_eval.Chunk``) kept in ``out`` as cells of a sweep's cell store
    (cells.py): each written atomically as it finishes, keyed by the chunk and the model's weights, and
    checked when found, so a damaged chunk is drawn again, as a resumed sweep computes a damaged cell again."""

    def __init__(self, out: Path, model_dir: Path):
        import hashlib

        from ..session.provenance import weights_fingerprint
        from .cells import remove_stale_staging

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.out)
        self.identity = {"model": str(Path(model_dir).resolve()), "weights": weights_fingerprint(str(model_dir))}
        self._hash = hashlib.sha256

    def key(self, chunk: text_eval.Chunk) -> str:
        from .cells import KEY_CHARS

        text = json.dumps({**self.identity, **chunk.to_dict()}, sort_keys=True)
        return self._hash(text.encode()).hexdigest()[:KEY_CHARS]

    def load(self, chunk: text_eval.Chunk) -> Optional[np.ndarray]:
        """The chunk's images, or None when they are not here (or damaged: then removed, to be drawn again)."""
        from .cells import BrokenCell, check_cell, is_done, read_arrays, remove_cell

        key = self.key(chunk)
        if not is_done(self.out, key):
            return None
        try:
            check_cell(self.out, key)
            return read_arrays(self.out, key)["images"]
        except (BrokenCell, KeyError):
            remove_cell(self.out, key)
            return None

    def save(self, chunk: text_eval.Chunk, images: np.ndarray, seconds: float) -> None:
        from .cells import npz_bytes, write_cell

        key = self.key(chunk)
        result = {"key": key, "values": {"setting": chunk.setting, "chunk": chunk.index}, "status": "ok",
                  "recipe": chunk.to_dict(), "seconds": seconds,
                  "metrics": {"seconds_per_image": seconds / len(images), "nfe": chunk.nfe}}
        write_cell(self.out, key, result, json.dumps({**self.identity, **chunk.to_dict()}, indent=1),
                   npz=npz_bytes({"images": images}))


def evaluate_text(folder: Path, n: int, groups, cfg_scales, seed: int = 0, out: Optional[Path] = None,
                  progress_stream=None, log=None, steps: int = 50, batch: int = 100, on_chunk=None) -> dict:
    """:func:`studio.evaluation.text_eval.evaluate` with its chunks kept in ``out`` (:class:`ChunkCells`; None:
    a temporary folder), so an interrupted evaluation continues, and the overall estimate
    (:class:`OverallProgress`, per chunk) on ``progress_stream``. ``on_chunk(chunk, computed)`` after each."""
    import tempfile

    chunks = [c for s in text_eval.planned_settings(n, groups, cfg_scales, seed=seed, steps=steps, batch=batch)
              for c in s.chunks]
    overall = OverallProgress([c.work for c in chunks], progress_stream, unit="chunks")

    def chunk_done(chunk, computed: bool) -> None:
        overall.unit_done(1.0 if computed else 0.0)
        if on_chunk is not None:
            on_chunk(chunk, computed)

    with tempfile.TemporaryDirectory(prefix="studio-eval-") as tmp:
        store = ChunkCells(Path(out) if out is not None else Path(tmp), folder)
        return text_eval.evaluate(folder, n, groups, cfg_scales, seed=seed, steps=steps, log=log, store=store,
                                  on_chunk=chunk_done, batch=batch)


def cmd_eval_text(args) -> int:
    """``studio eval --model digits-text``: :func:`studio.evaluation.text_eval.evaluate` (prompt
    adherence read back from pixels), with the same --n, --seed, --cfg-scales, --json, --threads, --out
    (default: a folder of the user cache, as for the digits models) and overall estimate."""
    folder = TEXT_MODEL_DIR if args.model == TEXT_MODEL_NAME else Path(args.model).expanduser()
    if args.n < 10:
        raise ValueError("--n must be at least 10")
    groups = args.only or list(text_eval.DEFAULT_GROUPS)
    if set(groups) - set(text_eval.GROUPS):
        raise ValueError(f"--only: a text model has the groups {' '.join(text_eval.GROUPS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else default_out(folder, args.n, args.seed, None)
    print(f"studio eval: {', '.join(groups)} on {folder.name}, {args.n} samples per setting, kept in {out} (run the "
          "same command again to continue an interrupted evaluation)", file=sys.stderr)
    res = evaluate_text(folder, args.n, groups, args.cfg_scales or text_eval.DEFAULT_CFG_SCALES, args.seed, out,
                        progress_stream=sys.stderr, log=None if args.json else sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(text_eval.report_data([res]))
    return 0
