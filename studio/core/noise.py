"""Reproducible, branchable randomness.

Every draw is keyed by (seed, sample index in the batch, step, draw), so a run
resumed from step k draws exactly the noise the original run drew after k, and
sample j of a batch is the same whatever the batch size.
"""
from __future__ import annotations

import numpy as np
import torch


class NoiseSource:
    def __init__(self, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2**63:
            raise ValueError(f"seed must be an integer between 0 and 2^63−1, got {seed!r}")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype

    def _draw(self, key: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        batch, rest = shape[0], tuple(shape[1:])
        out = []
        for j in range(batch):
            state = np.random.SeedSequence([self.seed, j, *key]).generate_state(2, dtype=np.uint32)
            g = torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))
            out.append(torch.randn(rest, generator=g, dtype=torch.float32))
        return torch.stack(out).to(self.device, self.dtype)

    def initial(self, shape: tuple[int, ...]) -> torch.Tensor:
        """x_T ~ N(0, I)."""
        return self._draw((0, 0), shape)

    def step(self, index: int, shape: tuple[int, ...], draw: int = 0) -> torch.Tensor:
        """Fresh N(0, I) noise for step ``index`` (0-based), draw ``draw`` within it."""
        return self._draw((index + 1, draw), shape)
