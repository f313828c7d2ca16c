"""Weighted prompts through a CLIP text encoder, by the web UIs' rule ("emphasis").

AUTOMATIC1111's rule (modules/sd_hijack_clip.py, ``FrozenCLIPEmbedderWithCustomWordsBase``, and
sd_emphasis.py, ``EmphasisOriginal``), which Forge keeps:

1. each run of :func:`~studio.core.prompt_weights.parse_weights` is tokenized on its own, without start
   and end tokens, and each of its tokens takes the run's weight;
2. the tokens fill a chunk of the tokenizer's length less two (75 for SD's 77), between the start token
   and the end token, padded as the tokenizer pads (the end token for SD 1.x's CLIP, ``!`` for OpenCLIP
   in SD 2.x and SDXL's second encoder); start, end and padding take weight 1;
3. the encoder's hidden states z (tokens × dim) are multiplied token by token by the weights, then
   rescaled so that their mean over the whole chunk is what it was: z ← z·w · mean(z) / mean(z·w).

The web UIs encode a longer prompt as further chunks, concatenated along the tokens. The studio encodes
one chunk and cuts the rest, as diffusers' pipelines do (and as it does for an unweighted prompt): its
classifier-free guidance batches the prompt with the negative prompt in one UNet call, which needs both
to have the same number of tokens. The cut is reported (``ChunkTokens.cut``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .prompt_weights import PromptWeightError


@dataclass(frozen=True)
class ChunkTokens:
    """One encoder's chunk: token ids (start, the prompt's tokens, end, padding: the tokenizer's length),
    one weight per id, and the prompt's tokens that did not fit."""

    ids: list[int]
    weights: list[float]
    cut: list[int]


def chunk_tokens(runs: list[tuple[str, float]], tokenizer,
                 convert: Optional[Callable[[str], str]] = None) -> ChunkTokens:
    """Steps 1 and 2 of the rule for ``runs`` ((text, weight), as parsed). ``convert`` rewrites each run's
    text first (diffusers' textual-inversion token expansion, ``maybe_convert_prompt``)."""
    texts = [convert(text) if convert else text for text, _ in runs]
    ids: list[int] = []
    weights: list[float] = []
    for tokens, (_, weight) in zip(tokenizer(texts, add_special_tokens=False, truncation=False).input_ids, runs):
        ids += tokens
        weights += [float(weight)] * len(tokens)
    room = int(tokenizer.model_max_length) - 2
    kept, cut = ids[:room], ids[room:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padding = room - len(kept)
    return ChunkTokens([tokenizer.bos_token_id, *kept, tokenizer.eos_token_id] + [pad] * padding,
                       [1.0, *weights[:room], 1.0] + [1.0] * padding, cut)


def emphasise(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Step 3 of the rule: ``z`` (1 × tokens × dim) scaled token by token by ``weights``, then rescaled to its
    own mean; computed in float32, returned in ``z``'s dtype. Weights all 1 return ``z`` unchanged, bit for bit."""
    if all(w == 1.0 for w in weights):
        return z
    zf = z.float()
    w = torch.tensor(weights, dtype=torch.float32, device=z.device).reshape(1, -1, 1)
    original_mean = zf.mean()
    scaled = zf * w
    ratio = original_mean / scaled.mean()
    if not torch.isfinite(ratio):
        raise PromptWeightError("prompt weights: the weights cancel the embedding's mean (negative weights balance "
                                "the rest), so it cannot be rescaled as the web UIs do; change the negative weights")
    return (scaled * ratio).to(z.dtype)
