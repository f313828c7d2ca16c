"""Full VAE decodes of a latent trajectory's steps, computed on demand and kept; and how each step
of a latent run is shown by default.

A latent model's per-step frames are what its preview mode makes of the latents (TextToImageModel.
set_preview): the fitted linear projection, an AutoencoderTiny (TAESD) decode, or the full VAE decode.
The image a person looks at closely (the step they stopped on, a paused run, the final image,
exports) is always the full decode; it runs off the GUI thread (the caller's worker) and each
(step, x_t | x̂₀) is decoded once. When the frames themselves are full decodes, they are the cache.

Which preview a run gets by default is measured, not assumed: on a small VAE (digits-text: 8×8
latents) a full decode costs less than a UNet evaluation, while the linear projection of 8×8
latents is a grid of 8×8 blocks in approximate colours; on Stable Diffusion the decode costs more
than a step. ``default_preview`` times both when a model opens and decodes fully at every step when a
decode costs at most ``FULL_DECODE_SHARE`` of a UNet evaluation.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np
import torch

from .frames import to_uint8

# a full VAE decode at every step is the default when one decode costs at most this share of one UNet
# evaluation. A step decodes two frames (x_t and x̂₀) and a guided step evaluates the UNet twice, so at
# 1 streaming full decodes at most doubles a guided run's time. The built-in text model's small VAE is
# well below it and Stable Diffusion's VAE (a decode at 8x the latent size) well above, on CPU and GPU,
# so the choice does not flip with a busy machine's timing noise.
FULL_DECODE_SHARE = 1.0
# the timing probe's latents are at most this many a side: both costs grow with the pixel count, so the
# share carries over, and opening a large model does not wait for a decode at full size
PROBE_LATENT_SIDE = 32
PROBE_REPEATS = 3  # timed calls of each, the fastest kept
# what a latent run's frames are, by preview mode, for captions: a caption always says what is shown
SHOWN = {"linear": "linear preview", "tiny": "TAESD preview", "full": "full VAE decode"}
FULL = SHOWN["full"]


def decode_share(model, clock: Callable[[], float] = time.perf_counter, repeats: int = PROBE_REPEATS) -> float:
    """A full VAE decode's time over one UNet evaluation's, for one image (latents of at most
    ``PROBE_LATENT_SIDE`` a side): each timed ``repeats`` times after one untimed call (which pays the
    one-off set-up), the fastest of each kept, as a single timing swings several-fold on a busy machine."""
    info = model.info
    side = min(int(info.sample_size), PROBE_LATENT_SIDE)
    pixels = side * int(info.vae_scale_factor)
    z = torch.randn(1, int(info.in_channels), side, side, generator=torch.Generator().manual_seed(0))
    cond, _, _ = model.conditions("", None, 1, pixels, pixels)
    t = torch.full((1,), 500.0)  # any timestep: the cost does not depend on it
    x = z.to(model.device, model.dtype)

    def fastest(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(max(clock() - start, 0.0))
        return min(times)

    step = fastest(lambda: model.predict(x, t.to(model.device), cond, 1.0))
    decode = fastest(lambda: model.decode(z))
    return decode / step if step > 0 else float("inf")


def preview_for(share: float) -> str:
    """``full`` when a full decode costs at most ``FULL_DECODE_SHARE`` of a UNet evaluation, else ``linear``."""
    return "full" if share <= FULL_DECODE_SHARE else "linear"


def default_preview(model, clock: Callable[[], float] = time.perf_counter) -> str:
    """The preview a latent run streams by default on this model and device (:func:`preview_for`)."""
    return preview_for(decode_share(model, clock))


def shown(traj, full: bool = False) -> str:
    """What a latent run's frame shows: ``full VAE decode`` (``full``: the cache's decode), else what its
    preview mode made ("" for a pixel model, whose frames are the images)."""
    if getattr(traj, "decodes", None) is None:
        return ""
    return FULL if full else SHOWN.get(getattr(traj, "preview", None) or "linear", "preview")


class DecodeCache:
    """``get(pos, which)``: the decoded frames (B, H, W, 3) uint8 of one position of a trajectory.

    ``which`` is "xt" (pos 0 = initial noise, k = after step k−1, as ``Trajectory.frame_xt``) or
    "x0" (pos = step). Thread-safe: a worker decodes while the GUI thread reads ``peek``."""

    def __init__(self, trajectory, model):
        self.trajectory = trajectory
        self.model = model
        self._frames: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def frames_are_full(self) -> bool:
        """The trajectory's own frames are full decodes (preview mode ``full``): nothing to decode again."""
        return getattr(self.trajectory, "preview", None) == "full"

    def peek(self, pos: int, which: str = "x0") -> Optional[np.ndarray]:
        if self.frames_are_full:
            frames = self.trajectory.xt if which == "xt" else self.trajectory.x0
            if 0 <= pos < len(frames):
                return frames[pos]
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
