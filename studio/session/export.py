"""Exporting what a run showed: frame sequences, animations, contact sheets, final images, comparisons.

Qt-free. Every export is atomic (written to a temporary file or folder in the
destination folder, then moved into place with ``os.replace``), refuses to
overwrite unless ``overwrite=True``, writes the recipe beside the export
(``recipe.json`` inside a frame folder, ``<name>.recipe.json`` beside a file),
and embeds the recipe JSON in every PNG as a ``recipe`` text chunk. Failures
raise a one-line ``ExportError`` and leave nothing behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import TargetExists, precheck, write_files, write_folder  # noqa: F401  (TargetExists: API)
from .compose import ExportError, captioned, compare_frame, frame_grid, hstack, positions, step_frames, vstack
from .compose import at_fraction, step_caption  # noqa: F401  (part of this module's API: ex.at_fraction, …)
from .output import add_png_text
from .provenance import recipe_json
from .recipe import Recipe, RecipeError

ANIMATION_SUFFIXES = {".gif": "GIF", ".png": "PNG", ".apng": "PNG", ".mp4": "MP4"}


def mp4_available() -> bool:
    """MP4 needs imageio's ffmpeg plugin (``pip install imageio-ffmpeg``)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


# -- reading recipes back -------------------------------------------------------
def read_recipe_document(path: str | os.PathLike) -> tuple[Recipe, dict]:
    """A recipe, and the JSON object it was read from (its ``versions`` record the weights), from a
    ``.json`` file or the ``recipe`` text chunk of an exported PNG.

    Both are read through the bounded, regular-file-only reader (core/file_reading.py); anything
    wrong with the file or its contents is one ``RecipeError`` line naming the file."""
    from ..core.file_reading import RECIPE_LIMIT, open_regular, parse_json, read_text

    p = Path(path)
    if p.suffix.lower() in (".png", ".apng"):
        with open_regular(p, RecipeError) as f:
            try:
                with Image.open(f) as im:
                    text = getattr(im, "text", {}).get("recipe") or im.info.get("recipe")
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken images
                why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
                raise RecipeError(f"{p}: not a readable PNG image ({why})") from None
        if not text:
            raise RecipeError(f"{p}: this PNG carries no recipe (it was not exported by the studio)")
    else:
        text = read_text(p, RECIPE_LIMIT, RecipeError)
    document = parse_json(text, str(p), RecipeError)
    try:
        return Recipe.from_dict(document), document
    except RecipeError as e:
        raise RecipeError(f"{p}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a field of the wrong type must not become a traceback
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise RecipeError(f"{p}: not a valid recipe ({why})") from None


def read_webui_parameters(path: str | os.PathLike, current: Optional[Recipe] = None) -> Optional[dict]:
    """The recipe settings in a PNG's web-UI ``parameters`` chunk (an image made by AUTOMATIC1111, Forge,
    or the studio itself), as Recipe field values: prompt, negative_prompt, steps, sampler, karras, CFG
    scale, seed, width, height, the sampler's options (each other sampler option unset), guidance_rescale,
    and under "warnings" one line for each thing read approximately (a sampler or schedule the studio does
    not have: ``parse_parameters``); None when the PNG has no such chunk. The model is not among them: the
    web UIs name theirs by a hash the studio cannot resolve.

    With ``current`` (the recipe the settings replace): "loras", the prompt's ``<lora:NAME:W>`` tags whose
    files are found beside ``current.model`` with matching hashes (studio.checkpoints.lora_tags; a warning
    for each that is not), and "strength" (the text's "Denoising strength") when ``current`` starts from
    an image (else a warning: the web UIs do not record the image a run started from)."""
    from ..core.file_reading import open_regular
    from ..core.samplers import OPTION_SCHEMA
    from .parameters import parse_parameters

    p = Path(path)
    with open_regular(p, RecipeError) as f:
        try:
            with Image.open(f) as im:
                text = getattr(im, "text", {}).get("parameters")
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken images
            why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise RecipeError(f"{p}: not a readable PNG image ({why})") from None
    if not text:
        return None
    try:
        parsed = parse_parameters(text)
    except ValueError as e:
        raise RecipeError(f"{p}: {e}") from None
    out = {k: parsed[k] for k in ("prompt", "negative_prompt", "steps", "seed", "width", "height", "karras",
                                  "guidance_rescale") if k in parsed}
    if "sampler" in parsed:  # always one the studio has: parse_parameters falls back, with a warning
        out["sampler"] = parsed["sampler"]
        out.update({name: parsed.get(name) for name in OPTION_SCHEMA})
    if "scale" in parsed:
        out.update(guidance="cfg", scale=parsed["scale"])
    if current is not None:
        _webui_model_files(parsed, current, out)
    out["warnings"] = [f"{p}: {w}" for w in parsed["warnings"]]
    return out


def _webui_model_files(parsed: dict, current: Recipe, out: dict) -> None:
    """The LoRAs and denoising strength of a web UI's parameters, on the recipe ``current``."""
    from ..checkpoints.lora_tags import resolve_lora_tags

    out["loras"] = resolve_lora_tags(parsed["lora_tags"], current.model, parsed["warnings"])
    if "strength" in parsed:
        if current.init_image is not None:
            out.update(strength=parsed["strength"], start_step=None)
        else:
            parsed["warnings"].append(f"the image was made image-to-image (denoising strength {parsed['strength']:g}) "
                                      "from an image its parameters do not name; open that image to run it so")


def read_recipe(path: str | os.PathLike) -> Recipe:
    """A recipe from a ``.json`` file or from the ``recipe`` text chunk of an exported PNG."""
    return read_recipe_document(path)[0]


# -- atomic writing: atomic.py, shared with the CLI's run folders ------------------
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".recipe.json")


