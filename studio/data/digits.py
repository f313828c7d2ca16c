"""Synthetic coloured digits (0-9) rendered with Pillow.

Every image is a 32x32 RGB picture of one digit drawn with one of several
TrueType faces that ship inside matplotlib (plus Pillow's built-in default
font), with random size, rotation, shear, aspect, position, stroke width and a
random foreground/background colour pair with good luminance contrast.

Everything is deterministic for a given seed (numpy ``Generator``).
"""

from __future__ import annotations

import csv
import functools
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .cache import cached_arrays, source_hash

IMAGE_SIZE = 32
NUM_CLASSES = 10
_SS = 2  # supersampling factor used while compositing
_GLYPH_PX = 80  # font size used to rasterise the glyph before resizing

# Faces from matplotlib/mpl-data/fonts/ttf that render the ASCII digits properly.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
)
DEFAULT_FONT = "<pillow-default>"
FONT_NAMES = FONT_FILES + (DEFAULT_FONT,)


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def _font(name: str) -> ImageFont.FreeTypeFont:
    if name == DEFAULT_FONT:
        return ImageFont.load_default(size=_GLYPH_PX)
    return ImageFont.truetype(str(_font_dir() / name), _GLYPH_PX)


@functools.lru_cache(maxsize=None)
def _glyph(label: int, font_name: str, stroke: int) -> Image.Image:
    """Tightly cropped 'L' mask of one digit (cached; rendering is deterministic)."""
    font = _font(font_name)
    canvas = 2 * _GLYPH_PX + 4 * stroke
    img = Image.new("L", (canvas, canvas), 0)
    d = ImageDraw.Draw(img)
    d.text((canvas / 2, canvas / 2), str(label), fill=255, font=font, anchor="mm",
           stroke_width=stroke, stroke_fill=255)
    bbox = img.getbbox()
    if bbox is None:  # pragma: no cover - would mean a broken font
        raise RuntimeError(f"font {font_name} renders nothing for digit {label}")
    return img.crop(bbox)


def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground/background pair with luminance difference >= 0.35."""
    for _ in range(100):
        fg = rng.integers(0, 256, size=3)
        bg = rng.integers(0, 256, size=3)
        if abs(_luminance(fg) - _luminance(bg)) >= 0.35:
            return fg, bg
    # extremely unlikely fallback, still deterministic
    return np.array([255, 255, 255]), np.array([0, 0, 0])


def render_digit(label: int, rng: np.random.Generator) -> np.ndarray:
    """Render one digit. Returns ``uint8`` array of shape (32, 32, 3)."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in 0..9, got {label}")
    font_name = FONT_NAMES[int(rng.integers(len(FONT_NAMES)))]
    stroke = int(rng.integers(0, 4))  # in glyph pixels (80px font)
    mask = glyph_mask(label, font_name, stroke, rng)
    fg, bg = _colours(rng)
    return composite(mask, fg, bg)


