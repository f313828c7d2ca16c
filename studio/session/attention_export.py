"""Writing a run's cross-attention maps (attention_maps.py): heat maps per token, an animation, the arrays.

The folder (``attention/`` in a ``studio sample --attention`` run folder, or one of its own through
:func:`export_attention`) holds::

    maps.npz                 ``AttentionMaps.arrays()``: maps (steps, batch, tokens, H, W) float16 over the
                             latent grid; maps_{h}x{w} (steps, batch, tokens, h, w) float16 per layer
                             resolution and layers_{h}x{w} their layer count; steps (the 0-based steps kept);
                             evaluations; tokens (strings), token_ids, token_weights
    attention.json           the same index for people: tokens, steps kept, shapes, bytes held, notes
    final/NN_TOKEN.png       token NN's map at the last step over the final image, one tile per sample
    step_KKKK/NN_TOKEN.png   the same at step KKKK (1-based, as the run folder's x0/KKKK.png), over that
                             step's x̂₀
    grid_final.png           every token's map side by side (a column per token, a row per sample);
    grid_step_KKKK.png       the same at step KKKK
    attention.gif            the grid over the kept steps, over each step's x̂₀ preview

Colours: the "inferno" colour map from 0 to the map's maximum (each map its own in the PNGs, so every
token's shape shows; each token its maximum over the run in the animation, so one sees attention form),
blended over the image. Atomic like every output (atomic.py).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .atomic import OutputError, write_folder
from .attention_maps import token_label
from .compose import captioned, hstack, vstack
from .frames import make_grid

TOKEN_SIDE = 256  # px: the longer side of a tile in the per-token PNGs (at most; smaller images are enlarged)
GRID_SIDE = 96  # px: the same in the grids and the animation
HEAT_SHARE = 0.6  # how much of a tile is the heat map; the rest is the image under it
ANIMATION_FPS = 6


def inferno() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _fit(side: int, h: int, w: int) -> tuple[int, int]:
    """(height, width) with the longer side ``side``, the aspect ratio kept."""
    f = side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def heat_tile(image: np.ndarray, heat: np.ndarray, top: float, side: int, lut: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 tile: ``heat`` (h, w) scaled to [0, ``top``], coloured, resized (bicubic) to the
    tile and blended over ``image`` (resized to the tile)."""
    h, w = _fit(side, *image.shape[:2])
    base = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), dtype=np.float32)
    m = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))
    idx = np.clip(m / top if top > 0 else np.zeros_like(m), 0.0, 1.0) * 255
    colour = lut[idx.round().astype(np.intp)].astype(np.float32)
    return (HEAT_SHARE * colour + (1 - HEAT_SHARE) * base).round().astype(np.uint8)


def token_slug(i: int, token: str) -> str:
    """``NN_TOKEN``: the position and the token's letters and digits (a file name on every system)."""
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '', token)[:24] or 'token'}"


def _grid(maps, step: int, images: np.ndarray, lut: np.ndarray, tops: Optional[np.ndarray] = None) -> np.ndarray:
    """Every token's tile at kept ``step`` (a column per token captioned with it, a row per sample)."""
    rows = []
    n = len(maps.tokens)  # captions as the window's token strip labels them: <start>, red ×1.3, <end>
    labels = [token_label(i, tok, n, w)[:12] for i, (tok, w) in enumerate(zip(maps.tokens, maps.token_weights))]
    for b in range(maps.batch):
        token_maps = maps.token_maps(step, b)
        tiles = [heat_tile(images[b], m, float(m.max() if tops is None else tops[i]), GRID_SIDE, lut)
                 for i, m in enumerate(token_maps)]
        rows.append(hstack([captioned(t, labels[i]) if b == 0 else t for i, t in enumerate(tiles)], gap=2))
    return vstack(rows, gap=2)