def _recipe_json(recipe) -> str:
    return recipe_json(recipe) if recipe is not None else "{}"


def _write_files(writers: dict[Path, Callable[[str], None]], overwrite: bool) -> None:
    """Write each target through a staging file beside it, then move them all into place."""
    write_files(writers, overwrite)


def _png_info(recipe, text: Optional[str] = None) -> PngInfo:
    info = PngInfo()
    if recipe is not None:
        add_png_text(info, "recipe", text if text is not None else recipe_json(recipe))
    return info


def _save_png(img: np.ndarray, path: str, recipe, text: Optional[str] = None) -> None:
    Image.fromarray(img).save(path, format="PNG", pnginfo=_png_info(recipe, text))


def _write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return write


# -- exports ----------------------------------------------------------------------
def export_frames(traj, folder: str | os.PathLike, which: str = "both", scale: int = 1,
                  overwrite: bool = False) -> Path:
    """A folder of numbered PNG frames and recipe.json. Numbers are positions in the chain, as in the
    CLI's run folders: ``xt_0000.png`` is the initial noise, ``xt_000k.png`` the state after step k,
    ``x0_000k.png`` the x̂₀ predicted during step k (k ≥ 1)."""
    kinds = ("xt", "x0") if which == "both" else (which,)
    if any(k not in ("xt", "x0") for k in kinds):
        raise ExportError(f"unknown frame kind {which!r}; choose xt, x0 or both")
    recipe = traj.recipe
    text = _recipe_json(recipe)

    def fill(tmp: Path) -> None:
        for kind in kinds:
            for pos in range(0 if kind == "xt" else 1, positions(traj)):
                _save_png(frame_grid(traj, kind, pos, scale), str(tmp / f"{kind}_{pos:04d}.png"), recipe, text)
        _write_text(text)(str(tmp / "recipe.json"))

    return write_folder(Path(folder), fill, overwrite)


def _animation_writer(frames: list[np.ndarray], fmt: str, fps: float, recipe) -> Callable[[str], None]:
    duration = max(1, int(round(1000 / max(fps, 0.1))))

    def write(path: str) -> None:
        if fmt == "MP4":  # imageio-ffmpeg's bundled ffmpeg; the container is named, so any temp name works
            import imageio_ffmpeg

            even = _even(frames)
            h, w = even[0].shape[:2]
            writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                                 output_params=["-f", "mp4"], macro_block_size=1)
            writer.send(None)
            try:
                for f in even:
                    writer.send(np.ascontiguousarray(f).tobytes())
            finally:
                writer.close()
            return
        ims = [Image.fromarray(f) for f in frames]
        kw = dict(format=fmt, save_all=True, append_images=ims[1:], duration=duration, loop=0)
        if fmt == "PNG":
            kw["pnginfo"] = _png_info(recipe)
        ims[0].save(path, **kw)
    return write


def _even(frames: list[np.ndarray]) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    return [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0))) for f in frames]


def _animation_format(path: Path) -> str:
    fmt = ANIMATION_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ExportError(f"{path}: unknown animation type; use .gif, .png/.apng or .mp4")
    if fmt == "MP4" and not mp4_available():
        raise ExportError(f"{path}: MP4 export needs imageio-ffmpeg (pip install imageio-ffmpeg); use GIF or APNG")
    return fmt


def export_animation(traj, path: str | os.PathLike, which: str = "x0", fps: float = 10, scale: int = 4,
                     caption: bool = True, overwrite: bool = False) -> Path:
    """An animated GIF, APNG (.png/.apng) or MP4 of the run (one frame per position), plus the recipe."""
    path = Path(path)
    fmt = _animation_format(path)
    precheck(path, overwrite, companions=[_sidecar(path)])
    frames = step_frames(traj, which, scale, caption, start=1 if which == "x0" else 0)
    if not frames:
        raise ExportError(f"{path}: the run has no steps to export")
    _write_files({path: _animation_writer(frames, fmt, fps, traj.recipe),
                  _sidecar(path): _write_text(_recipe_json(traj.recipe))}, overwrite)
    return path


