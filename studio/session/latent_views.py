"""Ways to look at latents that are not images: their channels side by side."""
from __future__ import annotations

import numpy as np
import torch


def channel_mosaic(z: torch.Tensor, limit: float = 3.0) -> np.ndarray:
    """(B, C, h, w) latents → (B, h·rows, w·cols, 3) uint8: each channel as a grey tile, mapped from
    [−limit, limit] (scaled latents are about unit variance) to black..white, tiles in a near-square
    grid with a one-pixel dark gap."""
    b, c, h, w = z.shape
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    out = np.full((b, rows * (h + 1) - 1, cols * (w + 1) - 1, 3), 24, np.uint8)
    grey = ((z.detach().float().cpu().clamp(-limit, limit) / limit + 1) * 127.5).round().to(torch.uint8).numpy()
    for k in range(c):
        r, q = divmod(k, cols)
        out[:, r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w, :] = grey[:, k, :, :, None]
    return out
