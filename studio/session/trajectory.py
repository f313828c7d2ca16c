"""The trajectory store: every step of a run, kept so any step can be shown or resumed.

x_t and x̂₀ of every step are kept in memory as uint8 RGB previews (what the window
shows and exports: 2 bytes per pixel and channel per step), and the full-precision
state a sampler needs to resume (and ``--save-raw`` writes) is kept per step as
float32: in memory up to ``memory_limit_bytes``, then in a disk cache that is
deleted with the trajectory. Memory is therefore bounded by previews + the limit.
Index 0 of ``xt`` is the initial noise; step k (0-based) is at ``xt[k + 1]``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..core.records import StepRecord
from .frames import to_uint8
from .heap import bound_heap


@dataclass
class StepMeta:
    index: int
    t: float
    sigma: float
    alpha_bar: float
    t_next: float
    sigma_next: float
    alpha_bar_next: float
    nfe: int
    guided: bool
    guidance_scale: float = 0.0


class Trajectory:
    def __init__(self, recipe, initial: torch.Tensor, steps: int, memory_limit_bytes: int = 64 << 20):
        bound_heap()
        self.recipe = recipe
        self.steps = steps
        self.xt: list[np.ndarray] = [to_uint8(initial)]
        self.x0: list[np.ndarray] = []
        self.meta: list[StepMeta] = []
        self._full: list[Any] = [{"x": initial.detach().to("cpu", torch.float32).clone(), "carry": {}}]
        self._bytes = 0
        self._limit = memory_limit_bytes
        self._cache_dir: Optional[tempfile.TemporaryDirectory] = None
        self.error: Optional[str] = None
        self.finished = False

    def __len__(self) -> int:
        """Number of completed steps."""
        return len(self.meta)

    # -- writing ------------------------------------------------------------
    def append(self, rec: StepRecord, guidance_scale: float = 0.0) -> None:
        """Add a step. ``meta`` is appended last, so a reader on another thread that sees
        ``len(meta) == k`` can read every list up to step k − 1."""
        x_cpu = rec.x.detach().to("cpu", torch.float32)
        carry = {}
        for k, v in rec.carry.items():
            if isinstance(v, torch.Tensor):
                carry[k] = "x0" if v is rec.x0 else v.detach().to("cpu", torch.float32)
            else:
                carry[k] = v
        # records are immutable (samplers never write into a yielded tensor), so CPU tensors are kept, not copied
        entry = {"x": x_cpu, "x0": rec.x0.detach().to("cpu", torch.float32), "carry": carry}
        size = sum(t.numel() * 4 for t in [entry["x"], entry["x0"], *[c for c in carry.values() if isinstance(c, torch.Tensor)]])
        if self._bytes + size > self._limit:
            entry = self._spill(len(self._full), entry)
        else:
            self._bytes += size
        self._full.append(entry)
        self.xt.append(to_uint8(x_cpu))
        self.x0.append(to_uint8(rec.x0))
        self.meta.append(StepMeta(rec.index, rec.t, rec.sigma, rec.alpha_bar, rec.t_next, rec.sigma_next,
                                  rec.alpha_bar_next, rec.nfe, rec.guided, guidance_scale))

    def _spill(self, pos: int, entry: dict) -> Path:
        if self._cache_dir is None:
            self._cache_dir = tempfile.TemporaryDirectory(prefix="studio-trajectory-")
        path = Path(self._cache_dir.name) / f"{pos:06d}.pt"
        torch.save(entry, path)
        return path

    # -- reading ------------------------------------------------------------
    def full_state(self, step: int) -> dict:
        """Full-precision state after ``step`` (−1 = the initial noise): x, x0, carry."""
        e = self._full[step + 1]
        if isinstance(e, Path):
            e = torch.load(e, weights_only=True)  # our own cache, tensors only
        return e

    def record(self, step: int) -> StepRecord:
        """A StepRecord to continue exactly after ``step``."""
        e = self.full_state(step)
        m = self.meta[step]
        carry = {k: (e["x0"] if v == "x0" else v) for k, v in e["carry"].items()}
        return StepRecord(self.recipe.sampler, m.index, self.steps, m.t, m.sigma, m.alpha_bar, m.t_next, m.sigma_next,
                          m.alpha_bar_next, e["x"], e["x0"], m.nfe, m.guided, carry)

    def frame_xt(self, pos: int) -> np.ndarray:
        """x_t at position ``pos`` (0 = the initial noise, k = after step k−1) as (B, H, W, 3) uint8."""
        return self.xt[pos]

    def frame_x0(self, step: int) -> np.ndarray:
        return self.x0[step]

    def arrays(self) -> dict[str, np.ndarray]:
        """float32 arrays: xt (steps+1, B, C, H, W), x0 (steps, …), t (steps,)."""
        return {
            "xt": torch.stack([self.full_state(i - 1)["x"] for i in range(len(self.xt))]).numpy(),
            "x0": torch.stack([self.full_state(i)["x0"] for i in range(len(self.x0))]).numpy()
            if self.x0 else np.zeros((0,), np.float32),
            "t": np.array([m.t for m in self.meta], dtype=np.float32),
        }

    def final(self) -> torch.Tensor:
        return self.full_state(len(self.meta) - 1)["x"]

    def close(self) -> None:
        if self._cache_dir is not None:
            self._cache_dir.cleanup()
            self._cache_dir = None
