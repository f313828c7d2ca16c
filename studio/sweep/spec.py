"""A sweep's specification: a TOML file naming the model, fixed settings and the axes to cross.

::

    title = "DDIM steps x eta on the digits model"    # optional
    model = "default"            # default, gmm, digits-text, a model folder or a checkpoint file (relative to this file)
    metrics = ["accuracy", "frechet", "seconds_per_image"]   # optional; default: every one the model has
    pool = ["label"]             # optional: axes summarised together (seeds always are)
    # reference_steps, fd_reference: see SPEC_KEYS (`studio sweep --help` lists every key)

    [fixed]                      # any recipe setting, the same in every cell
    batch = 8
    guidance = "cfg"

    [axes]                       # any recipe setting; every combination is one cell
    sampler = ["ddim", "dpmpp_2m"]
    steps = [10, 20, 50]
    scale = [1.0, 3.0, 5.0]
    label = {start = 0, count = 10}
    seeds = {start = 0, count = 8}      # or a list: seeds = [0, 1, 7]

A cell is an ordinary :class:`~studio.session.recipe.Recipe` (the fixed settings, then one value of
every axis), validated by ``Recipe.validate`` before anything runs, so any cell can be reproduced
alone with ``studio sample --recipe``. Ranges: ``{start, count[, step]}`` for integer settings,
``{start, stop, count}`` (evenly spaced, both ends included) for numbers.

Settings that name files (``FILE_SETTINGS``, each LoRA's file) are read relative to the spec's folder, as
``model`` is, in [fixed] and in [axes] alike. An image to start from (``init_image``, image-to-image; it and
``strength`` may be axes) is recorded in each cell's recipe with its SHA-256, so a cell is of that image:
an edited image makes new cells, and a worker refuses an image changed since the spec was read.

Every problem is a :class:`SpecError` of one line naming the spec's line and the problem, raised
before any cell runs. A sweep holds at most ``MAX_CELLS`` cells, counted from the axes' lengths
before any value is expanded; the spec file is read bounded (file_reading.py). Without ``scale`` in the spec, guided cells take the scale the model folder
recommends (its ``recommended.json``), else the studio's fallback (``core.guidance.default_scale``), like
``studio sample`` and the window.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..core.file_reading import CONFIG_LIMIT, read_text
from ..core.guidance import FALLBACK_SCALES, default_scale
from ..core.loading import BUILTINS, ModelLoadError, read_recommended_scales
from ..core.options import Option, OptionError
from ..evaluation.metrics import available_metrics
from ..checkpoints.lora_files import parse_lora
from ..session.init_image import image_sha256_or_error
from ..session.provenance import model_folder
from ..session.recipe import Recipe, RecipeError
from .cells import cell_key
from .toml_lines import key_lines, line_of

# the spec's top-level keys, each declared once: default, allowed values, help (`studio sweep --help`)
SPEC_KEYS: dict[str, Option] = {o.name: o for o in (
    Option("title", "", "str", "the report's title", allow_empty=True),
    Option("model", "default", "str", "default, gmm, digits-text, a model folder or a single-file checkpoint "
                                      "(relative to the spec)"),
    Option("metrics", None, "strs", "the metrics to compute; without it, every one the model has"),
    Option("pool", (), "strs", "axes summarised together, like the seeds (which always are)"),
    Option("reference_steps", 500, "int", "steps of the fine DPM-Solver++(2M) solve that ref_distance measures "
           "the distance to", low=1, high=100_000),
    Option("fd_reference", 2000, "int", "held-out images whose evaluator features the Fréchet distance compares "
           "the samples' with", low=1, high=1_000_000),
    Option("fixed", {}, "object", "recipe settings, the same in every cell ([fixed])"),
    Option("axes", {}, "object", "recipe settings to cross: every combination is one cell ([axes])"),
)}
# one model load per worker: these are the sweep's, not a cell's
NOT_AXES = {"model": "one sweep opens one model; run one sweep per model",
            "device": "set it in [fixed]", "dtype": "set it in [fixed]",
            "classifier": "set it in [fixed]", "prediction_type": "set it in [fixed]"}
NOT_FIELDS = {"branch": "a sweep's cells are fresh runs", "model": "set it at the top of the spec (model = …)"}
SEED_NAMES = ("seeds", "seed")
FILE_SETTINGS = ("init_noise", "init_image", "vae", "classifier")  # read relative to the spec's folder
MAX_CELLS = 100_000  # cells in one sweep: counted from the axes before any is expanded
SPEC_LIMIT = CONFIG_LIMIT  # bytes of a spec file


class SpecError(ValueError):
    """A spec that cannot run; one line naming the spec's line and the problem."""


@dataclass(frozen=True)
class Axis:
    name: str  # the recipe field ("seed" for the seeds)
    values: tuple
    line: int
    spelled: str = ""  # as the spec writes it ("seeds")