def export_contact_sheet(traj, path: str | os.PathLike, every: int = 5, scale: int = 2,
                         overwrite: bool = False) -> Path:
    """One PNG: x_t (top row) and x̂₀ (bottom row) at every ``every``-th position, labelled, plus the recipe."""
    path = Path(path)
    every = max(1, int(every))
    n = positions(traj)
    picks = list(range(0, n, every))
    if picks[-1] != n - 1:
        picks.append(n - 1)
    cols = []
    for pos in picks:
        label = "noise" if pos == 0 else f"step {traj.meta[pos - 1].index + 1}"
        xt = frame_grid(traj, "xt", pos, scale)
        x0 = frame_grid(traj, "x0", pos, scale)
        cols.append(vstack([captioned(xt, label), x0]))
    sheet = captioned(hstack(cols), "top: x_t   bottom: x̂₀ (predicted clean image)", 12)
    _write_files({path: lambda p: _save_png(sheet, p, traj.recipe),
                  _sidecar(path): _write_text(_recipe_json(traj.recipe))}, overwrite)
    return path


def export_final(traj, path: str | os.PathLike, scale: int = 1, overwrite: bool = False) -> Path:
    """The last x_t (the sample when the run finished) as one PNG grid, plus the recipe."""
    path = Path(path)
    img = frame_grid(traj, "xt", positions(traj) - 1, scale)
    _write_files({path: lambda p: _save_png(img, p, traj.recipe),
                  _sidecar(path): _write_text(_recipe_json(traj.recipe))}, overwrite)
    return path


def export_recipe(recipe, path: str | os.PathLike, overwrite: bool = False) -> Path:
    path = Path(path)
    _write_files({path: _write_text(_recipe_json(recipe))}, overwrite)
    return path


# -- comparisons ------------------------------------------------------------------
def _compare_sidecar(trajs) -> str:
    import json

    return json.dumps({"compare": [t.recipe.to_dict() for t in trajs]}, indent=2)


def export_compare_grid(trajs: Sequence, labels: Sequence[str], path: str | os.PathLike, which: str = "x0",
                        fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), scale: int = 4,
                        overwrite: bool = False) -> Path:
    """One labelled PNG: a row per fraction of the run, a column per configuration."""
    path = Path(path)
    rows = [compare_frame(trajs, labels, f, which, scale) for f in fractions]
    img = vstack(rows, gap=10)
    recipe = trajs[0].recipe if trajs else None
    _write_files({path: lambda p: _save_png(img, p, recipe),
                  _sidecar(path): _write_text(_compare_sidecar(trajs))}, overwrite)
    return path


def export_compare_animation(trajs: Sequence, labels: Sequence[str], path: str | os.PathLike, which: str = "x0",
                             frames: Optional[int] = None, fps: float = 10, scale: int = 4,
                             overwrite: bool = False) -> Path:
    """One synchronised animation: every configuration side by side at the same fraction of its run."""
    path = Path(path)
    fmt = _animation_format(path)
    n = frames or max(t.steps for t in trajs)
    imgs = [compare_frame(trajs, labels, k / max(n, 1), which, scale) for k in range(0 if which != "x0" else 1, n + 1)]
    _write_files({path: _animation_writer(imgs, fmt, fps, trajs[0].recipe),
                  _sidecar(path): _write_text(_compare_sidecar(trajs))}, overwrite)
    return path


KINDS = {
    "frames": "PNG frame sequence (folder)",
    "gif": "animated GIF",
    "apng": "animated PNG (APNG)",
    "mp4": "MP4 video",
    "contact": "contact sheet (every k-th step)",
    "final": "final image (PNG)",
}


def export(traj, kind: str, path: str | os.PathLike, **kw) -> Path:
    """Dispatch by kind: frames, gif, apng, mp4, contact, final."""
    if kind == "frames":
        return export_frames(traj, path, **{k: v for k, v in kw.items() if k in ("which", "scale", "overwrite")})
    if kind in ("gif", "apng", "mp4"):
        return export_animation(traj, path, **{k: v for k, v in kw.items()
                                               if k in ("which", "fps", "scale", "caption", "overwrite")})
    if kind == "contact":
        return export_contact_sheet(traj, path, **{k: v for k, v in kw.items() if k in ("every", "scale", "overwrite")})
    if kind == "final":
        return export_final(traj, path, **{k: v for k, v in kw.items() if k in ("scale", "overwrite")})
    raise ExportError(f"unknown export kind {kind!r}; choose one of {', '.join(KINDS)}")
