"""Rendered data sets kept as ``.npz`` files, so a training run renders its data once.

A file is keyed by what it holds and by a hash of the source files that render it, so a change to a
rendering recipe never silently reuses stale data. It is written under a temporary name and renamed
into place, so an interrupted write leaves no half-written cache; an unreadable one is rendered again.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def source_hash(*files: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the files' bytes, in order."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]


def cached_arrays(cache_dir, stem: str, names: Sequence[str],
                  render: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """``render()``'s arrays, named ``names``, read from ``cache_dir/stem.npz`` if it is there and
    readable, else rendered and written there; ``cache_dir=None`` renders without caching."""
    if cache_dir is None:
        return render()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{stem}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return tuple(z[name] for name in names)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
    arrays = render()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **dict(zip(names, arrays)))
    os.replace(tmp, path)
    return arrays
