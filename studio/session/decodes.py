"""Full VAE decodes of a latent trajectory's steps, computed on demand and kept.

The per-step frames of a latent model are cheap linear previews; the image a person looks at
closely (the step they stopped on, a paused run, the final image, exports) is the VAE's full
decode. Decoding costs about as much as several UNet steps, so it runs off the GUI thread (the
caller's worker) and each (step, x_t | x̂₀) is decoded once.
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import torch

from .frames import to_uint8


class DecodeCache:
    """``get(pos, which)``: the decoded frames (B, H, W, 3) uint8 of one position of a trajectory.

    ``which`` is "xt" (pos 0 = initial noise, k = after step k−1, as ``Trajectory.frame_xt``) or
    "x0" (pos = step). Thread-safe: a worker decodes while the GUI thread reads ``peek``."""

    def __init__(self, trajectory, model):
        self.trajectory = trajectory
        self.model = model
        self._frames: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def peek(self, pos: int, which: str = "x0") -> Optional[np.ndarray]:
        with self._lock:
            return self._frames.get((which, pos))

    def latents(self, pos: int, which: str) -> torch.Tensor:
        if which == "xt":
            return self.trajectory.full_state(pos - 1)["x"]
        if which == "x0":
            return self.trajectory.full_state(pos)["x0"]
        raise ValueError(f"which must be 'xt' or 'x0', got {which!r}")

    def get(self, pos: int, which: str = "x0") -> np.ndarray:
        hit = self.peek(pos, which)
        if hit is not None:
            return hit
        frames = to_uint8(self.model.decode(self.latents(pos, which)))
        with self._lock:
            self._frames[(which, pos)] = frames
        return frames

    def final(self) -> np.ndarray:
        """The decoded final image of the run (x_t after the last step)."""
        return self.get(len(self.trajectory), "xt")
