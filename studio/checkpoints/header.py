"""Reading a safetensors file's header — tensor names, dtypes, shapes, metadata — without its weights.

The format (https://github.com/huggingface/safetensors, README "Format"):

* 8 bytes: ``N``, an unsigned little-endian 64-bit integer, the size of the header;
* ``N`` bytes: a UTF-8 JSON object starting with ``{`` (it may be padded at the end with spaces),
  mapping each tensor name to ``{"dtype": "F16", "shape": [320, 4, 3, 3], "data_offsets": [BEGIN, END]}``,
  plus an optional ``"__metadata__"`` object of string to string;
* the rest of the file: the byte buffer. ``data_offsets`` are relative to its start; the tensors must
  cover it entirely, without holes or overlaps (the spec forbids holes so that a file cannot hide
  other content), and each tensor's span is exactly ``numel × dtype size`` bytes.

The reference reader refuses headers over 100,000,000 bytes (``MAX_HEADER_SIZE``). Every rule is
checked here against the file's real size, so that a truncated download or a header that lies about
its offsets is refused with a one-line ``CheckpointError`` that names the file and the problem (the
library's own errors, such as "incomplete metadata, file not fully covered", do not say what to do);
a file that passes is then opened with the library's ``safe_open`` as well, which parses the header
again without reading a tensor, so that nothing accepted here is refused later by a loader. Pickled checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) are read by
``pickled.py``, only when the caller opts in.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from studio.core.file_reading import open_regular

MAX_HEADER_SIZE = 100_000_000  # bytes; the reference implementation's limit
OFFSET_CAP = 1 << 65  # above any offset a 64-bit reader can address
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# safetensors dtype code -> (bits per element, floating point); the codes of the format's Dtype enum
DTYPES: dict[str, tuple[int, bool]] = {
    "BOOL": (8, False), "U8": (8, False), "I8": (8, False), "I16": (16, False), "U16": (16, False),
    "I32": (32, False), "U32": (32, False), "I64": (64, False), "U64": (64, False), "C64": (64, False),
    "F4": (4, True), "F6_E2M3": (6, True), "F6_E3M2": (6, True),
    "F8_E5M2": (8, True), "F8_E4M3": (8, True), "F8_E4M3FNUZ": (8, True), "F8_E5M2FNUZ": (8, True),
    "F8_E8M0": (8, True), "F16": (16, True), "BF16": (16, True), "F32": (32, True), "F64": (64, True),
}
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or used; the message is one line naming the file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; ``offsets`` are into the byte buffer (None for pickles)."""
    dtype: str
    shape: tuple[int, ...]
    offsets: Optional[tuple[int, int]] = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_floating(self) -> bool:
        return DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype][0] // 8


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint holds, read from its header alone.

    ``format`` is ``"safetensors"`` or ``"pickle"``; ``header_size`` is the JSON header's length (0 for
    a pickle); ``extras`` are a pickle's top-level numbers and strings (e.g. ``global_step``)."""
    path: Path
    format: str
    file_size: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=dict)
    header_size: int = 0
    extras: Mapping[str, object] = field(default_factory=dict)


SHOWN = 80  # characters of a name, shape or offset list a message quotes


