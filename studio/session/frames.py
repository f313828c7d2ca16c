"""Turning tensors into CPU uint8 images and grids (the only pixels the GUI ever sees)."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, 3) uint8; 1-channel images become grey RGB."""
    x = x.detach()
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = img.permute(0, 2, 3, 1).cpu().numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] > 3:
        img = img[..., :3]
    return np.ascontiguousarray(img)


def grid_shape(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 1, pad_value: int = 32) -> np.ndarray:
    """Tile (B, H, W, 3) uint8 images into one (H', W', 3) image."""
    b, h, w, c = images.shape
    rows, cols = grid_shape(b) if cols is None else (math.ceil(b / cols), cols)
    out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), pad_value, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out
