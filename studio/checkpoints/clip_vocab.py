"""The CLIP tokenizer's vocabulary, made here from the BPE merges that ship with the studio.

Stable Diffusion 1.x conditions on OpenAI's CLIP ViT-L/14 text encoder, SD 2.x on OpenCLIP ViT-H/14
and SDXL on both CLIP ViT-L and OpenCLIP ViT-bigG; all of them tokenise with the same byte-level BPE
(Radford et al. 2021, Sec. 2.4; Sennrich et al. 2016): 48,894 merges over the 256 byte symbols.
Single-file checkpoints hold none of it, and diffusers would fetch ``vocab.json`` and ``merges.txt``
from the Hub; the studio downloads nothing. ``assets/tokenizers/clip/bpe_simple_vocab_16e6.txt.gz``
is the merges list as OpenCLIP ships it (MIT licence, ``LICENSE-open_clip`` beside it; the same file
as OpenAI's CLIP repository), and :func:`write_clip_vocab` rebuilds from it exactly the files
``transformers.CLIPTokenizer`` reads, by CLIP's own construction (``clip/simple_tokenizer.py``):
the 256 byte symbols, the same with the end-of-word mark ``</w>``, one entry per merge in order,
then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 tokens.
"""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).resolve().parents[2] / "assets" / "tokenizers" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the vocabulary size CLIP trained with, less the byte symbols and the two specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (BPE works on these)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def read_merges(path: Path = BPE_FILE) -> list[tuple[str, str]]:
    """The merges CLIP uses: the file's lines after its header, the first ``N_MERGES``."""
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:N_MERGES + 1]]


def clip_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """The tokens in id order, built as CLIP builds them."""
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]


def write_clip_vocab(folder: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder`` (each written whole, then renamed into
    place) unless they are there already; returns ``folder``."""
    folder = Path(folder)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_merges()
    texts = {vocab_path: json.dumps({tok: i for i, tok in enumerate(clip_vocab(merges))}, ensure_ascii=False),
             merges_path: "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"}
    for path, text in texts.items():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return folder
