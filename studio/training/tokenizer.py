"""A CLIP tokenizer (vocab.json + merges.txt) written from the caption vocabulary.

CLIP's tokenizer (Radford et al. 2021) is byte-level BPE (Sennrich et al. 2016): a word
is split into characters, the last one marked with ``</w>``, and the merges in
``merges.txt`` are applied in rank order. :func:`learn_merges` runs Sennrich's merge
learning on the caption vocabulary (each word once) until every word is a single
token, so every caption word tokenises to exactly one ``word</w>`` token. The vocabulary
holds the single characters of the caption alphabet (with and without ``</w>``), every
intermediate merge, and the special tokens ``<|startoftext|>`` / ``<|endoftext|>`` last,
as CLIP's does. A word outside the vocabulary splits into known pieces; a character outside
the alphabet becomes ``<|endoftext|>`` (the unknown token, as in CLIP's configuration).

The folder loads offline with ``transformers.CLIPTokenizer.from_pretrained(folder)``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 20  # <|startoftext|> + up to 18 caption tokens + <|endoftext|>
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"


def _symbols(word: str) -> tuple[str, ...]:
    return tuple(word[:-1]) + (word[-1] + "</w>",)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Sennrich et al. (2016) Alg. 1 on ``words`` (frequency 1 each, ties broken
    alphabetically so the result is deterministic) until every word is one symbol."""
    corpus = {w: _symbols(w) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for sym in corpus.values():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, sym in corpus.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            corpus[w] = tuple(out)


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Token -> id map and merges for ``words`` (lower-case ASCII)."""
    merges = learn_merges(words)
    tokens: list[str] = []
    for c in ALPHABET:
        tokens += [c, c + "</w>"]
    for a, b in merges:
        tokens.append(a + b)
    seen: dict[str, int] = {}
    for t in tokens:
        seen.setdefault(t, len(seen))
    for t in (BOS, EOS):
        seen[t] = len(seen)
    return seen, merges


def write_tokenizer(folder, words: list[str], max_length: int = MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json."""
    for w in words:
        if not w or any(c not in ALPHABET for c in w):
            raise ValueError(f"vocabulary word {w!r} has characters outside the tokenizer's alphabet")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
              "do_lower_case": True, "clean_up_tokenization_spaces": False,
              "add_prefix_space": False, "errors": "replace", **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return folder


def load_tokenizer(folder):
    """``transformers.CLIPTokenizer`` from a folder written by :func:`write_tokenizer`."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))
