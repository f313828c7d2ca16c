"""A user's own image as a model's clean sample x₀: opened, converted, fitted to the run's size, encoded.

Image-to-image (SDEdit, Meng et al. 2022) and the forward process start from x₀. The rules, stated once:

- Conversion to the model's colour space (3 channels: RGB; 1 channel: greyscale, Pillow's ITU-R 601 luma),
  each one noted: the EXIF orientation applied (``PIL.ImageOps.exif_transpose``); transparency composited
  on ``BACKGROUND`` (white); a palette expanded; CMYK converted without a colour profile; 16-bit and 32-bit
  greyscale read at full depth (0..65535) rather than cut to 8 bits; greyscale repeated into R, G and B.
- Fitting (``FIT_MODES``): ``crop`` resizes the short side to the target's and centre-crops the long side
  (the aspect ratio is kept, the borders are lost); ``resize`` resizes both sides to the target (the whole
  image is kept, its aspect ratio may change). Resampling is bicubic with antialiasing, in floating point.
- Pixels are scaled to [−1, 1]. A latent model's x₀ is its VAE's encoding: the *mean* of the latent
  distribution (deterministic, as the image's best latent), shifted and scaled as the UNet expects
  (z − shift) · scaling_factor, the inverse of ``TextToImageModel.decode``.

Bad files (not an image, truncated, a decompression bomb, too small) raise ``ImageError`` with one line.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .file_reading import open_regular

FIT_MODES = ("crop", "resize")
BACKGROUND = (255, 255, 255)  # what transparency is composited on: white, as a page
BACKGROUND_NAME = "white"
MIN_SIDE = 8  # pixels: a smaller image carries no picture to start from
MAX_PIXELS = 64_000_000  # width × height; a header claiming more is refused before decoding (a decompression bomb)
MAX_BYTES = 256 << 20


class ImageError(ValueError):
    """An image file that cannot be used; the message is one line naming the file and what to do."""


@dataclass(frozen=True)
class FittedImage:
    """The image as the model's pixels: ``pixels`` (1, C, H, W) float32 in [−1, 1]; ``notes``: each
    conversion and resize made, one line each; ``source_size``: (width, height) as stored."""

    pixels: torch.Tensor
    notes: tuple[str, ...]
    source_size: tuple[int, int]


def _read(path: str | os.PathLike):
    """The decoded Pillow image at ``path``, fully loaded (so a truncated file fails here)."""
    from PIL import Image, UnidentifiedImageError

    with open_regular(path, ImageError) as f:  # a FIFO or device is refused, not read for ever
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ImageError(f"{path}: the file is larger than {MAX_BYTES >> 20} MiB; use a smaller image")
    if not data:
        raise ImageError(f"{path}: the file is empty; give a PNG, JPEG or WebP image")
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h <= MAX_PIXELS:
                img.load()
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image Pillow can read; give a PNG, JPEG or WebP file") from None
        except bomb:
            w, h = -1, -1  # Pillow's own limit, below: the header's claim is refused either way
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{path}: the image data is damaged or truncated ({_first_line(e)}); re-save or "
                             "re-download it") from None
    if w < 0 or w * h > MAX_PIXELS:
        claim = "" if w < 0 else f" ({w}×{h})"
        raise ImageError(f"{path}: the image's header claims more than {MAX_PIXELS:,} pixels{claim}, a "
                         "decompression bomb or a huge scan; scale it down first")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{path}: the image is {w}×{h} pixels; an image to start from needs at least "
                         f"{MIN_SIDE} pixels on each side")
    return img


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def _to_array(img, channels: int, notes: list[str]) -> np.ndarray:
    """(H, W, channels) float64 in [0, 1], converting by the module's rules and noting each conversion."""
    from PIL import Image, ImageOps

    orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        notes.append(f"turned upright by its EXIF orientation ({orientation})")
    mode = img.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette colours expanded to RGB")
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK converted to RGB (no colour profile applied)")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        full = 1.0 if mode == "F" else 65535.0
        notes.append("16-bit greyscale read at full depth (0..65535)" if mode.startswith("I;16") else
                     "32-bit integer greyscale read as 16-bit (0..65535)" if mode == "I" else
                     "floating-point greyscale read as 0..1")
        grey = np.clip(arr / full, 0.0, 1.0)[..., None]
        return _channels(grey, channels, notes)
    elif mode not in ("RGB", "RGBA", "L", "LA", "1"):
        img = img.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"transparency composited on {BACKGROUND_NAME}")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(base, rgba).convert("RGB" if mode not in ("LA",) else "L")
    if img.mode == "1":
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.float64) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return _channels(arr, channels, notes)


def _channels(arr: np.ndarray, channels: int, notes: list[str]) -> np.ndarray:
    """The array with the model's number of channels: grey repeated into RGB, or colour to luma."""
    have = arr.shape[-1]
    if have == channels:
        return arr
    if have == 1 and channels == 3:
        notes.append("greyscale repeated into R, G and B")
        return np.repeat(arr, 3, axis=-1)
    if have == 3 and channels == 1:
        notes.append("colour converted to greyscale (ITU-R 601 luma)")
        return (arr @ np.array([0.299, 0.587, 0.114]))[..., None]
    raise ImageError(f"the model works on {channels}-channel images; only 1- and 3-channel models take an image")


def fit(pixels: torch.Tensor, size: tuple[int, int], mode: str = "crop") -> tuple[torch.Tensor, str]:
    """(1, C, h, w) → (1, C, H, W) by the rule ``mode`` (``FIT_MODES``); returns it and a note ("" when the
    size was already right)."""
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode {mode!r} is not one of {', '.join(FIT_MODES)}")
    h, w = pixels.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return pixels, ""
    if mode == "resize":
        out = _resize(pixels, (th, tw))
        return out, f"resized from {w}×{h} to {tw}×{th}"
    scale = max(th / h, tw / w)
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    out = _resize(pixels, (rh, rw)) if (rh, rw) != (h, w) else pixels
    top, left = (rh - th) // 2, (rw - tw) // 2
    out = out[..., top:top + th, left:left + tw]
    if (rh, rw) == (h, w):
        return out, f"centre-cropped from {w}×{h} to {tw}×{th}"
    crop = f" and centre-cropped to {tw}×{th}" if (rh, rw) != (th, tw) else ""
    return out, f"resized from {w}×{h} to {rw}×{rh}{crop}"


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def open_image(path: str | os.PathLike, size: tuple[int, int], channels: int = 3, fit_mode: str = "crop") -> FittedImage:
    """The image at ``path`` as (1, channels, H, W) pixels in [−1, 1], ``size`` = (H, W), by the module's rules."""
    img = _read(path)
    notes: list[str] = []
    arr = _to_array(img, channels, notes)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()[None]
    x, note = fit(x, size, fit_mode)
    if note:
        notes.append(note)
    return FittedImage((x.clamp(0, 1) * 2 - 1).contiguous(), tuple(notes), img.size)


@torch.no_grad()
def encode(model, pixels: torch.Tensor) -> torch.Tensor:
    """x₀ in the model's state space for pixels in [−1, 1]: the pixels themselves for a pixel model; for a
    latent model (``info.text_conditioned``) its VAE's latent mean, (z − shift) · scaling_factor."""
    if not model.info.text_conditioned:
        return pixels.to(model.device, torch.float32)
    vae = model.vae
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0
    z = vae.encode(pixels.to(model.device, torch.float32)).latent_dist.mean
    return ((z - shift) * float(cfg.scaling_factor)).float()
