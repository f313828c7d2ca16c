"""Capturing cross-attention maps: which latent pixels attend to which prompt token, at every step.

A text-conditioned UNet's cross-attention layers (diffusers' ``Attention`` with ``is_cross_attention``:
the ``attn2`` of every transformer block) let each latent position attend over the prompt's token
embeddings (Rombach et al. 2022, Sec. 3.3): softmax(Q Kᵀ / √d) with Q from the image features and K from
the text encoder's hidden states. The probabilities of one token over the layer's positions form a map
(h_l × w_l, the layer's resolution).

Aggregation is DAAM's (Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross
Attention", Sec. 3): the probabilities are averaged over heads, each layer's map is upsampled to the
latent grid (bicubic, as their code does), averaged over layers and clamped at 0 (bicubic overshoots).
Since the upsampling is linear, the layers of one resolution are averaged first and upsampled once: the
same average, computed with fewer operations. The per-resolution averages are kept too, at their own
resolution, so the layers can be told apart. Every UNet evaluation within a step (a CFG evaluation is one;
Heun and other multi-evaluation samplers make several) adds to that step's average.

Only the conditional branch is recorded: the denoiser puts it first in a CFG batch (``[cond, uncond]``;
without guidance the batch is the conditional one alone), so the first ``batch`` samples of every
evaluation are taken. Only the prompt's own token positions are kept (start token, the prompt's tokens,
end token); the padding positions after the end token are dropped, so a step's maps need not sum to 1 over
the kept tokens (the rest went to padding, as the model attended).

Capture must not change the sample: each capturing processor delegates the layer's output to the processor
the layer had (the same attention kernel, the same inputs), and computes the probabilities apart, from the
conditional half's queries and keys (recomputed through the layer's own projections) with diffusers'
``Attention.get_attention_scores``, in float32. The processors are installed only while a capture is open
(``CrossAttentionCapture`` as a context manager) and the layers' own processors restored after it; with
capture off nothing is installed at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


Resolution = tuple[int, int]  # (h, w) of a layer's feature map


def cross_attention_layers(network) -> dict:
    """{qualified name: diffusers Attention} of the cross-attention layers of ``network`` (a
    UNet2DConditionModel); empty for a network without any (a UNet2DModel, a non-network model)."""
    if network is None or not hasattr(network, "named_modules"):
        return {}
    from diffusers.models.attention_processor import Attention

    return {name: m for name, m in network.named_modules() if isinstance(m, Attention) and m.is_cross_attention}


def has_cross_attention(model) -> bool:
    """Whether a studio model (engine's protocol) conditions through cross-attention: a text-to-image
    model's UNet; never the class-conditional UNet2DModels or the Gaussian mixture."""
    return bool(cross_attention_layers(getattr(model, "unet", None)))


def prompt_tokens(model, prompt: str) -> tuple[list[int], list[str], list[float]]:
    """The token positions a text-to-image ``model`` conditions on for ``prompt``: ids (start token, the
    prompt's tokens, end token; truncated to the tokenizer's limit as diffusers' ``encode_prompt`` does;
    no padding), a readable string for each (the BPE word-end mark removed) and each one's weight (a
    weighted prompt's, ``(word:1.3)``; 1 elsewhere). A weighted prompt's tokens are those of its text
    without the brackets, as the model reads it (``model.prompt_tokens`` where it has one). SDXL tokenises
    the same text with both tokenizers (one CLIP vocabulary), so the positions are the first tokenizer's."""
    from .prompt_weights import parse_weights

    tok = model.tokenizers[0]
    # A1111 marks BREAK with weight −1 (refused before a run); a genuinely negative weight is a token like any
    plain = "".join(text for text, weight in parse_weights(prompt) if not (text == "BREAK" and weight == -1))
    ids = list(tok(plain, truncation=True, max_length=int(tok.model_max_length)).input_ids)
    weights = [1.0] * len(ids)
    read = getattr(model, "prompt_tokens", None)
    if read is not None:
        chunk = read(prompt)
        ids, weights = list(chunk.ids[:len(ids)]), [float(w) for w in chunk.weights[:len(ids)]]
    raw = tok.convert_ids_to_tokens(ids)
    return ids, [tok.decode([i]).strip() or t for i, t in zip(ids, raw)], weights


def layer_resolution(positions: int, latent: Resolution) -> Resolution:
    """(h, w) of a layer with ``positions`` image positions in a UNet over a ``latent`` (H, W) input: the
    latent halved (rounding up, as a stride-2 convolution with padding 1 does) until the count matches."""
    h, w = latent
    while h * w > positions and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != positions:
        raise ValueError(f"a cross-attention layer has {positions} positions, which is no resolution of a "
                         f"{latent[0]}x{latent[1]} latent")
    return h, w


def attention_probabilities(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                            attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) of one diffusers ``Attention`` layer for these inputs: (batch, heads,
    positions, tokens), float32. Q and K go through the layer's own projections and norms as its
    processor (``AttnProcessor2_0``) takes them; the scores are diffusers' ``get_attention_scores``."""
    hs = hidden_states
    if hs.ndim == 4:
        b, c, h, w = hs.shape
        hs = hs.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
    ehs = encoder_hidden_states
    if attn.norm_cross:
        ehs = attn.norm_encoder_hidden_states(ehs)
    query, key = attn.to_q(hs), attn.to_k(ehs)
    b, heads = query.shape[0], attn.heads
    d = key.shape[-1] // heads
    query = query.view(b, -1, heads, d).transpose(1, 2)
    key = key.view(b, -1, heads, d).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    n, t = query.shape[2], key.shape[2]
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, t, b).float()
    probs = attn.get_attention_scores(query.reshape(b * heads, n, d).float(), key.reshape(b * heads, t, d).float(),
                                      mask)
    return probs.view(b, heads, n, t)