@dataclass(frozen=True)
class Cell:
    key: str
    recipe: Recipe  # validated and resolved (the sampler's defaults spelled out)
    values: dict  # axis name -> this cell's value (as JSON: pairs are lists)


@dataclass
class SweepSpec:
    path: str
    text: str
    model: str
    fixed: dict
    axes: list[Axis]
    metrics: tuple[str, ...]
    pool: tuple[str, ...]  # axis names summarised together (always "seed")
    reference_steps: int
    fd_reference: int
    title: str
    cells: list[Cell] = field(default_factory=list)
    merged: int = 0  # axis combinations that are the same recipe as an earlier one (e.g. eta for euler)

    @property
    def setting_axes(self) -> list[str]:
        """The axes that tell settings apart (everything not pooled)."""
        return [a.name for a in self.axes if a.name not in self.pool]

    def setting_of(self, values: dict) -> tuple:
        """The setting a cell belongs to: its values on the setting axes."""
        return tuple(_hashable(values.get(a)) for a in self.setting_axes)

    def to_dict(self) -> dict:
        return {"title": self.title, "model": self.model, "fixed": _jsonable(self.fixed),
                "axes": {a.name: [_jsonable(v) for v in a.values] for a in self.axes},
                "metrics": list(self.metrics), "pool": list(self.pool), "reference_steps": self.reference_steps,
                "fd_reference": self.fd_reference}


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


class _Where:
    """Builds the one-line errors: ``spec.toml line 7: axes.steps: …``."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.lines = key_lines(text)

    def line(self, *path: str) -> int:
        return line_of(self.lines, *path)

    def error(self, path: tuple[str, ...], problem: str) -> SpecError:
        label = ".".join(path)
        return SpecError(f"{self.name} line {self.line(*path)}: {label + ': ' if label else ''}{problem}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check ``path``; every cell is built and validated here."""
    p = Path(path).expanduser()
    try:  # a regular file, bounded: a FIFO or /dev/zero is one line, not a hang or "out of memory"
        text = read_text(p, SPEC_LIMIT, SpecError)
    except SpecError as e:
        raise SpecError(f"cannot read the spec: {e}") from None
    return parse_spec(text, str(path), p.resolve().parent)


