"""A run's cross-attention maps, kept with its trajectory (``Trajectory.attention``), bounded in memory.

What is kept, per kept step (``core.attention`` says how the maps are made):

    maps            (batch, tokens, H, W) float16   over the latent grid (H, W = pixels / the VAE's scale
                                                    factor): DAAM's average over heads and layers
    per_resolution  {(h, w): (batch, tokens, h, w)} float16, the average of the layers at that resolution,
                                                    at that resolution (the latent grid halved, ...)

``tokens`` are the prompt's token positions, start and end tokens included, padding dropped: token i's
map is the attention to position i of the text encoder's output. For SDXL the two encoders' outputs are
concatenated per position, so each position (of the one tokenisation both share) has one map. ``batch``
is the run's samples (the conditional branch of classifier-free guidance). Steps are the trajectory's:
step k (0-based) is ``traj.meta[k]`` and ``traj.x0[k]``.

Memory is bounded by ``MAX_ATTENTION_BYTES``: when the whole run's maps would exceed it, only every s-th
step is kept (the first and the last always), s the smallest that fits, and ``notes`` says so in one line;
when one step alone exceeds it, nothing is kept and ``notes`` says that. ``nbytes`` is what is held.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np

from ..core.attention import Resolution, StepAttention

MAX_ATTENTION_BYTES = 256 << 20  # the most a run's attention maps may hold


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def kept_count(steps: int, stride: int) -> int:
    """How many of ``steps`` steps are kept keeping every ``stride``-th one and the last."""
    return math.ceil(steps / stride) + (1 if (steps - 1) % stride else 0)



SPECIAL = re.compile(r"<\|?[^<>|]*\|?>|</?s>|\[CLS\]|\[SEP\]")  # a tokenizer's start / end token as decoded


def token_label(i: int, token: str, count: int, weight: float = 1.0) -> str:
    """What a token's button says: ``<start>`` and ``<end>`` for the tokenizer's own, and a weight ≠ 1."""
    label = token
    if SPECIAL.fullmatch(token):
        label = "<start>" if i == 0 else "<end>" if i == count - 1 else token
    return label if weight == 1.0 else f"{label} ×{weight:.3g}"

class AttentionMaps:
    """The maps of one run (module docstring). Appending and reading may happen on different threads:
    ``steps`` grows last, so a reader that sees step k in it can read k's maps."""

    def __init__(self, tokens: list[str], token_ids: list[int], steps: int, limit_bytes: int = MAX_ATTENTION_BYTES,
                 weights: Optional[list[float]] = None):
        self.tokens = list(tokens)  # readable strings, one per position
        self.token_ids = list(token_ids)
        self.token_weights = list(weights) if weights is not None else [1.0] * len(tokens)  # (word:1.3) → 1.3
        self.total_steps = int(steps)
        self.limit_bytes = int(limit_bytes)
        self.steps: list[int] = []  # the trajectory steps kept, ascending
        self._maps: dict[int, np.ndarray] = {}
        self._per_res: dict[int, dict[Resolution, np.ndarray]] = {}
        self.layers: dict[Resolution, int] = {}  # cross-attention layers per resolution, largest first
        self.evaluations: dict[int, int] = {}  # UNet evaluations averaged, per kept step
        self.stride = 1
        self.nbytes = 0
        self.notes: list[str] = []
        self._refused = False

    # -- writing ------------------------------------------------------------
    def wants(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is to be kept (and so worth capturing)."""
        if self._refused:
            return False
        return step % self.stride == 0 or step == self.total_steps - 1

    def append(self, step: int, captured: Optional[StepAttention]) -> None:
        """Keep ``step``'s maps (float16); the first step decides the thinning (module docstring)."""
        if captured is None or not self.wants(step):
            return
        maps = captured.maps.numpy().astype(np.float16)
        per_res = {res: m.numpy().astype(np.float16) for res, m in captured.per_resolution.items()}
        size = maps.nbytes + sum(m.nbytes for m in per_res.values())
        if not self.steps:
            self._plan(size)
            if self._refused:
                return
            self.layers = {res: n // max(captured.evaluations, 1) for res, n in captured.layers.items()}
        self._maps[step] = maps
        self._per_res[step] = per_res
        self.evaluations[step] = captured.evaluations
        self.nbytes += size
        self.steps.append(step)

    def _plan(self, per_step: int) -> None:
        n = self.total_steps
        if per_step > self.limit_bytes:
            self._refused = True
            self.notes.append(f"attention maps were not kept: one step's take {mib(per_step)}, above the "
                              f"{mib(self.limit_bytes)} cap; lower the batch, the image size or the prompt's length")
            return
        stride = 1
        while kept_count(n, stride) * per_step > self.limit_bytes:
            stride += 1
        self.stride = stride
        if stride > 1:
            self.notes.append(f"attention maps: one step in {stride} kept ({kept_count(n, stride)} of {n}, "
                              f"{mib(per_step)} a step) to stay within the {mib(self.limit_bytes)} cap")

    # -- reading ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    @property
    def latent_size(self) -> Optional[Resolution]:
        """(H, W) of the maps, None before the first step."""
        return tuple(self._maps[self.steps[0]].shape[-2:]) if self.steps else None

    @property
    def batch(self) -> int:
        return int(self._maps[self.steps[0]].shape[0]) if self.steps else 0

    @property
    def resolutions(self) -> list[Resolution]:
        """The layers' resolutions, largest first."""
        return list(self.layers)

    def nearest_step(self, step: int) -> Optional[int]:
        """The kept step shown for ``step``: the last kept at or before it (the first kept if none is)."""
        if not self.steps:
            return None
        before = [s for s in self.steps if s <= step]
        return before[-1] if before else self.steps[0]

    def token_maps(self, step: int, sample: int = 0) -> np.ndarray:
        """Every token's map at kept step ``step`` for one sample: (tokens, H, W) float32."""
        return self._maps[step][sample].astype(np.float32)

    def map(self, step: int, token: int, sample: int = 0) -> np.ndarray:
        """Token ``token``'s map at kept step ``step``: (H, W) float32 over the latent grid."""
        return self._maps[step][sample, token].astype(np.float32)

    def resolution_map(self, step: int, token: int, resolution: Resolution, sample: int = 0) -> np.ndarray:
        """Token ``token``'s map from the layers at ``resolution`` only: (h, w) float32, not upsampled."""
        return self._per_res[step][tuple(resolution)][sample, token].astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything, as arrays (the export's .npz): ``maps`` (steps, batch, tokens, H, W) float16,
        ``maps_{h}x{w}`` (steps, batch, tokens, h, w) float16 per resolution, ``layers_{h}x{w}`` its layer
        count, ``steps`` (steps,) the 0-based trajectory steps, ``evaluations`` (steps,), ``tokens`` the
        strings, ``token_ids``, ``token_weights``."""
        out = {"maps": np.stack([self._maps[s] for s in self.steps]),
               "steps": np.array(self.steps, dtype=np.int64),
               "evaluations": np.array([self.evaluations[s] for s in self.steps], dtype=np.int64),
               "tokens": np.array(self.tokens, dtype=str), "token_ids": np.array(self.token_ids, dtype=np.int64),
               "token_weights": np.array(self.token_weights, dtype=np.float32)}
        for res in self.resolutions:
            key = f"{res[0]}x{res[1]}"
            out[f"maps_{key}"] = np.stack([self._per_res[s][res] for s in self.steps])
            out[f"layers_{key}"] = np.array(self.layers[res], dtype=np.int64)
        return out
