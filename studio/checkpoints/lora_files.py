"""What a LoRA file is, read from its header: the layout, the layers it adapts, the model family it was made for.

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) stores, for each
adapted linear or convolution layer W ∈ R^{out×in}, a pair B ∈ R^{out×r}, A ∈ R^{r×in} (the "down"
matrix A reads the layer's input), so that the layer computes W x + (α/r)·w·B A x at weight w.
Two layouts are in use, both read by diffusers (``diffusers.loaders.lora_pipeline``,
``lora_conversion_utils._convert_non_diffusers_lora_to_diffusers``):

* kohya / web UI: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``; ``lora_te_`` (``lora_te1_``/``lora_te2_`` for SDXL's two) for the text encoders. LoCon
  adds the same pairs on convolutions.
* diffusers / PEFT: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` and ``text_encoder.…``
  (older diffusers files: ``….lora.down.weight``, ``…_lora.down.weight``, ``lora_linear_layer.down``).

Which family a LoRA was made for shows in its shapes: a cross-attention key projection
(``attn2.to_k``) reads the text features, 768 wide for SD 1.x, 1024 for SD 2.x, 2048 for SDXL (the
context dims of families.py); a text-encoder projection reads the encoder's width; SDXL LoRAs may
adapt a second text encoder. This module decides that from the header alone, so that a LoRA for
another family is refused in one line before diffusers sees it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.core.options import Option, OptionError

from .families import (
    FAMILIES,
    KOHYA_PREFIXES,
    LORA_MARKERS,
    LYCORIS_MARKERS,
    UnsupportedCheckpoint,
    detect_family,
)
from .header import CheckpointError, CheckpointHeader

WEIGHT = Option("weight", 1.0, "float", "how strongly the LoRA applies (0: not at all, 1: as trained)",
                low=-10.0, high=10.0, step=0.05)
DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", "_lora.down.weight",
                 ".lora_linear_layer.down.weight")
SECOND_ENCODER = ("lora_te2_", "text_encoder_2.")
FIRST_ENCODER = ("lora_te_", "lora_te1_", "text_encoder.")
FAMILY_BY_CONTEXT = {f.context_dim: f.title for f in FAMILIES}


# -- FILE[:WEIGHT] -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a recipe: its file and its weight."""
    path: str
    weight: float = WEIGHT.default

    def __str__(self) -> str:
        return f"{self.path}:{self.weight:g}"


def parse_lora(text: str) -> LoraChoice:
    """``FILE[:WEIGHT]`` → a LoraChoice; the text after the last ``:`` is the weight when it is a number
    (so ``C:\\loras\\a.safetensors`` and paths with colons keep working); an ``OptionError`` names a
    weight out of range."""
    if not isinstance(text, str) or not text:
        raise OptionError(f"loras entries must be FILE or FILE:WEIGHT strings, got {text!r}")
    head, sep, tail = text.rpartition(":")
    try:
        weight = float(tail) if sep and head else None
    except ValueError:
        weight = None
    if weight is None:
        return LoraChoice(text)
    if not math.isfinite(weight) or not WEIGHT.low <= weight <= WEIGHT.high:
        raise OptionError(f"LoRA {head}: weight must be {WEIGHT.allowed()}, got {tail}")
    return LoraChoice(head, weight)


def normalise_loras(entries) -> list[str]:
    """Each ``FILE[:WEIGHT]`` spelled ``FILE:WEIGHT``, so a recipe says every weight it uses."""
    if not isinstance(entries, (list, tuple)):
        raise OptionError(f"loras must be a list of FILE:WEIGHT strings, got {entries!r}")
    return [str(parse_lora(e)) for e in entries]


