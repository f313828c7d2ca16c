"""The CLIP vocabulary the studio builds from its shipped BPE merges reads prompts as CLIP does."""
from __future__ import annotations

import json

from transformers import CLIPTokenizer

from studio.checkpoints.clip_vocab import BOS, EOS, clip_vocab, read_merges, write_clip_vocab


def test_vocabulary_has_clip_size_and_special_ids():
    vocab = clip_vocab(read_merges())
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    assert vocab.index(BOS) == 49406 and vocab.index(EOS) == 49407
    assert vocab[0] == "!" and vocab[256] == "!</w>"


def test_tokenizer_gives_the_published_clip_ids(tmp_path):
    """transformers' CLIPTokenizer over the written files gives the ids OpenAI's CLIP gives: the
    example of CLIP's README ("a photo of a cat"), and BPE merges below word level."""
    folder = write_clip_vocab(tmp_path / "clip")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("a diagram").input_ids == [49406, 320, 22697, 49407]
    assert tok("a dog").input_ids == [49406, 320, 1929, 49407]
    ids = tok("lighthousekeeperish").input_ids  # no such word: several merges, decoded back exactly
    assert len(ids) > 3 and tok.decode(ids[1:-1]).replace(" ", "") == "lighthousekeeperish"
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8"))["cat</w>"] == 2368


def test_existing_files_are_kept(tmp_path):
    folder = write_clip_vocab(tmp_path / "clip")
    stamp = (folder / "vocab.json").stat().st_mtime_ns
    write_clip_vocab(folder)
    assert (folder / "vocab.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
