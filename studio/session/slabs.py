"""Long-lived per-step arrays carved from anonymous memory maps, outside malloc's heap.

A run keeps small blocks every step (frames, state) while the network allocates and frees large
temporaries. If the kept blocks came from the C heap they would sit between the temporaries'
free space and pin it, so the heap (resident memory) would grow with the run. Carving them from
slabs the store maps itself keeps the heap free for the temporaries, which lets the process keep
that free memory for reuse (studio/runtime.py) without the heap growing; a slab is unmapped when
the last array viewing it is gone.

The maps are private (a private anonymous page faults in for less than a shared one, which is
shared memory) and, on Linux, marked for transparent huge pages, so kept arrays fault in 2 MiB
at a time instead of 4 KiB, far fewer faults per kept step (``python -m benchmarks.bench_bookkeeping``,
slab_maps; figures in benchmarks/RESULTS.md, section 13).
"""
from __future__ import annotations

import mmap

import numpy as np

ALIGN = 64  # bytes, a cache line
HUGE_PAGE = 2 << 20  # bytes (x86-64 and arm64 transparent huge pages)


def anonymous_map(n: int) -> mmap.mmap:
    """``n`` zeroed bytes of private anonymous memory, huge-page backed where the kernel allows."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: anonymous maps take no flags
        return mmap.mmap(-1, n)
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if n >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP disabled ("never") or unsupported: 4 KiB pages, same contents
            pass
    return m


class Slabs:
    """Hands out zero-initialised numpy arrays from ``slab_bytes`` anonymous maps (bigger ones get their own)."""

    def __init__(self, slab_bytes: int = 8 << 20):
        self.slab_bytes = slab_bytes
        self._slab: mmap.mmap | None = None
        self._offset = 0
        self.mapped_bytes = 0

    def _map(self, n: int) -> mmap.mmap:
        self.mapped_bytes += n
        return anonymous_map(n)

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        size = max(count * dtype.itemsize, 1)
        if size > self.slab_bytes:
            return np.frombuffer(self._map(size), dtype, count).reshape(shape)
        if self._slab is None or self._offset + size > self.slab_bytes:
            self._slab, self._offset = self._map(self.slab_bytes), 0
        out = np.frombuffer(self._slab, dtype, count, self._offset).reshape(shape)
        self._offset += -(-size // ALIGN) * ALIGN
        return out

    def copy(self, a: np.ndarray) -> np.ndarray:
        """A slab-backed copy of ``a``."""
        out = self.array(a.shape, a.dtype)
        out[...] = a
        return out