def _token_pngs(folder: Path, maps, step: int, images: np.ndarray, lut: np.ndarray) -> None:
    folder.mkdir()
    for i, token in enumerate(maps.tokens):
        tiles = np.stack([heat_tile(images[b], maps.map(step, i, b), float(maps.map(step, i, b).max()), TOKEN_SIDE, lut)
                          for b in range(maps.batch)])
        Image.fromarray(make_grid(tiles)).save(folder / f"{token_slug(i, token)}.png", format="PNG", compress_level=1)


def _images(traj, decodes, step: int, preview: bool = False) -> np.ndarray:
    """(B, H, W, 3) uint8 under step ``step``'s maps: its x̂₀ (the full decode unless ``preview``)."""
    if decodes is not None and not preview:
        return decodes.get(step, "x0")
    return traj.frame_x0(step)


def _index(maps, chosen: int) -> dict:
    return {"tokens": maps.tokens, "token_ids": maps.token_ids, "token_weights": maps.token_weights,
            "steps_kept": [s + 1 for s in maps.steps], "steps": maps.total_steps, "chosen_step": chosen + 1,
            "batch": maps.batch, "latent_size": list(maps.latent_size),
            "layers_per_resolution": {f"{h}x{w}": n for (h, w), n in maps.layers.items()},
            "bytes": maps.nbytes, "notes": maps.notes,
            "shapes": {"maps": "(steps, batch, tokens, H, W) float16",
                       "maps_HxW": "(steps, batch, tokens, h, w) float16, the layers at that resolution"}}


def chosen_step(maps, step: Optional[int]) -> int:
    """The kept step (0-based) for a 1-based ``step`` (None: the middle kept step)."""
    if step is None:
        return maps.steps[len(maps.steps) // 2]
    if not 1 <= step <= maps.total_steps:
        raise OutputError(f"attention step {step} is outside the run's steps 1 to {maps.total_steps}")
    return maps.nearest_step(step - 1)


def write_attention(traj, folder: Path, step: Optional[int] = None, decodes=None) -> Path:
    """Fill ``folder`` (created if missing; the caller makes it atomic) as the module docstring says.
    ``step``: the 1-based step whose heat maps are written beside the last step's (default: the middle
    kept step); ``decodes``: a latent run's full VAE decodes (images under the maps), else its previews."""
    maps = traj.attention
    if maps is None or not len(maps):
        raise OutputError("this run kept no attention maps; run it with --attention"
                          + (f" ({maps.notes[0]})" if maps is not None and maps.notes else ""))
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    lut = inferno()
    last, chosen = maps.steps[-1], chosen_step(maps, step)
    arrays = maps.arrays()
    np.savez(folder / "maps.npz", **arrays)
    (folder / "attention.json").write_text(json.dumps(_index(maps, chosen), indent=2) + "\n", encoding="utf-8")
    final = decodes.final() if decodes is not None else traj.frame_xt(len(traj.xt) - 1)
    for name, k, images in (("final", last, final), (f"step_{chosen + 1:04d}", chosen, _images(traj, decodes, chosen))):
        _token_pngs(folder / name, maps, k, images, lut)
        Image.fromarray(_grid(maps, k, images, lut)).save(folder / f"grid_{name}.png", format="PNG", compress_level=1)
    tops = arrays["maps"].astype(np.float32).max(axis=(0, 1, 3, 4))  # each token's maximum over the run
    frames = [Image.fromarray(captioned(_grid(maps, s, _images(traj, decodes, s, preview=True), lut, tops),
                                        f"step {s + 1}/{maps.total_steps}")).quantize(method=Image.Quantize.FASTOCTREE)
              for s in maps.steps]
    frames[0].save(folder / "attention.gif", format="GIF", save_all=True, append_images=frames[1:],
                   duration=int(1000 / ANIMATION_FPS), loop=0)
    return folder


def export_attention(traj, target: str | os.PathLike, step: Optional[int] = None, overwrite: bool = False) -> Path:
    """The attention folder of ``traj`` written at ``target`` on its own, atomically (the window's export)."""
    return write_folder(Path(target), lambda tmp: write_attention(traj, tmp, step, traj.decodes), overwrite)
