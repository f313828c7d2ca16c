"""Composing what a run showed into images: batch grids per step, captions, side-by-side comparisons.

Qt-free and side-effect free (``export`` writes what these functions compose)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import OutputError
from .decodes import shown
from .frames import make_grid

WHICH = ("xt", "x0", "both")
BG = (24, 24, 28)
FG = (230, 230, 235)


ExportError = OutputError  # one error type for everything the studio writes (atomic.py)


# -- pixels ---------------------------------------------------------------------
def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Pixel-exact nearest-neighbour enlargement by an integer factor."""
    scale = max(1, int(scale))
    return img if scale == 1 else np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


CAPTION_FONT = "DejaVuSans.ttf"
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
                    "/Library/Fonts", "C:/Windows/Fonts")


def caption_font_path() -> Optional[Path]:
    """DejaVu Sans: it has every character the captions use (η σ ᾱ x̂₀ t ε …), which Pillow's built-in
    font does not (they came out as boxes). matplotlib, a dependency, ships it in ``mpl-data``; found
    without importing matplotlib. System copies are the fallback."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / CAPTION_FONT)
    candidates += [Path(d) / CAPTION_FONT for d in SYSTEM_FONT_DIRS]
    return next((p for p in candidates if p.is_file()), None)


@functools.lru_cache(maxsize=8)
def _font(size: int = 12):
    path = caption_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def captioned(img: np.ndarray, text: str, size: int = 12) -> np.ndarray:
    """``img`` with a dark caption strip above it."""
    h = size + 8
    out = Image.new("RGB", (max(img.shape[1], 8), img.shape[0] + h), BG)
    out.paste(Image.fromarray(img), (0, h))
    ImageDraw.Draw(out).text((4, 3), text, fill=FG, font=_font(size))
    return np.asarray(out)


def hstack(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        if im.shape[0] < h:
            im = np.concatenate([im, np.full((h - im.shape[0], im.shape[1], 3), BG, np.uint8)])
        if k:
            parts.append(np.full((h, gap, 3), BG, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def vstack(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    w = max(i.shape[1] for i in images)
    parts = []
    for k, im in enumerate(images):
        if im.shape[1] < w:
            im = np.concatenate([im, np.full((im.shape[0], w - im.shape[1], 3), BG, np.uint8)], axis=1)
        if k:
            parts.append(np.full((gap, w, 3), BG, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=0)


def positions(traj) -> int:
    """Number of x_t positions available (initial noise + completed steps)."""
    return len(traj.meta) + 1


def frame_grid(traj, which: str, pos: int, scale: int = 1) -> np.ndarray:
    """The batch grid at trajectory position ``pos`` (0 = noise, k = after step k) for x_t, x̂₀ or both;
    a latent model's frames are its full VAE decodes (decoded once, kept by the trajectory)."""
    if which not in WHICH:
        raise ExportError(f"unknown frame kind {which!r}; choose xt, x0 or both")
    decodes = getattr(traj, "decodes", None)  # a latent run: exports show the full VAE decode, not previews
    xt = make_grid(decodes.get(pos, "xt") if decodes is not None else traj.frame_xt(pos))
    if which == "xt":
        return upscale(xt, scale)
    if pos >= 1:
        x0 = make_grid(decodes.get(pos - 1, "x0") if decodes is not None else traj.frame_x0(pos - 1))
    else:
        x0 = np.full_like(xt, BG[0])
    if which == "x0":
        return upscale(x0, scale)
    return hstack([upscale(xt, scale), upscale(x0, scale)])


def format_t(v: float) -> str:
    """A timestep as the window shows it: whole numbers plain, fractional ones (σ samplers) to 0.1."""
    return "0" if v < 0 else f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def step_caption(traj, pos: int, which: str = "xt", full: bool = True) -> str:
    """The caption of position ``pos``, with the t its image belongs to, as the window's canvases give it:
    x_t after step k is at step k's *next* t; the x̂₀ of step k was predicted at step k's own t. A latent
    run's caption says what the image is: ``full``, its full VAE decode (what exports show), else its
    preview ("linear preview", "TAESD preview"; decodes.SHOWN)."""
    what = shown(traj, full)
    return _step_caption(traj, pos, which, traj.steps) + (f"  ({what})" if what else "")


def _step_caption(traj, pos: int, which: str, n: int) -> str:
    if pos == 0 or not traj.meta:
        return f"noise  t={format_t(traj.meta[0].t)}" if traj.meta else "noise"
    m = traj.meta[pos - 1]
    if which == "x0":
        return f"x̂₀ of step {m.index + 1}/{n}  t={format_t(m.t)}"
    return f"step {m.index + 1}/{n}  t={format_t(m.t_next)}"


def step_frames(traj, which: str, scale: int, caption: bool, start: int = 0) -> list[np.ndarray]:
    out = []
    for pos in range(start, positions(traj)):
        img = frame_grid(traj, which, pos, scale)
        out.append(captioned(img, step_caption(traj, pos, which)) if caption else img)
    return out


# -- comparisons ------------------------------------------------------------------
def at_fraction(traj, fraction: float) -> int:
    """The position nearest to ``fraction`` (0..1) of a run's planned steps, clamped to what exists."""
    pos = int(round(min(max(fraction, 0.0), 1.0) * traj.steps))
    return min(pos, positions(traj) - 1)


def compare_frame(trajs: Sequence, labels: Sequence[str], fraction: float, which: str = "x0",
                  scale: int = 4) -> np.ndarray:
    cells = []
    for traj, label in zip(trajs, labels):
        pos = at_fraction(traj, fraction)
        if which == "x0" and pos == 0:
            pos = min(1, positions(traj) - 1)
        cells.append(captioned(frame_grid(traj, which, pos, scale), f"{label}  [{step_caption(traj, pos, which)}]", 11))
    return hstack(cells, gap=10)