# -- the file ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraLayout:
    """``layout``: "kohya" or "peft" (diffusers/PEFT); ``layers``: the (A, B) pairs the file holds;
    ``context``: the text-feature width its cross-attention layers read (None: it adapts none);
    ``encoder_width``: the first text encoder's width it adapts (None: none); ``second_encoder``:
    whether it adapts SDXL's second text encoder."""
    layout: str
    layers: int
    context: Optional[int]
    encoder_width: Optional[int]
    second_encoder: bool


def family_name(context: int) -> str:
    return FAMILY_BY_CONTEXT.get(context, f"a model with {context}-wide text features")


def _what_else(header: CheckpointHeader) -> str:
    try:
        found = detect_family(header)
    except UnsupportedCheckpoint as e:
        if e.kind == "vae":
            return "a standalone VAE, not a LoRA; give it with --vae"
        return "not a LoRA (no lora_down/lora_up or lora_A/lora_B weights): " + str(e).split(": ", 1)[-1]
    except CheckpointError as e:
        return "not a LoRA: " + str(e).split(": ", 1)[-1]
    return f"a {found.family.title} checkpoint, not a LoRA; open it as the model (--model)"


def lora_layout(header: CheckpointHeader) -> LoraLayout:
    """The layout and reach of the LoRA whose header is ``header``; a one-line ``CheckpointError`` for a
    file that is not a LoRA diffusers reads (a checkpoint, a VAE, a LyCORIS network, anything else)."""
    keys = header.tensors
    kohya = any(k.startswith(KOHYA_PREFIXES) for k in keys)
    if any(m in k for k in keys for m in LYCORIS_MARKERS):
        raise CheckpointError(f"{header.path}: a LyCORIS network (LoHa/LoKr/OFT); diffusers' LoRA loader reads "
                              "LoRA and LoCon files only")
    downs = [k for k in keys if k.endswith(DOWN_SUFFIXES)]
    if not downs or not (kohya or any(m in k for k in keys for m in LORA_MARKERS)):
        raise CheckpointError(f"{header.path}: {_what_else(header)}")
    context = width = None
    for k in downs:
        shape = keys[k].shape
        if len(shape) < 2:
            raise CheckpointError(f"{header.path}: {k} has shape {list(shape)}, not a LoRA down matrix [rank, in]")
        if context is None and "attn2" in k and "to_k" in k:
            context = shape[1]
        if width is None and k.startswith(FIRST_ENCODER) and "q_proj" in k:
            width = shape[1]
    return LoraLayout("kohya" if kohya else "peft", len(downs), context, width,
                      any(k.startswith(SECOND_ENCODER) for k in keys))


def check_family(path: Path, layout: LoraLayout, model) -> None:
    """Refuse, in one line, a LoRA made for another family than ``model``'s (a TextToImageModel)."""
    ctx = int(model.unet.config.cross_attention_dim)
    name = model.info.name
    if layout.context is not None and layout.context != ctx:
        raise CheckpointError(f"{path}: a LoRA for {family_name(layout.context)} (its cross-attention layers read "
                              f"{layout.context}-wide text features) but {name} is {family_name(ctx)} ({ctx}); "
                              "choose a LoRA made for this model's family")
    if layout.second_encoder and len(model.text_encoders) < 2:
        raise CheckpointError(f"{path}: a LoRA for Stable Diffusion XL (it adapts a second text encoder) but {name} "
                              f"is {family_name(ctx)}; choose a LoRA made for this model's family")
    own = int(model.text_encoders[0].config.hidden_size)
    if layout.encoder_width is not None and layout.encoder_width != own:
        raise CheckpointError(f"{path}: a LoRA for a {layout.encoder_width}-wide text encoder but {name}'s is {own} "
                              "wide; choose a LoRA made for this model's family")


def absolute_loras(entries) -> list[str]:
    """``FILE[:WEIGHT]`` entries given on a command line, with each file made absolute (``~`` expanded)."""
    out = []
    for e in entries:
        choice = parse_lora(e)
        out.append(str(LoraChoice(str(Path(choice.path).expanduser().resolve()), choice.weight)))
    return out