def glyph_mask(label: int, font_name: str, stroke: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage mask (float32 (32, 32), 0..1) of one digit in the given face and stroke width,
    with random rotation, shear, aspect, size and position drawn from ``rng``."""
    glyph = _glyph(int(label), font_name, stroke)

    # rotation + shear (+ aspect jitter) as one affine map about the centre
    angle = math.radians(float(rng.uniform(-15.0, 15.0)))
    shear = float(rng.uniform(-0.3, 0.3))
    w, h = glyph.size
    ca, sa = math.cos(angle), math.sin(angle)
    # forward map A = R @ S with S = [[1, shear], [0, 1]]
    a11, a12 = ca, ca * shear - sa
    a21, a22 = sa, sa * shear + ca
    # output canvas big enough for the transformed glyph
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (-w / 2, h / 2), (w / 2, h / 2)]
    xs = [a11 * x + a12 * y for x, y in corners]
    ys = [a21 * x + a22 * y for x, y in corners]
    ow, oh = int(math.ceil(max(xs) - min(xs))) + 2, int(math.ceil(max(ys) - min(ys))) + 2
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    cx, cy = w / 2, h / 2
    ox, oy = ow / 2, oh / 2
    # input = Ainv @ (out - o) + c
    coeffs = (i11, i12, cx - i11 * ox - i12 * oy, i21, i22, cy - i21 * ox - i22 * oy)
    warped = glyph.transform((ow, oh), Image.Transform.AFFINE, coeffs,
                             resample=Image.Resampling.BILINEAR)
    bbox = warped.getbbox() or (0, 0, ow, oh)
    warped = warped.crop(bbox)
    w, h = warped.size

    # target size in supersampled pixels
    S = IMAGE_SIZE * _SS
    target_h = float(rng.uniform(0.55, 0.88)) * S
    aspect = float(rng.uniform(0.85, 1.2))
    scale = target_h / h
    tw = max(2, int(round(w * scale * aspect)))
    th = max(2, int(round(h * scale)))
    max_w = int(0.9 * S)
    if tw > max_w:
        th = max(2, int(round(th * max_w / tw)))
        tw = max_w
    warped = warped.resize((tw, th), Image.Resampling.LANCZOS)
    px = int(rng.integers(0, S - tw + 1))
    py = int(rng.integers(0, S - th + 1))
    # bias towards the centre: average a uniform position with the centre
    px = (px + (S - tw) // 2) // 2
    py = (py + (S - th) // 2) // 2
    mask = Image.new("L", (S, S), 0)
    mask.paste(warped, (px, py))
    mask = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def composite(mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Blend ``fg`` over ``bg`` (RGB, 0..255) through ``mask``; ``uint8`` (32, 32, 3)."""
    m = mask[..., None]
    out = bg[None, None, :] * (1.0 - m) + fg[None, None, :] * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, (n,32,32,3)) and labels (int64, (n,)); balanced classes
    (each class appears floor/ceil(n/10) times) in a seeded random order."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
    rng.shuffle(labels)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = render_digit(int(labels[i]), rng)
    return images, labels


def write_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0, progress=None) -> Path:
    """Write ``out_dir/images/000000.png ...`` and ``out_dir/labels.csv`` (file,label)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, labels = make_dataset(n, seed)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for i in range(n):
            name = f"images/{i:06d}.png"
            Image.fromarray(images[i]).save(out / name)
            w.writerow([name, int(labels[i])])
            if progress is not None:
                progress(i + 1, n)
    return out


def read_dataset(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read back a folder written by :func:`write_dataset`."""
    out = Path(out_dir)
    files, labels = [], []
    with open(out / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            files.append(row["file"])
            labels.append(int(row["label"]))
    images = np.stack([np.asarray(Image.open(out / p).convert("RGB")) for p in files])
    return images, np.asarray(labels, dtype=np.int64)


def load_cached(cache_dir: str | os.PathLike | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_dataset`, cached as ``.npz`` in ``cache_dir`` (:func:`cache.cached_arrays`), keyed by
    ``n``, ``seed`` and a hash of this source file; ``cache_dir=None`` renders without caching."""
    return cached_arrays(cache_dir, f"digits_n{n}_s{seed}_{source_hash(Path(__file__))}", ("images", "labels"),
                         lambda: make_dataset(n, seed))


def to_float(images: np.ndarray):
    """uint8 (N,32,32,3) numpy -> float32 torch tensor (N,3,32,32) in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """float torch tensor (N,3,H,W) in [-1,1] -> uint8 numpy (N,H,W,3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to("cpu")
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)


def grid(images: np.ndarray, nrow: int, pad: int = 2) -> Image.Image:
    """Tile uint8 (N,H,W,3) images into a PIL grid with ``nrow`` images per row."""
    n, h, w, _ = images.shape
    ncol = nrow
    nrows = math.ceil(n / ncol)
    canvas = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = images[i]
    return Image.fromarray(canvas)
