"""Finding the weight that holds a NaN or an infinity, and saying so before a run blames its settings.

A damaged weight makes every image it touches NaN. Scanning all of a model's weights costs one pass
over its memory (a third of diffusers' own single-file load for SD 1.5), so text-to-image models are
not scanned when they open; instead ``NonFiniteGuard`` watches each network output with one cheap sum,
and only when an output is not finite scans the weights and names the first damaged one. That is the
moment the damage matters, and the one that the web UIs report too ("a tensor with NaNs was produced
in Unet"). A weight used only by some prompts (a text encoder's embedding row) is found when such a
prompt is run.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch

from .records import SamplingError


def is_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite: its minimum and maximum are (a NaN propagates into both;
    one pass over memory, no elementwise mask)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t.detach().reshape(-1))
    return bool(torch.isfinite(low) & torch.isfinite(high))


def output_is_finite(t: torch.Tensor) -> bool:
    """Whether a network output is finite: one sum, exact test only if the sum is not finite (it can
    overflow on a huge but finite tensor)."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def first_non_finite(modules: Iterable[tuple[str, Optional[torch.nn.Module]]]) -> Optional[str]:
    """``name.key`` of the first floating-point parameter or buffer holding a NaN or an infinity, or None."""
    for name, module in modules:
        if module is None:
            continue
        for key, value in module.state_dict().items():
            if value.is_floating_point() and not is_finite(value):
                return f"{name}.{key}"
    return None


class DamagedWeights(SamplingError):
    """A model's weight holds NaN or infinite values (the message names the file and the weight): no run
    of this model can succeed, so sweeps treat it as fatal."""


class NonFiniteGuard:
    """Checks network outputs; on a non-finite one, scans ``modules()`` and raises ``DamagedWeights``
    naming ``source`` and the weight. An output that is not finite while every weight is (fp16 overflow,
    a guidance scale too strong) is returned as is, for the chain's own check to report."""

    def __init__(self, source: str, modules: Callable[[], Iterable[tuple[str, Optional[torch.nn.Module]]]]):
        self.source, self.modules = source, modules
        self.damaged: Optional[str] = None  # the weight found, kept: the same file fails the same way

    def message(self) -> str:
        return (f"{self.source}: weight {self.damaged} holds NaN or infinite values; the file is damaged, "
                "download it again")

    def check(self, out: torch.Tensor) -> torch.Tensor:
        if output_is_finite(out):
            return out
        if self.damaged is None:
            self.damaged = first_non_finite(self.modules())
        if self.damaged is not None:
            raise DamagedWeights(self.message())
        return out

    def forget(self) -> None:
        """A component was replaced (another VAE): scan afresh when an output is next not finite."""
        self.damaged = None
