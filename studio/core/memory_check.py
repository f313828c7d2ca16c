"""Refusing a network that cannot fit before torch tries to allocate it.

A model folder's ``config.json`` decides the network's size. A config asking for huge channel
counts or a huge sample size would otherwise make torch allocate until the process is killed, or
swap the machine to a standstill. The network is first built on torch's ``meta`` device (shapes
only, no memory), its parameters counted, and the bytes it needs compared with the memory
available now (RAM without swap, within any cgroup limit; on a GPU, its free memory).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

# fields that multiply the number of modules; building millions of (meta) modules would itself take minutes
MODULE_COUNT_LIMITS = {"layers_per_block": 64, "block_out_channels": 16, "down_block_types": 16,
                       "up_block_types": 16}
MAX_SAMPLE_SIZE = 1 << 16


def human_bytes(n: float) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> Optional[int]:
    """Bytes left under a cgroup v2 memory limit, or None when there is no limit."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((base / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def available_cpu_memory() -> Optional[int]:
    """Memory a new allocation can take without swapping, in bytes (None if unknown)."""
    candidates = [_meminfo_available(), _cgroup_room()]
    if candidates[0] is None:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def available_device_memory(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type == "cpu":
        return available_cpu_memory()
    return None


def check_config_counts(config: dict, where: str, error: type[Exception]) -> None:
    """Refuse values that would make even building the network on the meta device take forever."""
    for key, most in MODULE_COUNT_LIMITS.items():
        v = config.get(key)
        n = len(v) if isinstance(v, (list, tuple)) else v
        if isinstance(n, int) and not isinstance(n, bool) and n > most:
            raise error(f"{where}: {key} asks for {n} (at most {most}); this is not a network the studio can build")
    s = config.get("sample_size")
    sizes = s if isinstance(s, (list, tuple)) else [s]
    for v in sizes:
        if isinstance(v, int) and not isinstance(v, bool) and not 1 <= v <= MAX_SAMPLE_SIZE:
            raise error(f"{where}: sample_size {v} is outside 1..{MAX_SAMPLE_SIZE}")


def count_parameters(build: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device (no memory is used)."""
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def check_fits(n_params: int, config: dict, device: torch.device, dtype: torch.dtype, where: str,
               error: type[Exception], available: Optional[Callable[[torch.device], Optional[int]]] = None) -> None:
    """Refuse a network of ``n_params`` parameters (built in float32 on the CPU, then moved to
    ``device`` in ``dtype``) or a first feature map larger than the memory available."""
    available = available or available_device_memory
    cpu_free = available(torch.device("cpu"))
    build_bytes = n_params * 4  # diffusers builds in float32 before any cast
    if cpu_free is not None and build_bytes > cpu_free:
        raise error(f"{where}: the config asks for a network of {n_params:,} parameters ({human_bytes(build_bytes)} "
                    f"in float32) but only {human_bytes(cpu_free)} of memory is available; "
                    "this folder's config is wrong or the model is too large for this machine")
    dev_free = cpu_free if device.type == "cpu" else available(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" and dev_free is not None and n_params * itemsize > dev_free:
        raise error(f"{where}: the network's {n_params:,} parameters need {human_bytes(n_params * itemsize)} in "
                    f"{str(dtype).replace('torch.', '')} but {device} has {human_bytes(dev_free)} free; "
                    "use a smaller dtype or --device cpu")
    s = config.get("sample_size")
    h, w = (s if isinstance(s, (list, tuple)) and len(s) == 2 else (s, s))
    chans = config.get("block_out_channels") or [0]
    if all(isinstance(v, int) for v in (h, w)) and isinstance(chans[0], int) and dev_free is not None:
        fmap = int(chans[0]) * int(h) * int(w) * itemsize  # the first convolution's output, one image
        if fmap > dev_free:
            raise error(f"{where}: sample_size {h}x{w} with {chans[0]} channels needs {human_bytes(fmap)} for one "
                        f"feature map of one image but only {human_bytes(dev_free)} is available")