def parse_spec(text: str, name: str = "spec.toml", base: Optional[Path] = None) -> SweepSpec:
    base = base or Path.cwd()
    where = _Where(name, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = m.group(1) if m else "1"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "syntax error"
        if m is None and "end of document" in msg:
            line = str(max(text.count("\n"), 1))
        raise SpecError(f"{name} line {line}: not valid TOML ({msg[0].lower() + msg[1:]})") from None

    for key in doc:
        if key not in SPEC_KEYS:
            schema = Recipe.schema()
            hint = ("; recipe settings go in [fixed] or [axes]" if key in schema or key in SEED_NAMES
                    else f"{_suggest(key, SPEC_KEYS)}; the spec takes {', '.join(SPEC_KEYS)}")
            raise where.error((key,), f"unknown key{hint}")

    title = _value(doc, "title", where)
    model = _model(doc, base, where)
    fixed = _fixed(doc.get("fixed", SPEC_KEYS["fixed"].default), base, where)
    axes = _axes(doc.get("axes", SPEC_KEYS["axes"].default), fixed, base, where)
    metrics = _metrics(doc, model, where)
    pool = _pool(doc, axes, where)
    reference_steps = _value(doc, "reference_steps", where)
    fd_reference = _value(doc, "fd_reference", where)
    spec = SweepSpec(name, text, model, fixed, axes, metrics, pool, reference_steps, fd_reference, title)
    spec.cells, spec.merged = _cells(spec, where)
    return spec


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- top-level values ---------------------------------------------------------------------------
def _value(doc: dict, key: str, where: _Where) -> Any:
    """The spec's value of a top-level key checked by its declaration, or the declared default."""
    opt = SPEC_KEYS[key]
    try:
        return opt.check(doc.get(key, opt.default))
    except OptionError as e:
        raise where.error((key,), str(e)) from None


def _model(doc: dict, base: Path, where: _Where) -> str:
    if doc.get("model") == "":
        raise where.error(("model",), "is empty; name a model (default, gmm, digits-text or a folder)")
    model = _value(doc, "model", where)
    if model in BUILTINS:
        return model
    folder = (base / Path(model).expanduser()).resolve()
    if not (folder.is_dir() or folder.is_file()):  # a model folder, or a single-file checkpoint
        raise where.error(("model",), f"{model!r} is not a built-in model ({', '.join(BUILTINS)}) and "
                                      f"{folder} is not a folder or a checkpoint file")
    return str(folder)


def _fixed(table: Any, base: Path, where: _Where) -> dict:
    if not isinstance(table, dict):
        raise where.error(("fixed",), "must be a table of recipe settings ([fixed])")
    schema = Recipe.schema()
    out = {}
    for name, value in table.items():
        if name in SEED_NAMES[:1]:
            raise where.error(("fixed", name), "seeds are an axis; use seed = N for one seed")
        if name in NOT_FIELDS:
            raise where.error(("fixed", name), NOT_FIELDS[name])
        if name not in schema:
            raise where.error(("fixed", name), f"unknown recipe setting {name!r}{_suggest(name, schema)}; "
                                               "`studio sample --help` lists them")
        try:
            out[name] = schema[name].check(relative_to_spec(name, value, base))
        except OptionError as e:
            raise where.error(("fixed", name), str(e)) from None
    return out


def relative_to_spec(name: str, value: Any, base: Path) -> Any:
    """A setting that names a file (``FILE_SETTINGS``, and each LoRA's file) read relative to the spec's
    folder, as ``model`` is; anything else as it is (a malformed value is left for its check to name)."""
    def resolved(path: str) -> str:
        return str((base / Path(path).expanduser()).resolve())

    if name in FILE_SETTINGS and isinstance(value, str) and value:
        return resolved(value)
    if name == "loras" and isinstance(value, list):
        out = []
        for entry in value:
            try:
                choice = parse_lora(entry)
            except OptionError:
                out.append(entry)
                continue
            out.append(str(dataclasses.replace(choice, path=resolved(choice.path))))
        return out
    return value


def _expand(name: str, raw: Any, kind: str, where: _Where) -> list:
    path = ("axes", name)
    if isinstance(raw, dict):
        keys = set(raw)
        if kind == "int" and keys <= {"start", "count", "step"} and {"start", "count"} <= keys:
            start, count, step = raw["start"], raw["count"], raw.get("step", 1)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count, step)):
                raise where.error(path, "start, count and step must be integers")
            if count < 0 or count > MAX_CELLS or step == 0:
                raise where.error(path, f"count must be from 0 to {MAX_CELLS} and step non-zero")
            return [start + i * step for i in range(count)]
        if kind == "float" and keys == {"start", "stop", "count"}:
            start, stop, count = raw["start"], raw["stop"], raw["count"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, stop)) or \
                    isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_CELLS:
                raise where.error(path, "start and stop must be numbers and count a non-negative integer")
            if count == 1:
                return [float(start)]
            return [float(start) + (float(stop) - float(start)) * i / (count - 1) for i in range(count)]
        form = "{start, count[, step]}" if kind == "int" else "{start, stop, count}" if kind == "float" else None
        raise where.error(path, f"a range must be {form}" if form else "must be a list of values")
    if not isinstance(raw, list):
        raise where.error(path, f"must be a list of values, e.g. {name} = [{raw!r}, …] "
                                "(a single value belongs in [fixed])")
    if kind == "pair" and raw and not all(isinstance(v, list) for v in raw):
        raise where.error(path, "must be a list of [start, end] pairs, e.g. [[0, 1], [0.2, 0.8]]")
    return raw


def _axis_length(raw: Any) -> int:
    """How many values an axis lists or a range counts, without expanding it (1 when malformed: the
    expansion then says what is wrong)."""
    if isinstance(raw, list):
        return max(len(raw), 1)
    if isinstance(raw, dict):
        count = raw.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return count
    return 1


def _count_cells(table: dict, where: _Where) -> None:
    """Refuse a grid larger than MAX_CELLS from the axes' lengths alone, before a value is expanded."""
    lengths = {name: _axis_length(raw) for name, raw in table.items()}
    total = math.prod(lengths.values())
    if total > MAX_CELLS:
        sizes = " × ".join(f"{n} {name}" for name, n in lengths.items() if n > 1)
        raise where.error(("axes",), f"{sizes} make {total:,} cells, more than a sweep takes ({MAX_CELLS:,}); "
                                     "split it into smaller sweeps")


