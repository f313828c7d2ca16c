"""Process-wide tuning the studio applies when it owns the process (CLI, window, training).

Only the applications' entry points call :func:`own_process` (``studio`` and ``studio-gui``, in
``studio.cli.console_main`` and ``studio.gui.app.main``): importing the package, calling
``studio.cli.main(argv)`` or using a ``Run`` as a library changes nothing process-wide.

glibc's malloc gives large blocks back to the kernel as soon as they are freed (blocks above its
mmap threshold are unmapped; free space at the top of the heap above its trim threshold is
trimmed). A network's forward pass frees and re-allocates the same activation buffers every step,
so each step faults its pages in again. Raising both thresholds keeps that memory in the heap for
the next step (``python -m benchmarks.bench_allocator`` measures the page faults and step times
both ways). The cost: up to ``trim_mb`` of freed memory stays resident until it is reused or
released (:func:`release_free_memory`, which a long run in an owned process calls every
``RELEASE_EVERY`` steps). PyTorch's CPU performance guide gives the same advice in another form
(use jemalloc or tcmalloc).

Set ``STUDIO_MALLOC_TUNING=0`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_MB = 32
TRIM_MB = 32
RELEASE_EVERY = 100  # steps
TRAIN_MMAP_MB = 1024  # `studio train`: both thresholds; its activations are far above 32 MB

_owned = False  # set by own_process: an application owns this process


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, or None off Linux or where it cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator(mmap_mb: int = MMAP_MB, trim_mb: int = TRIM_MB) -> bool:
    """Raise glibc's mmap and trim thresholds (mallopt); True if applied.

    A no-op (False) off Linux, on a libc without ``mallopt`` (musl), or with
    ``STUDIO_MALLOC_TUNING=0`` in the environment."""
    mallopt = getattr(_libc(), "mallopt", None)
    if os.environ.get("STUDIO_MALLOC_TUNING", "1").strip() == "0" or mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_mb << 20)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mb << 20))


def own_process(mmap_mb: int = MMAP_MB, trim_mb: int = TRIM_MB) -> bool:
    """For an application's entry point only: this process is the studio's. Tunes the allocator
    (:func:`tune_allocator`; True if that applied) and lets long runs give free memory back every
    ``RELEASE_EVERY`` steps (:func:`release_periodically`)."""
    global _owned
    _owned = True
    return tune_allocator(mmap_mb, trim_mb)


def owns_process() -> bool:
    """Whether an entry point has called :func:`own_process` in this process."""
    return _owned


def release_periodically(steps_done: int) -> bool:
    """What a run calls after each step: every ``RELEASE_EVERY`` steps, in a process an entry point
    owns, :func:`release_free_memory`; elsewhere (a library user's process) nothing."""
    if not _owned or steps_done % RELEASE_EVERY:
        return False
    return release_free_memory()


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``); True if any were.

    Kept blocks can land between freed temporaries and pin them; in an owned process the trajectory
    store calls this every ``RELEASE_EVERY`` steps (:func:`release_periodically`), so resident memory
    follows live data over a long run. Not at the end of a run: what is free then is the network's
    activations, which the next run needs again, and it would fault them back in
    (``python -m benchmarks.profile_step_costs``, end_of_run_trim, measures that)."""
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False
