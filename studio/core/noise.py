"""Reproducible, branchable randomness.

Every draw is keyed by (seed, sample index in the batch, step, draw), so a run
resumed from step k draws exactly the noise the original run drew after k, and
sample j of a batch is the same whatever the batch size.

The SDE samplers can instead take their noise from a Brownian motion W(σ), one per sample
(:meth:`NoiseSource.brownian`): the increment over a step, (W(σ_next) − W(σ))/√|σ_next − σ|, is N(0, I),
and increments over overlapping intervals are correlated as a Brownian path's are. This is k-diffusion's
``BrownianTreeNoiseSampler`` (what the web UIs' DPM++ SDE samplers draw from): torchsde's ``BrownianTree``
(Li et al. 2020, "Scalable Gradients for Stochastic Differential Equations", §4), whose path depends only on its
entropy, never on which points were asked for before or in what order, so a resumed run draws what the
straight run drew. Because the path is one function of σ, the same seed gives closely related images at
different step counts.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NOISE_TYPES = ("per-step", "brownian")
# torchsde resolves the path to this tolerance and rounds its interval's ends to as many decimals
BROWNIAN_TOL = 1e-6


def _state(seed: int, j: int, key: tuple[int, ...]) -> int:
    """A 63-bit integer from (seed, sample j, key): independent streams for every key."""
    state = np.random.SeedSequence([seed, j, *key]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class NoiseSource:
    def __init__(self, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2**63:
            raise ValueError(f"seed must be an integer between 0 and 2^63−1, got {seed!r}")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self._trees: dict[tuple, object] = {}

    def _draw(self, key: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        batch, rest = shape[0], tuple(shape[1:])
        out = []
        for j in range(batch):
            g = torch.Generator(device="cpu").manual_seed(_state(self.seed, j, key))
            out.append(torch.randn(rest, generator=g, dtype=torch.float32))
        return torch.stack(out).to(self.device, self.dtype)

    def initial(self, shape: tuple[int, ...]) -> torch.Tensor:
        """x_T ~ N(0, I)."""
        return self._draw((0, 0), shape)

    def step(self, index: int, shape: tuple[int, ...], draw: int = 0) -> torch.Tensor:
        """Fresh N(0, I) noise for step ``index`` (0-based), draw ``draw`` within it."""
        return self._draw((index + 1, draw), shape)

    def brownian_entropy(self, j: int) -> int:
        """The entropy of sample j's Brownian tree: its own stream of (seed, j), apart from every per-step draw's."""
        return _state(self.seed, j, (0, 1))

    def brownian(self, sigma: float, sigma_next: float, shape: tuple[int, ...], sigma_min: float,
                 sigma_max: float) -> torch.Tensor:
        """N(0, I) noise for a step from ``sigma`` to ``sigma_next``: (W_j(σ_next) − W_j(σ))/√|σ_next − σ| for each
        sample j, W_j sample j's Brownian motion on [σ_min, σ_max] (the plan's smallest positive and largest σ, as
        k-diffusion's samplers take them). The trees are built on first use and kept for this source; each is
        torchsde's ``BrownianTree`` on the CPU in float32, so the draws are the same on every device."""
        import torchsde  # imported here: only runs with Brownian noise need it

        lo, hi = float(sigma_min), float(sigma_max)
        rest = tuple(shape[1:])
        a, b = sorted((float(sigma), float(sigma_next)))
        # the tree holds its interval's ends rounded to its tolerance: clamp to them, as the tree itself would
        digits = -int(math.log10(BROWNIAN_TOL))
        a, b = min(max(a, round(lo, digits)), round(hi, digits)), min(max(b, round(lo, digits)), round(hi, digits))
        sign = 1.0 if float(sigma_next) >= float(sigma) else -1.0
        out = []
        for j in range(shape[0]):
            key = (j, lo, hi, rest)
            tree = self._trees.get(key)
            if tree is None:
                tree = torchsde.BrownianTree(torch.tensor(lo), torch.zeros(rest), torch.tensor(hi),
                                             entropy=self.brownian_entropy(j), tol=BROWNIAN_TOL)
                self._trees[key] = tree
            out.append(tree(a, b) * sign)
        w = torch.stack(out) / math.sqrt(abs(float(sigma_next) - float(sigma)))
        return w.to(self.device, self.dtype)
