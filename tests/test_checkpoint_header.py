"""The safetensors header reader on real files: what it reads agrees with the safetensors library, and
every damaged or lying file gets one line naming the file and the problem — refused by the library
too, so the reader is not stricter than the format (except for a name listed twice, which JSON leaves
undefined and the library settles by keeping the last entry). Pickles only with the opt-in, and then only
through torch.load(weights_only=True)."""
from __future__ import annotations

import json
import os
import re
import struct

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from studio.checkpoints import CheckpointError, read_header
from studio.checkpoints.header import DTYPES, MAX_HEADER_SIZE


def raw_file(path, header, data_len: int, length: int | None = None, text: bytes | None = None):
    """A file with exactly this header (as JSON unless ``text``) and ``data_len`` zero bytes of data."""
    raw = text if text is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length))
        f.write(raw)
        f.write(b"\0" * data_len)
    return path


def library_refuses(path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError):
        return True
    return False


def one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_reads_what_the_library_reads(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"a.weight": torch.zeros(3, 4, dtype=torch.float16), "b": torch.zeros(5, dtype=torch.int64),
               "c": torch.zeros(2, 2, 2, dtype=torch.bfloat16), "empty": torch.zeros(0, 7)}
    save_file(tensors, str(path), metadata={"format": "pt", "modelspec.title": "tiny"})
    header = read_header(path)
    with safe_open(str(path), framework="pt") as f:
        assert set(header.tensors) == set(f.keys())
        assert header.metadata == f.metadata()
        for name in f.keys():
            s = f.get_slice(name)
            assert header.tensors[name].shape == tuple(s.get_shape())
            assert header.tensors[name].dtype == s.get_dtype()
    assert header.format == "safetensors" and header.file_size == os.path.getsize(path)
    assert header.tensors["a.weight"].nbytes == 24 and header.tensors["a.weight"].numel == 12
    assert header.tensors["a.weight"].is_floating and not header.tensors["b"].is_floating


def test_dtype_table_matches_the_library(tmp_path):
    """Each dtype code and element size the reader knows is one the library accepts with that size."""
    for code, (bits, _) in DTYPES.items():
        path = raw_file(tmp_path / f"{code}.safetensors", {"t": {"dtype": code, "shape": [8], "data_offsets": [0, bits]}},
                        bits)
        assert not library_refuses(path), code
        assert read_header(path).tensors["t"].nbytes == bits
    path = raw_file(tmp_path / "unknown.safetensors", {"t": {"dtype": "F17", "shape": [1], "data_offsets": [0, 1]}}, 1)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:  # the library lists the codes it knows in its refusal
        listed = set(re.findall(r"`([A-Z0-9_]+)`", str(e))) - {"F17"}
        if listed:
            assert listed == set(DTYPES)


def test_sparse_file_of_any_size_reads_instantly(tmp_path):
    path = tmp_path / "big.safetensors"
    raw = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1024], "data_offsets": [0, 4 << 30]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + (4 << 30))
    assert read_header(path).tensors["w"].nbytes == 4 << 30


