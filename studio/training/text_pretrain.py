"""Pretraining of the ``digits-text`` text encoder on what its captions say.

Stable Diffusion conditions on a text encoder that already understands text (CLIP, Radford
et al. 2021); Imagen (Saharia et al. 2022) freezes a pretrained T5 and finds the text
encoder's quality to matter more than the UNet's size. Trained from scratch together with
the UNet, our encoder's outputs hardly change with the digit word: the colour words, which
explain most of the pixels, dominate the gradient, the UNet never learns to read the digit,
and so the encoder never learns to write it (a chicken-and-egg that more steps did not break).

The task here is the caption's own meaning: from the hidden state at the end-of-text token
and at every padding position after it (the positions a causal encoder fills with the whole
caption), predict the digit, the foreground colour, the background colour and the style word,
each with an extra class "not said" (partial captions and the empty prompt). Targets are read
from the caption's words (:func:`caption_targets`), so they are true by construction, and the
captions are drawn as in training (:func:`captions.caption`, train split: the held-out
(digit, colour) combinations are never seen here either). The probe heads are kept in the
checkpoints (a resumed run goes on exactly) and left out of the export; the UNet run then
conditions on the encoder, frozen (:mod:`text_diffusion`). The loop is :func:`studio.training.fit.fit`'s.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.options import Option
from ..data.captions import COLOUR_NAMES, DIGIT_WORDS, STYLE_WORDS, caption, sample_attributes, vocabulary
from .text_diffusion import CachedTokenizer
from .text_model import TEXT_CONFIG, make_text_encoder
from .fit import Clock, ProgressFn, Trainee, fit
from .settings import (BATCH_SIZE, CAPTION_ORDER, CHECKPOINT_EVERY, LR, NETWORK, STEPS, WARMUP_STEPS, TrainConfig,
                       setting)
from .tokenizer import load_tokenizer, write_tokenizer
HEADS = {"digit": len(DIGIT_WORDS), "fg": len(COLOUR_NAMES), "bg": len(COLOUR_NAMES), "style": len(STYLE_WORDS)}


def caption_targets(text: str) -> tuple[int, int, int, int]:
    """(digit, fg, bg, style) indices a caption states; the head's size ("not said") where it
    states nothing. A colour right after "on" or "on a" is the background, any other colour the
    foreground, whatever the word order ("on a grey background, a red 1", "a 1 in red on grey")."""
    words = text.replace(",", " ").split()
    digit = next((int(w) if w.isdigit() else DIGIT_WORDS.index(w) for w in words
                  if w.isdigit() or w in DIGIT_WORDS), HEADS["digit"])

    def after_on(i: int) -> bool:
        return words[i - 1:i] == ["on"] or words[max(i - 2, 0):i] == ["on", "a"]

    colours = [(i, w) for i, w in enumerate(words) if w in COLOUR_NAMES]
    fg = next((COLOUR_NAMES.index(w) for i, w in colours if not after_on(i)), HEADS["fg"])
    bg = next((COLOUR_NAMES.index(w) for i, w in colours if after_on(i)), HEADS["bg"])
    style = next((STYLE_WORDS.index(w) for w in words if w in STYLE_WORDS), HEADS["style"])
    return digit, fg, bg, style


class CaptionProbe(torch.nn.Module):
    """Linear heads over the encoder's hidden states (one per attribute, +1 class: not said)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, n + 1) for k, n in HEADS.items()})

    def loss_and_accuracy(self, hidden: torch.Tensor, after_eos: torch.Tensor,
                          targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cross-entropy at every position from the end-of-text token on, and the accuracies at
        the end-of-text token: of all four attributes at once, and of each attribute over the
        captions that state it (chance: 1 / the number of values)."""
        h = hidden[after_eos]  # (M, hidden)
        rows = after_eos.nonzero()[:, 0]
        at_eos = torch.cat([torch.ones(1, dtype=torch.bool), rows[1:] != rows[:-1]])
        loss, all_ok, acc = 0.0, None, {}
        for j, (name, head) in enumerate(self.heads.items()):
            logits = head(h)
            target = targets[rows, j]
            loss = loss + F.cross_entropy(logits, target)
            ok = (logits.argmax(1) == target)[at_eos]
            said = target[at_eos] != HEADS[name]
            acc[f"{name}_when_said"] = float(ok[said].float().mean()) if said.any() else float("nan")
            all_ok = ok if all_ok is None else all_ok & ok
        acc["all_four"] = float(all_ok.float().mean())
        return loss, acc


def _batch(rng: np.random.Generator, n: int, p_empty: float, orders: str) -> list[str]:
    attrs = sample_attributes(n, rng, "train")
    return ["" if rng.random() < p_empty else caption(a, rng, orders=orders) for a in attrs]


@dataclass(frozen=True)
class TextEncoderConfig(TrainConfig):
    """The text-encoder stage of ``digits-text`` (assets/models/digits-text/README.md)."""

    steps: int = setting(STEPS, 600)
    batch_size: int = setting(BATCH_SIZE, 256)
    lr: float = setting(LR, 1e-3)
    warmup_steps: int = setting(WARMUP_STEPS, 50)
    checkpoint_every: int = setting(CHECKPOINT_EVERY, 100)
    p_empty: float = setting(Option(kind="float", low=0, high=1, high_open=True,
                                    help="probability that a caption is the empty prompt"), 0.1)
    caption_orders: str = setting(CAPTION_ORDER)
    text_config: Optional[dict] = setting(NETWORK, None)


def pretrain_text_encoder(out_dir, config: TextEncoderConfig | None = None, *, progress: ProgressFn | None = None,
                          clock: Clock = time.monotonic, **settings) -> dict:
    """Train (or resume) by ``config`` with ``settings`` (fields of :class:`TextEncoderConfig`)
    changed, and write ``out_dir/final`` (``text_encoder/`` safetensors + ``tokenizer/``); returns
    (and writes) a summary with the held-back accuracy."""
    cfg = TextEncoderConfig.make(config, **settings)
    t_begin = clock()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg = json.loads(json.dumps(cfg.text_config or TEXT_CONFIG))
    tok_dir = write_tokenizer(out_dir / "tokenizer", vocabulary())
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(cfg.seed)
    encoder = make_text_encoder(tokenizer, tcfg).train()
    probe = CaptionProbe(tcfg["hidden_size"])
    eos = tokenizer.eos_token_id
    tokenize = CachedTokenizer(tokenizer)

    def encode(texts: list[str]):
        ids = tokenize(texts)
        first_eos = (ids == eos).int().argmax(1, keepdim=True)
        after_eos = torch.arange(ids.shape[1])[None] >= first_eos
        targets = torch.tensor([caption_targets(t) for t in texts])
        return ids, after_eos, targets

    def loss(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        ids, after_eos, targets = encode(_batch(rng, cfg.batch_size, cfg.p_empty, cfg.caption_orders))
        value, acc = probe.loss_and_accuracy(encoder(ids)[0], after_eos, targets)
        return value, {"accuracy": acc["all_four"]}

    trainee = Trainee(params=list(encoder.parameters()) + list(probe.parameters()), loss=loss,
                      saved={"text_encoder": encoder, "probe": probe}, state={**cfg.recipe(), "text_config": tcfg},
                      log_fields=("accuracy",))
    summary = {**fit(out_dir, trainee, cfg, progress, clock), **trainee.state}
    encoder.eval()
    with torch.no_grad():  # fresh captions the run never drew (another seed)
        ids, after_eos, targets = encode(_batch(np.random.default_rng(cfg.seed + 10_000), 2000, cfg.p_empty,
                                                 cfg.caption_orders))
        _, summary["held_back_accuracy"] = probe.loss_and_accuracy(encoder(ids)[0], after_eos, targets)
    if cfg.export:
        final = out_dir / "final"
        from ..core.text_model import quiet_libraries

        with quiet_libraries():  # transformers' "Writing model shards" bar: the trainer prints its own progress
            encoder.save_pretrained(str(final / "text_encoder"), safe_serialization=True)
        if (final / "tokenizer").exists():
            shutil.rmtree(final / "tokenizer")
        shutil.copytree(tok_dir, final / "tokenizer")
        summary["export"] = str(final)
    summary["wall_seconds"] = round(clock() - t_begin, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def check_pretrained_folder(folder) -> Path:
    """The weights file of a :func:`pretrain_text_encoder` export; a one-line ``ValueError`` if
    the folder lacks it or its tokenizer (checked before a training run spends its set-up)."""
    folder = Path(folder)
    for need in ("text_encoder/model.safetensors", "tokenizer/vocab.json"):
        if not (folder / need).is_file():
            raise ValueError(f"{folder}: no {need}; give the final/ folder of `studio train text-encoder`")
    return folder / "text_encoder" / "model.safetensors"


def load_pretrained_text_encoder(folder, tokenizer, text_config: dict):
    """The encoder written by :func:`pretrain_text_encoder`, checked against the tokenizer and
    the configuration the UNet run uses (one-line ``ValueError`` otherwise)."""
    from safetensors.torch import load_file

    weights = check_pretrained_folder(folder)
    folder = Path(folder)
    if (folder / "tokenizer" / "vocab.json").read_bytes() != Path(tokenizer.vocab_file).read_bytes():
        raise ValueError(f"{folder}: its tokenizer's vocabulary differs from this run's; pretrain it again")
    encoder = make_text_encoder(tokenizer, text_config)
    try:
        missing, unexpected = encoder.load_state_dict(load_file(str(weights)), strict=False)
    except RuntimeError:  # a tensor of another shape
        missing, unexpected = ["?"], ["?"]
    if missing or unexpected:
        raise ValueError(f"{folder}: its text encoder does not match this run's configuration "
                         f"({len(missing)} missing, {len(unexpected)} unexpected weights)")
    return encoder