@dataclass
class StepAttention:
    """One step's aggregated maps, float32 on the CPU.

    ``maps``: (batch, tokens, H, W) over the latent grid (DAAM: heads averaged, layers upsampled and
    averaged, clamped at 0). ``per_resolution``: {(h, w): (batch, tokens, h, w)}, the average of the
    layers at that resolution, not upsampled. ``layers``: {(h, w): how many layer evaluations were
    averaged there}. ``evaluations``: UNet evaluations in the step."""

    maps: torch.Tensor
    per_resolution: dict[Resolution, torch.Tensor]
    layers: dict[Resolution, int]
    evaluations: int


class _CapturingProcessor:
    """Stands in for one cross-attention layer's processor while a capture is open: the output is the
    layer's own processor's, unchanged; the conditional half's probabilities go to the capture."""

    def __init__(self, inner, capture: "CrossAttentionCapture", name: str):
        self.inner = inner
        self.capture = capture
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        cap = self.capture
        if cap.active and encoder_hidden_states is not None:
            b = cap.batch
            mask = None if attention_mask is None else attention_mask[:b]
            with torch.no_grad():
                cap.record(attention_probabilities(attn, hidden_states[:b], encoder_hidden_states[:b], mask), self.name)
        return out


@dataclass
class CrossAttentionCapture:
    """Records the cross-attention maps of ``unet``'s conditional branch, per step.

    ``batch``: the conditional samples (the first ``batch`` of every evaluation); ``tokens``: the
    prompt's token positions kept (the rest, padding, dropped). Use as a context manager around the
    UNet's evaluations (it may be entered and left again, e.g. around each step); ``take_step()`` after
    each step returns that step's ``StepAttention`` (None if nothing was recorded) and starts the next. ``active`` False skips recording (a step not kept).
    ``keep_layers``: also keep each layer evaluation's own map, (name, (batch, tokens, h, w)), in
    ``layer_maps`` until the next ``take_step`` (to study or check single layers)."""

    unet: object
    batch: int
    tokens: int
    active: bool = True
    keep_layers: bool = False
    layer_maps: list = field(default_factory=list)
    _layers: Optional[dict] = field(default=None, repr=False)
    _saved: dict = field(default_factory=dict, repr=False)
    _hook: object = field(default=None, repr=False)
    _latent: Optional[Resolution] = field(default=None, repr=False)
    _sums: dict = field(default_factory=dict, repr=False)
    _evaluations: int = field(default=0, repr=False)

    # -- installing ----------------------------------------------------------
    def __enter__(self) -> "CrossAttentionCapture":
        if self._layers is None:
            self._layers = cross_attention_layers(self.unet)
        layers = self._layers
        if not layers:
            raise ValueError("this model has no cross-attention layers, so there are no attention maps to capture")
        for name, attn in layers.items():
            own = attn.processor
            if isinstance(own, _CapturingProcessor):  # another capture still open: take over, never nest
                own = own.inner
            wrapper = _CapturingProcessor(own, self, name)
            self._saved[name] = (attn, own, wrapper)
            attn.set_processor(wrapper)
        self._hook = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        for attn, own, wrapper in self._saved.values():
            if attn.processor is wrapper:  # (a capture opened after this one restores the layer itself)
                attn.set_processor(own)
        self._saved.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _before_unet(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self._latent = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self.active:
            self._evaluations += 1

    # -- recording -----------------------------------------------------------
    def record(self, probs: torch.Tensor, name: str = "") -> None:
        """Add one layer's (batch, heads, positions, tokens) probabilities to the step's sums."""
        b, _, n, _ = probs.shape
        res = layer_resolution(n, self._latent)
        per_token = probs.mean(dim=1)[..., :self.tokens].transpose(1, 2).reshape(b, -1, *res)
        if self.keep_layers:
            self.layer_maps.append((name, per_token.detach().clone()))
        entry = self._sums.get(res)
        if entry is None:
            self._sums[res] = [per_token.detach().clone(), 1]
        else:
            entry[0] += per_token
            entry[1] += 1

    def take_step(self) -> Optional[StepAttention]:
        """The maps recorded since the last call, aggregated (module docstring); None if none were."""
        sums, evaluations = self._sums, self._evaluations
        self._sums, self._evaluations = {}, 0
        if self.keep_layers:
            self.layer_maps = []
        if not sums:
            return None
        latent = self._latent
        per_res = {res: (s / c).float() for res, (s, c) in sorted(sums.items(), key=lambda kv: -kv[0][0] * kv[0][1])}
        counts = {res: int(sums[res][1]) for res in per_res}
        total = sum(counts.values())
        maps = None
        for res, mean in per_res.items():
            up = mean if res == latent else F.interpolate(mean, size=latent, mode="bicubic", align_corners=False)
            term = up * (counts[res] / total)
            maps = term if maps is None else maps + term
        maps = maps.clamp_(min=0.0)
        return StepAttention(maps.cpu(), {r: m.cpu() for r, m in per_res.items()}, counts, evaluations)
