"""What a network is conditioned on, beside x_t and t: class labels or text embeddings.

Classifier-free guidance (docs/maths.md, "Classifier-free guidance") evaluates the network on a
conditional and an unconditional input in one batched forward, so a conditioning must be able
to join a batch: a label tensor is concatenated with ``torch.cat``; a ``TextCondition`` joins its
embeddings (and, for SDXL, its pooled embedding and micro-conditioning time ids) the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass(frozen=True)
class TextCondition:
    """Text-encoder output for a batch: what a UNet2DConditionModel cross-attends to.

    ``embeds`` (batch × tokens × dim) feed cross-attention (Rombach et al. 2022, Sec. 3.3).
    SDXL adds ``pooled`` (batch × projection dim), the second encoder's pooled embedding, and
    ``time_ids`` (batch × 6), the size/crop micro-conditioning (Podell et al. 2023, Sec. 2.2).
    """

    embeds: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    time_ids: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def join(self, other: "TextCondition") -> "TextCondition":
        """This batch followed by ``other``'s (the [cond, uncond] batch of CFG)."""

        def cat(a, b):
            return None if a is None else torch.cat([a, b])

        return TextCondition(torch.cat([self.embeds, other.embeds]), cat(self.pooled, other.pooled),
                             cat(self.time_ids, other.time_ids))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        """Keyword arguments for ``UNet2DConditionModel.forward``."""
        kw: dict = {"encoder_hidden_states": self.embeds.to(dtype)}
        if self.pooled is not None:
            kw["added_cond_kwargs"] = {"text_embeds": self.pooled.to(dtype), "time_ids": self.time_ids.to(dtype)}
        return kw


Conditioning = Union[torch.Tensor, TextCondition]


def join(cond: Conditioning, uncond: Conditioning) -> Conditioning:
    """The batched [cond, uncond] input of one classifier-free guidance forward."""
    if isinstance(cond, TextCondition):
        return cond.join(uncond)
    return torch.cat([cond, uncond])
