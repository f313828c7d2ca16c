"""Reading a pickled checkpoint (``.ckpt``/``.pt``/``.pth``/``.bin``) as a header, when the user opts in.

Unpickling can run arbitrary code, so the studio only ever calls
``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``: torch's restricted unpickler,
which builds tensors, containers and numbers and refuses any other global; ``mmap=True`` maps the
tensor data instead of reading it, so only the pickle itself is read. That needs PyTorch's zip
format (``torch.save`` since 1.6); the legacy tar/pickle format cannot be mapped and is refused.

Lightning checkpoints nest the weights under ``"state_dict"`` (as diffusers' ``load_single_file_checkpoint``
unwraps them); the numbers and strings beside it (``global_step``, ``epoch``) are kept as ``extras``.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from studio.core.file_reading import open_regular
from studio.core.loading import torch_load_weights_only

from .header import CheckpointError, CheckpointHeader, TensorInfo

TORCH_TO_SAFETENSORS = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
    torch.float64: "F64", torch.complex64: "C64",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"), ("float8_e5m2", "F8_E5M2"),
                     ("float8_e4m3fn", "F8_E4M3"), ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
                     ("float8_e5m2fnuz", "F8_E5M2FNUZ"), ("float8_e8m0fnu", "F8_E8M0")):
    if hasattr(torch, _name):
        TORCH_TO_SAFETENSORS[getattr(torch, _name)] = _code


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def _load_problem(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in text.replace(" ", "_").lower() or \
            "Unsupported global" in text:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        objects = f" ({match.group(1)})" if match else ""
        return (f"holds Python objects besides tensors{objects}, which torch.load(weights_only=True) refuses "
                "to build; convert it to .safetensors with a tool you trust")
    if "mmap" in text and "_use_new_zipfile_serialization" in text:
        return ("is in PyTorch's legacy (pre-1.6) format, which cannot be memory-mapped; convert it to "
                ".safetensors")
    return f"cannot be read as a PyTorch checkpoint ({_first_line(e)}); is it damaged or incomplete?"


def read_pickled_header(path: str | Path) -> CheckpointHeader:
    """Names, dtypes and shapes of the tensors in a pickled checkpoint (weights mapped, not read)."""
    p = Path(path)
    with open_regular(p, CheckpointError) as f:  # refuses FIFOs and devices before torch opens the name
        size = os.fstat(f.fileno()).st_size
    try:
        obj = torch_load_weights_only(p, mmap=True)  # torch's warnings kept off stderr
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError,
            AttributeError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: {_load_problem(e)}") from None
    extras: dict[str, object] = {}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        extras.update({k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (int, float, str))
                       and not isinstance(v, bool)})
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a dictionary of tensors")
    tensors = {}
    for name, value in obj.items():
        if not (isinstance(name, str) and isinstance(value, torch.Tensor)):
            continue
        code = TORCH_TO_SAFETENSORS.get(value.dtype)
        if code is None:
            raise CheckpointError(f"{p}: tensor {name!r} has dtype {value.dtype}, which the studio does not read")
        tensors[name] = TensorInfo(code, tuple(value.shape))
    if not tensors:
        raise CheckpointError(f"{p}: holds no tensors")
    return CheckpointHeader(p, "pickle", size, tensors, {}, 0, extras)