def _axes(table: Any, fixed: dict, base: Path, where: _Where) -> list[Axis]:
    if not isinstance(table, dict):
        raise where.error(("axes",), "must be a table of recipe settings to cross ([axes])")
    schema = Recipe.schema()
    _count_cells(table, where)
    axes: list[Axis] = []
    seen_seed = None
    for spelled, raw in table.items():
        name = "seed" if spelled in SEED_NAMES else spelled
        path = ("axes", spelled)
        if name == "seed":
            if seen_seed:
                raise where.error(path, f"the seeds are given twice ({seen_seed} and {spelled}); keep one")
            seen_seed = spelled
        if spelled in NOT_AXES:
            raise where.error(path, f"cannot be an axis: {NOT_AXES[spelled]}")
        if name in NOT_FIELDS:
            raise where.error(path, NOT_FIELDS[name])
        if name not in schema:
            raise where.error(path, f"unknown recipe setting {spelled!r}{_suggest(spelled, [*schema, 'seeds'])}; "
                                    "`studio sample --help` lists them")
        if name in fixed:
            raise where.error(path, f"{name} is both fixed and an axis; keep one")
        opt = schema[name]
        values = _expand(spelled, raw, opt.kind, where)
        if not values:
            raise where.error(path, "is empty; give at least one value or remove the axis")
        checked, seen = [], set()
        for v in values:
            try:
                c = opt.check(relative_to_spec(name, v, base))
            except OptionError as e:
                raise where.error(path, str(e)) from None
            k = repr(_jsonable(c))
            if k in seen:
                raise where.error(path, f"lists {v!r} twice")
            seen.add(k)
            checked.append(c)
        axes.append(Axis(name, tuple(checked), where.line(*path), spelled))
    return axes


def _metrics(doc: dict, model: str, where: _Where) -> tuple[str, ...]:
    available = available_metrics(model)
    if "metrics" not in doc:
        return available
    raw = _value(doc, "metrics", where)
    for m in raw:
        if m not in available:
            raise where.error(("metrics",), f"unknown metric {m!r} for model {Path(model).name!r}; "
                                            f"choose from {', '.join(available)}")
    return tuple(dict.fromkeys(raw))


def _pool(doc: dict, axes: list[Axis], where: _Where) -> tuple[str, ...]:
    raw = _value(doc, "pool", where)
    names = {a.name for a in axes}
    out = ["seed"]
    for p in raw:
        n = "seed" if p in SEED_NAMES else p
        if n not in names and n != "seed":
            raise where.error(("pool",), f"{p!r} is not an axis of this spec; pool lists axes to summarise "
                                         f"together ({', '.join(sorted(names)) or 'none'})")
        if n not in out:
            out.append(n)
    return tuple(out)


# -- cells --------------------------------------------------------------------------------------
def _culprit(message: str, names: list[str]) -> Optional[str]:
    """The setting a refusal names first (a word of the message), to point at its line."""
    best = None
    for n in names:
        for spelled in {n, n.replace("_", " ")}:
            m = re.search(rf"(?<![A-Za-z_]){re.escape(spelled)}(?![A-Za-z_])", message, re.IGNORECASE)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), n)
    return best[1] if best else None


def refusal_path(spec: SweepSpec, message: str) -> tuple[str, ...]:
    """Where a refusal of a cell points: the axis or fixed setting it names, else the [axes] table."""
    spelled = {a.name: a.spelled or a.name for a in spec.axes}
    n = _culprit(message, list(spelled) + list(spec.fixed))
    if n in spelled:
        return ("axes", spelled[n])
    if n in spec.fixed:
        return ("fixed", n)
    return ("axes",) if spec.axes else ("fixed",)


def describe(values: dict) -> str:
    """``sampler=ddim, steps=10`` for messages."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "the only cell"


def _cells(spec: SweepSpec, where: _Where) -> tuple[list[Cell], int]:
    recommended: Optional[dict[str, float]] = None  # None: the spec sets the scale
    if "scale" not in spec.fixed and all(a.name != "scale" for a in spec.axes):
        recommended = {}
        folder = model_folder(spec.model)
        if folder is not None:
            try:
                recommended = read_recommended_scales(folder)
            except ModelLoadError:
                recommended = {}
    base = Recipe(model=spec.model, **spec.fixed)
    cells: list[Cell] = []
    seen: set[str] = set()
    digests: dict[str, str] = {}  # SHA-256 of each image to start from
    merged = 0
    names = [a.name for a in spec.axes]
    for combo in itertools.product(*(a.values for a in spec.axes)):
        changes = dict(zip(names, combo))
        recipe = base.replace(**changes)
        if recommended is not None and recipe.guidance_mode() in FALLBACK_SCALES:  # as `studio sample`, the window
            recipe = recipe.replace(scale=default_scale(recipe.guidance_mode(), recommended))
        try:
            recipe = recipe.validate().resolved()
            if recipe.init_image is not None and recipe.init_image_sha256 is None:  # the cell is of this image
                if recipe.init_image not in digests:
                    digests[recipe.init_image] = image_sha256_or_error(recipe.init_image)
                recipe = recipe.replace(init_image_sha256=digests[recipe.init_image])
        except (RecipeError, OptionError) as e:
            path = refusal_path(spec, str(e))
            raise where.error(path, f"the cell {describe(changes)} is refused: {e}") from None
        key = cell_key(recipe)
        if key in seen:
            merged += 1
            continue
        seen.add(key)
        values = {n: _jsonable(getattr(recipe, n)) for n in names}
        cells.append(Cell(key, recipe, values))
    return cells, merged
