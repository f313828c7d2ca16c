"""The trajectory store: every step of a run, kept so any step can be shown or resumed.

x_t and x̂₀ of every step are kept in memory as uint8 RGB previews (what the window
shows and exports: 2 bytes per pixel and channel per step; for a latent model, the
latents through the model's linear RGB projection, at latent resolution), and the full-precision
state a sampler needs to resume (and ``--save-raw`` writes) is kept per step as
float32: in memory up to ``memory_limit_bytes``, then in a disk cache that is
deleted with the trajectory. Memory is therefore bounded by previews + the limit.
Kept arrays live in the store's own memory maps (slabs.py), not on the C heap.
Index 0 of ``xt`` is the initial noise; step k (0-based) is at ``xt[k + 1]``.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..core.records import StepRecord
from ..runtime import release_periodically
from .frames import to_uint8
from .slabs import Slabs


SPILL_PREFIX = "studio-trajectory-"
SPILL_NAME = re.compile(r"^studio-trajectory-(?P<pid>\d+)-[a-z0-9_]{8}$")


def sweep_stale_spills() -> list[Path]:
    """Remove spill caches left in the temp folder by studio processes that no longer exist (a SIGKILL
    skips every clean-up); returns what was removed."""
    from .atomic import sweep_stale

    return sweep_stale(Path(tempfile.gettempdir()), SPILL_NAME)


# a step's own numbers in a StepRecord: its fields less the tensors (x, x0, carry: the store keeps them apart,
# at full precision) and what every step of a run shares (sampler, steps: the trajectory's recipe and plan)
RUN_FIELDS = ("sampler", "steps")
TENSOR_FIELDS = ("x", "x0", "carry")
META_FIELDS = tuple(f.name for f in fields(StepRecord) if f.name not in RUN_FIELDS + TENSOR_FIELDS)

StepMeta = make_dataclass(
    "StepMeta",
    [(f.name, f.type, field(default=f.default, default_factory=f.default_factory))
     for f in fields(StepRecord) if f.name in META_FIELDS]
    + [("guidance_scale", float, field(default=0.0))],  # the scale applied at the step (the guidance plot)
    frozen=True,
    namespace={"__module__": __name__, "__doc__": "A step of a Trajectory: StepRecord's numbers (META_FIELDS), "
               "without its tensors, and the guidance scale applied at it."},
)


def step_meta(rec: StepRecord, guidance_scale: float = 0.0) -> StepMeta:
    return StepMeta(**{name: getattr(rec, name) for name in META_FIELDS}, guidance_scale=guidance_scale)


class Trajectory:
    def __init__(self, recipe, initial: torch.Tensor, steps: int, memory_limit_bytes: int = 64 << 20,
                 render: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.recipe = recipe
        self.steps = steps
        self._render = render  # latents → RGB preview in [−1, 1] (a latent model's linear projection)
        self.decodes = None  # a latent model's full VAE decodes (decodes.DecodeCache), set by its Run
        self.attention = None  # the cross-attention maps (attention_maps.AttentionMaps), set by a Run that keeps them
        self.preview: Optional[str] = None  # a latent model's preview mode, what the frames are (decodes.SHOWN)
        self._slabs = Slabs()
        self.xt: list[np.ndarray] = [self._frame(initial)]
        self.x0: list[np.ndarray] = []
        self.meta: list[StepMeta] = []
        self._full: list[Any] = [{"x": self._keep(initial), "carry": {}}]
        self._bytes = 0
        self._limit = memory_limit_bytes
        self._cache_dir: Optional[tempfile.TemporaryDirectory] = None
        self.error: Optional[str] = None
        self.finished = False

    def __len__(self) -> int:
        """Number of completed steps."""
        return len(self.meta)

    # -- writing ------------------------------------------------------------
    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 CPU copy of ``x`` in the store's slabs."""
        out = torch.from_numpy(self._slabs.array(tuple(x.shape), np.float32))
        return out.copy_(x.detach())

    def _frame(self, x: torch.Tensor) -> np.ndarray:
        if self._render is not None:
            x = self._render(x)
        b, _, h, w = x.shape
        return to_uint8(x, out=self._slabs.array((b, h, w, 3), np.uint8))

    def append(self, rec: StepRecord, guidance_scale: float = 0.0) -> None:
        """Add a step. ``meta`` is appended last, so a reader on another thread that sees
        ``len(meta) == k`` can read every list up to step k − 1."""
        tensors = [rec.x, rec.x0, *[v for v in rec.carry.values() if isinstance(v, torch.Tensor) and v is not rec.x0]]
        size = sum(t.numel() * 4 for t in tensors)
        in_memory = self._bytes + size <= self._limit
        keep = self._keep if in_memory else (lambda t: t.detach().to("cpu", torch.float32))
        carry = {}
        for k, v in rec.carry.items():
            if isinstance(v, torch.Tensor):
                carry[k] = "x0" if v is rec.x0 else keep(v)
            else:
                carry[k] = v
        entry = {"x": keep(rec.x), "x0": keep(rec.x0), "carry": carry}
        if in_memory:
            self._bytes += size
        else:
            entry = self._spill(len(self._full), entry)
        self._full.append(entry)
        self.xt.append(self._frame(rec.x))
        self.x0.append(self._frame(rec.x0))
        self.meta.append(step_meta(rec, guidance_scale))
        release_periodically(len(self.meta))  # only where an entry point owns the process

    def _spill(self, pos: int, entry: dict) -> Path:
        if self._cache_dir is None:
            # the pid in the name lets a later run remove it if this process is killed (sweep_stale_spills)
            self._cache_dir = tempfile.TemporaryDirectory(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
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
        return StepRecord(sampler=self.recipe.sampler, steps=self.steps, x=e["x"], x0=e["x0"], carry=carry,
                          **{name: getattr(m, name) for name in META_FIELDS})

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
