"""Keep the C heap from holding freed memory during long runs (glibc only).

A run allocates large temporaries every step (the network's activations) between
small long-lived ones (the kept frames). With glibc's dynamic mmap threshold the
temporaries soon land on the heap, and the long-lived blocks pin it, so freed
memory is never returned: resident memory grows with the run although the live
data is bounded. A fixed threshold keeps every block ≥ 128 KiB in its own mapping,
returned to the system when freed (glibc mallopt(M_MMAP_THRESHOLD)).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
_done = False


def bound_heap(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold once per process; a no-op elsewhere. Returns whether it applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        _done = False
    return _done
