"""Writing a finished run to a folder (the CLI's output), through the one atomic writer (atomic.py).

The folder holds::

    final.png        the sample: the last x_t as a grid of the batch (a latent model's: its full VAE
                     decode), the recipe and the web UIs' "parameters" in PNG text chunks,
                     enlarged (nearest neighbour, whole pixels) to at least 256 px a side so it can
                     be looked at; the native-resolution values are in trajectory.npz. Every frame
                     below is enlarged the same way.
    xt/0000.png      x_t at position k of the chain: 0000 is the initial noise x_T, 0001 the state
    xt/000k.png      after step 1, …, the last one the sample
    x0/000k.png      x̂₀ predicted during step k (k = 1 … steps, from x_t at position k − 1;
                     the noise has none) — the window's exports number frames the same way.
                     A latent model's frames are its previews (--preview: the full VAE decode where
                     it is cheap next to a UNet step, else the linear RGB projection of the latents,
                     at latent resolution), or full decodes with --decode-frames full
    recipe.json      every setting, and the SHA-256 of the model's weights (provenance.py)
    trajectory.npz   with --save-raw: float32 xt (steps+1, B, C, H, W), x0 (steps, …), t (steps,);
                     a latent model's are its latents (C latent channels, H and W = pixels / the
                     VAE's scale factor)

Nothing is visible under the output name until all of it is written (a staging folder is renamed
into place); see atomic.py for the locking, checks and clean-up rules.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import OutputError, Reservation  # noqa: F401  (OutputError: part of this module's API)
from .decodes import DecodeCache
from .frames import make_grid
from .parameters import format_parameters
from .provenance import recipe_json as recipe_json_with_weights
from .trajectory import Trajectory

def final_size(traj: Trajectory, decodes: Optional[DecodeCache]) -> tuple[int, int]:
    """(height, width) of one image of the run, in pixels."""
    images = decodes.final() if decodes is not None else traj.frame_xt(len(traj.xt) - 1)
    return int(images.shape[1]), int(images.shape[2])


MIN_FINAL_SIDE = 256  # px: final.png's shorter side is enlarged to at least this


def add_png_text(info: PngInfo, key: str, value: str) -> None:
    """One PNG text chunk: ``tEXt`` when ``value`` is Latin-1 (the only text tEXt may hold), else ``iTXt``
    (UTF-8), as the PNG specification's "Textual information" section has it. NUL is refused: no PNG
    text may hold it, and libpng-based readers cut the text there (recipes refuse control characters)."""
    if "\x00" in value:
        raise ValueError(f"the PNG text chunk {key!r} would hold a NUL character, which PNG text cannot hold")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        info.add_itxt(key, value.encode("utf-8", "replace"))  # a lone surrogate (an undecodable path) → '?'
    else:
        info.add_text(key, value)


def png_bytes_info(recipe_json: str | None, parameters: str | None = None) -> PngInfo | None:
    """PNG text chunks: the exact ``recipe`` and, when given, the web UIs' ``parameters`` (parameters.py)."""
    if recipe_json is None:
        return None
    info = PngInfo()
    add_png_text(info, "recipe", recipe_json)
    if parameters:
        add_png_text(info, "parameters", parameters)
    add_png_text(info, "Software", "Sampling Studio")
    return info


def save_png(path: Path, image: np.ndarray, recipe_json: str | None = None, scale: int = 1,
             parameters: str | None = None) -> None:
    """Save an (H, W, 3) uint8 image, nearest-neighbour upscaled by ``scale``, recipe in a text chunk."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path, format="PNG", pnginfo=png_bytes_info(recipe_json, parameters))


def final_scale(image: np.ndarray, scale: int = 1) -> int:
    """The whole-number enlargement that makes ``image``'s shorter side at least MIN_FINAL_SIDE (or ``scale``)."""
    side = max(min(image.shape[:2]), 1)
    return max(int(scale), math.ceil(MIN_FINAL_SIDE / side))


def frame_name(kind: str, number: int) -> str:
    """``xt/0000.png`` (the noise), ``x0/0001.png`` (step 1), …: the CLI's frame files."""
    return f"{kind}/{number:04d}.png"


def write_run_folder(traj: Trajectory, out: Path, save_raw: bool = False, scale: int = 1,
                     overwrite: bool = False, extra_files: dict[str, Path] | None = None,
                     reservation: Optional[Reservation] = None, fingerprint: Optional[dict] = None,
                     decodes: Optional[DecodeCache] = None, full_frames: bool = False, progress=None,
                     fill: Optional[Callable[[Path], None]] = None) -> Path:
    """Write the run folder described in the module docstring; returns its path.

    ``reservation``: one the caller took before sampling (``studio sample`` checks ``--out`` and
    locks it before any work); without it, one is taken here. ``decodes``: a latent model's full VAE
    decodes — final.png is always the full decode; with ``full_frames`` every frame is too (one
    decode per frame, reported through ``progress(done, total)``), else frames are the previews.
    ``fill(staging_folder)`` writes more files into the folder before it is committed (``--attention``'s)."""
    if reservation is None:
        with Reservation(out, overwrite, folder=True) as r:
            return write_run_folder(traj, out, save_raw, scale, overwrite, extra_files, r, fingerprint, decodes,
                                    full_frames, progress, fill)
    tmp = reservation.stage_folder()
    try:
        recipe_json = recipe_json_with_weights(traj.recipe, fingerprint)
        (tmp / "recipe.json").write_text(recipe_json + "\n", encoding="utf-8")
        (tmp / "xt").mkdir()
        (tmp / "x0").mkdir()
        full = decodes is not None and full_frames
        total, done = len(traj.xt) + len(traj.x0), 0
        for pos in range(len(traj.xt)):
            grid = make_grid(decodes.get(pos, "xt") if full else traj.frame_xt(pos))
            save_png(tmp / frame_name("xt", pos), grid, scale=final_scale(grid, scale))
            done += 1
            if full and progress:
                progress(done, total)
        for k in range(len(traj.x0)):
            grid = make_grid(decodes.get(k, "x0") if full else traj.frame_x0(k))
            save_png(tmp / frame_name("x0", k + 1), grid, scale=final_scale(grid, scale))
            done += 1
            if full and progress:
                progress(done, total)
        from .frames import to_uint8

        final = make_grid(decodes.final() if decodes is not None else to_uint8(traj.final()))
        h, w = final_size(traj, decodes)
        save_png(tmp / "final.png", final, recipe_json, scale=final_scale(final, scale),
                 parameters=format_parameters(traj.recipe, w, h))
        if save_raw:
            np.savez(tmp / "trajectory.npz", **traj.arrays())
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if fill is not None:
            fill(tmp)
    except OSError as e:
        raise OutputError(f"{reservation.target}: writing failed ({e.strerror or e}); nothing was written") from None
    reservation.commit()
    return reservation.target