def _fail(path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def _q(value) -> str:
    """``value`` (a name, a shape, offsets from the file) quoted for a message, cut to SHOWN characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def _count(n: int) -> str:
    return f"{n:,}" if n < OFFSET_CAP else "more than 2^64"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _span(dtype: str, shape: tuple[int, ...]) -> Optional[int]:
    """Bytes a tensor of ``dtype`` and ``shape`` takes (capped just above the format's 64-bit offsets, so a
    hostile shape cannot make the product huge), or None when sub-byte elements end mid-byte."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n = min(n * d, OFFSET_CAP)
    bits = n * DTYPES[dtype][0]
    return bits // 8 if bits % 8 == 0 else None


def _no_duplicates(path):
    def hook(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise _fail(path, f"the header lists {_q(k)} twice; the file is damaged or was not written "
                                  "by a safetensors writer")
            seen[k] = v
        return seen
    return hook


def _parse(path, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"the header is not UTF-8 text (byte {e.start}); not a safetensors file") from None
    if not text.startswith("{"):
        raise _fail(path, "the header does not start with '{'; not a safetensors file")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise _fail(path, f"the header is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                          "the file is damaged or not a safetensors file") from None
    except RecursionError:
        raise _fail(path, "the header is not valid JSON (nested too deeply)") from None
    except CheckpointError:
        raise
    except ValueError as e:  # an integer literal beyond Python's digit limit
        raise _fail(path, f"the header is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise _fail(path, "the header is not a JSON object; not a safetensors file")
    return data


def _metadata(path, value) -> dict[str, str]:
    if value is None:  # the reference reader takes null as "no metadata"
        return {}
    if not isinstance(value, dict):
        raise _fail(path, '"__metadata__" must be an object of strings')
    for k, v in value.items():
        if not isinstance(v, str):
            raise _fail(path, f'"__metadata__" entry {_q(k)} is not a string; the format allows only strings')
    return value


def _tensor(path, name: str, entry) -> TensorInfo:
    if not isinstance(entry, dict) or not all(f in entry for f in TENSOR_FIELDS):
        raise _fail(path, f"tensor {_q(name)}: its entry must be an object with {', '.join(TENSOR_FIELDS)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(path, f"tensor {_q(name)} has unknown dtype {_q(dtype)} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {_q(name)}: shape must be a list of non-negative integers, got {_q(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor {_q(name)}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                          f"got {_q(offsets)}")
    shape_t = tuple(shape)
    need = _span(dtype, shape_t)
    if need is None:
        raise _fail(path, f"tensor {_q(name)}: {dtype} elements of shape {_q(shape)} do not fill whole bytes")
    if need != offsets[1] - offsets[0]:
        raise _fail(path, f"tensor {_q(name)}: {dtype} of shape {_q(shape)} needs {_count(need)} bytes but its "
                          f"data_offsets {_q(offsets)} span {_count(offsets[1] - offsets[0])}; the header lies about "
                          "its sizes")
    return TensorInfo(dtype, shape_t, (offsets[0], offsets[1]))


def _check_layout(path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    """The spans must tile the byte buffer [0, data_size) exactly: no hole, no overlap, no excess."""
    order = sorted(tensors.items(), key=lambda item: item[1].offsets)
    end, last = 0, None
    for name, info in order:
        begin, stop = info.offsets
        if begin < end:
            raise _fail(path, f"tensors {_q(last)} and {_q(name)} overlap (data bytes {_count(begin)}.."
                              f"{_count(end)}); the header lies about its offsets")
        if begin > end:
            where = f"after tensor {_q(last)}" if last is not None else "at the start of the data"
            raise _fail(path, f"{_count(begin - end)} bytes {where} belong to no tensor; the format allows no holes")
        end, last = stop, name
    if end > data_size:
        raise _fail(path, f"truncated: the header's tensors need {_count(end)} bytes of data but the file holds "
                          f"{data_size:,}; download it again")
    if end < data_size:
        raise _fail(path, f"{data_size - end:,} bytes after the last tensor belong to no tensor; the header "
                          "does not describe the whole file")


def read_safetensors_header(path: str | os.PathLike) -> CheckpointHeader:
    """The validated header of the safetensors file ``path``; its tensor data is never read."""
    p = Path(path)
    with open_regular(p, CheckpointError) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _fail(p, f"{size} bytes is too short for a safetensors file (it starts with an 8-byte "
                           "header length)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0:
            raise _fail(p, "its header length is 0; not a safetensors file")
        if n > MAX_HEADER_SIZE:
            raise _fail(p, f"its first 8 bytes give a header length of {n:,} bytes, more than the format's "
                           f"limit of {MAX_HEADER_SIZE:,}; not a safetensors file")
        if 8 + n > size:
            raise _fail(p, f"truncated: the header length says {n:,} bytes but only {size - 8:,} follow; "
                           "download it again")
        try:
            raw = f.read(n)
        except OSError as e:
            raise _fail(p, f"cannot read ({e.strerror or e})") from None
    data = _parse(p, raw)
    metadata = _metadata(p, data.pop("__metadata__")) if "__metadata__" in data else {}
    tensors = {name: _tensor(p, name, entry) for name, entry in data.items()}
    _check_layout(p, tensors, size - 8 - n)
    _library_agrees(p)
    return CheckpointHeader(p, "safetensors", size, tensors, metadata, n)


def _library_agrees(path: Path) -> None:
    """The safetensors library opens the file too (it maps the file and parses the header; no tensor
    is read), so a file accepted here is one the loaders will accept."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(path, f"the safetensors library refuses it ({detail[:SHOWN]})") from None


def looks_like_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts as a safetensors file does: a plausible header length, then ``{``."""
    try:
        with open_regular(path, CheckpointError) as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except (CheckpointError, OSError):
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= min(MAX_HEADER_SIZE, size - 8) and head[8:9] == b"{"


def read_header(path: str | os.PathLike, allow_pickle: bool = False) -> CheckpointHeader:
    """The header of a single-file checkpoint: a ``.safetensors`` file, or — only with ``allow_pickle``
    — a pickled ``.ckpt``/``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True, mmap=True)``.

    A pickle-named file that is in fact safetensors is read as safetensors. Raises ``CheckpointError``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or looks_like_safetensors(p):
        return read_safetensors_header(p)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            open_regular(p, CheckpointError).close()  # a missing file or a FIFO says so first
            raise _fail(p, "a pickled checkpoint can run code when it is opened; convert it to .safetensors, "
                           "or pass --allow-pickle to read it with torch.load(weights_only=True)")
        from .pickled import read_pickled_header
        return read_pickled_header(p)
    open_regular(p, CheckpointError).close()
    raise _fail(p, f"not a checkpoint the studio reads (expected {', '.join(SAFETENSORS_SUFFIXES)}, or "
                   f"{', '.join(PICKLE_SUFFIXES)} with --allow-pickle)")
