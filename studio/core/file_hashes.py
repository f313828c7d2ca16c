"""SHA-256 of weight files, computed once per file version and cached in the user's cache folder.

Weights are large (hundreds of MB to GB) and are hashed for two reasons: a model folder's
``SHA256SUMS`` is checked on every load, and a recipe records the fingerprint of the weights it
was made with. Hashing the same unchanged file again would cost seconds each time, so digests are
kept in ``<user cache>/sampling-studio/sha256.json``, keyed by the resolved path and valid only
while the file's size, modification time (ns), inode and change time are the ones seen when it
was hashed: any write, copy over, rename into place or ``touch`` makes the studio hash it again.

Hashing reads 1 MiB at a time and calls ``cancel.check()`` between chunks, so a window closing
while a model loads stops it promptly.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from . import cancel
from .file_reading import FileReadError, open_regular, read_json

CACHE_NAME = "sha256.json"
MAX_ENTRIES = 1024
CHUNK = 1 << 20


def user_cache_dir() -> Path:
    """``$STUDIO_CACHE_DIR``, else the platform's per-user cache folder + ``sampling-studio``."""
    if os.environ.get("STUDIO_CACHE_DIR"):
        return Path(os.environ["STUDIO_CACHE_DIR"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sampling-studio"


def sha256_file(path: str | os.PathLike, error: type[Exception] = FileReadError) -> str:
    """Hex SHA-256 of the regular file ``path`` (a FIFO or device is refused: it could never end)."""
    h = hashlib.sha256()
    with open_regular(path, error) as f:
        while True:
            cancel.check()
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _cache_path() -> Path:
    return user_cache_dir() / CACHE_NAME


def _load_cache() -> dict:
    try:
        data = read_json(_cache_path(), limit=4 << 20)
    except (FileReadError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(cache: dict) -> None:
    """Write the cache atomically; a cache that cannot be written only costs a re-hash later."""
    folder = _cache_path().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CACHE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(cache, f)
            os.replace(tmp, _cache_path())
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        pass


def cached_sha256(path: str | os.PathLike, error: type[Exception] = FileReadError) -> str:
    """SHA-256 of ``path``, from the cache when the file is unchanged since it was last hashed."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{path}: file is missing") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    key = str(p)
    cache = _load_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == _stamp(st) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(p, error)
    cache.pop(key, None)
    cache[key] = {"stamp": _stamp(st), "sha256": digest}
    while len(cache) > MAX_ENTRIES:  # oldest first (dicts keep insertion order; a re-hash moves to the end)
        cache.pop(next(iter(cache)))
    _save_cache(cache)
    return digest


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def weight_files(folder: Path, max_depth: int = 3, max_files: int = 256) -> list[Path]:
    """The weight files under ``folder`` (safetensors and opt-in pickles), sorted, regular files only."""
    folder = Path(folder)
    out: list[Path] = []
    root_depth = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder):
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix not in WEIGHT_SUFFIXES or not p.is_file():
                continue
            out.append(p)
            if len(out) >= max_files:
                return sorted(out)
    return sorted(out)


def folder_fingerprint(folder: str | os.PathLike, error: type[Exception] = FileReadError) -> dict[str, str]:
    """{path relative to ``folder``: SHA-256} of every weight file in a model folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): cached_sha256(p, error) for p in weight_files(folder)}


def fingerprint_changes(recorded: dict, current: dict) -> Optional[str]:
    """One line saying how ``current`` weights differ from ``recorded`` ones, or None if they match."""
    if recorded == current:
        return None
    changed = sorted(k for k in recorded.keys() & current.keys() if recorded[k] != current[k])
    gone = sorted(recorded.keys() - current.keys())
    new = sorted(current.keys() - recorded.keys())
    parts = []
    if changed:
        k = changed[0]
        parts.append(f"{k} changed (SHA-256 {str(recorded[k])[:12]}… then, {current[k][:12]}… now)"
                     + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))
    if gone:
        parts.append(f"{gone[0]} is gone" + (f" and {len(gone) - 1} more" if len(gone) > 1 else ""))
    if new:
        parts.append(f"{new[0]} is new" + (f" and {len(new) - 1} more" if len(new) > 1 else ""))
    return "; ".join(parts)
