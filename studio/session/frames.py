"""Turning tensors into CPU uint8 images and grids (the only pixels the GUI ever sees)."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_uint8(x: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, 3) uint8; 1-channel images become grey RGB.

    Runs once per frame of every step, so it keeps to few tensor ops: select the channels, one fresh
    tensor from clamp, in-place arithmetic, and the NHWC copy made as float before the uint8 cast
    (or, with ``out``, one cast-and-copy into that (B, H, W, 3) uint8 array)."""
    x = x.detach()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] > 3:
        x = x[:, :3]
    img = x.float().clamp(-1, 1).add_(1).mul_(127.5).round_()
    if out is not None:
        torch.from_numpy(out).copy_(img.permute(0, 2, 3, 1))
        return out
    return img.permute(0, 2, 3, 1).contiguous().to(torch.uint8).cpu().numpy()


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
