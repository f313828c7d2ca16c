"""Writing a finished run to a folder (the CLI's output): atomically, never half-written."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .frames import make_grid
from .trajectory import Trajectory


class OutputError(OSError):
    """An output folder that cannot be written; the message says why and what to do."""


def png_bytes_info(recipe_json: str | None) -> PngInfo | None:
    if recipe_json is None:
        return None
    info = PngInfo()
    info.add_text("recipe", recipe_json)
    info.add_text("Software", "Sampling Studio")
    return info


def save_png(path: Path, image: np.ndarray, recipe_json: str | None = None, scale: int = 1) -> None:
    """Save an (H, W, 3) uint8 image, nearest-neighbour upscaled by ``scale``, recipe in a text chunk."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path, pnginfo=png_bytes_info(recipe_json))


def write_run_folder(traj: Trajectory, out: Path, save_raw: bool = False, scale: int = 1,
                     overwrite: bool = False, extra_files: dict[str, Path] | None = None) -> Path:
    """final.png, xt/NNNN.png (0000 = initial noise), x0/NNNN.png, recipe.json [, trajectory.npz].

    Written into a temporary folder beside ``out`` and renamed into place, so a failure
    leaves nothing behind and an existing folder is replaced only with ``overwrite``.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputError(f"{out}: already exists and is not empty; choose a new --out or pass --overwrite")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise OutputError(f"{parent}: cannot create the output folder ({e.strerror or e})") from None
    try:
        recipe_json = traj.recipe.to_json()
        (tmp / "recipe.json").write_text(recipe_json + "\n", encoding="utf-8")
        (tmp / "xt").mkdir()
        (tmp / "x0").mkdir()
        for pos in range(len(traj.xt)):
            save_png(tmp / "xt" / f"{pos:04d}.png", make_grid(traj.frame_xt(pos)), scale=scale)
        for k in range(len(traj.x0)):
            save_png(tmp / "x0" / f"{k:04d}.png", make_grid(traj.frame_x0(k)), scale=scale)
        from .frames import to_uint8

        save_png(tmp / "final.png", make_grid(to_uint8(traj.final())), recipe_json, scale=scale)
        if save_raw:
            np.savez(tmp / "trajectory.npz", **traj.arrays())
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{out}: writing failed ({e.strerror or e}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