GOOD = {"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}

# (name, header, data bytes, header length written or None, words the message must hold)
LIES = [
    ("size mismatch", {"a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 8]}}, 8, None, "lies about its sizes"),
    ("overlap", {"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [4, 12]}}, 12, None, "overlap"),
    ("hole", {"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}, 16, None, "belong to no tensor"),
    ("truncated data", GOOD, 12, None, "truncated"),
    ("excess data", GOOD, 24, None, "after the last tensor"),
    ("offsets out of range", {"a": {"dtype": "F16", "shape": [2], "data_offsets": [1 << 40, (1 << 40) + 4]}}, 4, None,
     "belong to no tensor"),
    ("begin after end", {"a": {"dtype": "F16", "shape": [0], "data_offsets": [4, 0]}}, 4, None, "begin <= end"),
    ("negative offset", {"a": {"dtype": "F16", "shape": [2], "data_offsets": [-4, 0]}}, 4, None, "begin <= end"),
    ("absurd shape", {"a": {"dtype": "F16", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 8]}}, 8, None,
     "lies about its sizes"),
    ("negative dimension", {"a": {"dtype": "F16", "shape": [-1, 4], "data_offsets": [0, 8]}}, 8, None,
     "non-negative integers"),
    ("unknown dtype", {"a": {"dtype": "F17", "shape": [2], "data_offsets": [0, 4]}}, 4, None, "unknown dtype"),
    ("missing field", {"a": {"dtype": "F16", "shape": [2]}}, 4, None, "data_offsets"),
    ("entry not an object", {"a": [1, 2]}, 0, None, "must be an object"),
    ("metadata not strings", {"__metadata__": {"step": 3}, **GOOD}, 16, None, "not a string"),
    ("half a byte", {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, 2, None, "whole bytes"),
]


@pytest.mark.parametrize("name, header, data, length, words", LIES, ids=[x[0] for x in LIES])
def test_a_lying_header_is_refused_in_one_line(tmp_path, name, header, data, length, words):
    path = raw_file(tmp_path / "m.safetensors", header, data, length)
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert words in one_line(e, path)
    assert library_refuses(path), f"the library accepts what the reader refused ({name})"


@pytest.mark.parametrize("name, text, length, words", [
    ("not JSON", b"{not json at all}", None, "not valid JSON"),
    ("not an object", b"[1, 2, 3]", None, "does not start with '{'"),
    ("not UTF-8", b"{\xff\xfe}", None, "not UTF-8"),
    ("duplicate names", (b'{"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}, '
                         b'"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}'), None, "twice"),
    ("header longer than file", b"{}", 4096, "truncated"),
    ("absurd header length", b"{}", 1 << 63, f"{MAX_HEADER_SIZE:,}"),
    ("zero header length", b"", 0, "header length is 0"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "")
def test_a_damaged_header_is_refused_in_one_line(tmp_path, name, text, length, words):
    path = raw_file(tmp_path / "m.safetensors", None, 2, length, text)
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert words in one_line(e, path)
    assert library_refuses(path) or name == "duplicate names"


def test_a_truncated_download_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(64, 64), "b": torch.ones(64)}, str(path))
    data = path.read_bytes()
    for keep in (3, 8, 8 + 10, len(data) - 1):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as e:
            read_header(path)
        assert "truncated" in one_line(e, path) or "too short" in str(e.value)


def test_files_that_are_not_regular_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        read_header(tmp_path / "absent.safetensors")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="folder"):
        read_header(folder)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.safetensors"
        os.mkfifo(fifo)
        with pytest.raises(CheckpointError, match="FIFO"):
            read_header(fifo)


def test_unknown_suffix_and_content_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert "--allow-pickle" in one_line(e, path)


def test_safetensors_content_under_a_pickle_name_is_read_without_the_opt_in(tmp_path):
    path = tmp_path / "renamed.ckpt"
    save_file({"w": torch.zeros(2)}, str(path))
    header = read_header(path)
    assert header.format == "safetensors" and set(header.tensors) == {"w"}


# ---- pickles ---------------------------------------------------------------------------------------------------

def test_pickle_is_refused_without_the_opt_in(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert "--allow-pickle" in one_line(e, path) and "safetensors" in str(e.value)


def test_pickle_with_the_opt_in_reads_names_shapes_and_the_step(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"global_step": 875000, "epoch": 3, "state_dict": {
        "model.diffusion_model.w": torch.zeros(3, 4, dtype=torch.float16), "n": torch.zeros(2, dtype=torch.int64)}},
        path)
    header = read_header(path, allow_pickle=True)
    assert header.format == "pickle" and header.extras == {"global_step": 875000, "epoch": 3}
    assert header.tensors["model.diffusion_model.w"].dtype == "F16"
    assert header.tensors["model.diffusion_model.w"].shape == (3, 4)
    assert header.tensors["n"].dtype == "I64"


class _Payload:
    """A pickle that would create a file if unpickled without weights_only."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_the_code_never_runs(tmp_path):
    target = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "callbacks": _Payload(target)}, path)
    with pytest.raises(CheckpointError) as e:
        read_header(path, allow_pickle=True)
    assert "weights_only" in one_line(e, path) and "open" in str(e.value)
    assert not target.exists()


def test_legacy_pickle_format_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as e:
        read_header(path, allow_pickle=True)
    assert "legacy" in one_line(e, path)


def test_truncated_pickle_is_refused(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError) as e:
        read_header(path, allow_pickle=True)
    assert "damaged or incomplete" in one_line(e, path)


def test_pickle_without_tensors_is_refused(tmp_path):
    path = tmp_path / "nothing.pt"
    torch.save({"state_dict": {"step": 3}}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_header(path, allow_pickle=True)


def test_any_corruption_of_the_header_is_read_or_refused_never_crashes(tmp_path):
    """Bytes of a real file's header flipped, deleted or inserted at seeded random places."""
    import random

    source = tmp_path / "source.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3, dtype=torch.float16),
               "b": torch.zeros(3)}, str(source), metadata={"k": "v"})
    data = source.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(0)
    path = tmp_path / "m.safetensors"
    for _ in range(300):
        b = bytearray(data)
        i = rng.randrange(0, 8 + n)
        action = rng.choice(("flip", "delete", "insert"))
        if action == "flip":
            b[i] = rng.randrange(256)
        elif action == "delete":
            del b[i]
        else:
            b.insert(i, rng.randrange(256))
        path.write_bytes(bytes(b))
        try:
            read_header(path)
        except CheckpointError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
