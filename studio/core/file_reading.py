"""Reading the small files the studio trusts nothing about: bounded, regular files only.

Every configuration file, recipe, checksum list and class-name list is read through
``read_limited``: the path must name a regular file (a FIFO, a socket or a device such as
``/dev/zero`` — directly or through a symbolic link — is refused before a byte is read, since
reading one could block or never end), and no more than ``limit`` bytes are read (a larger file
is refused with its size). Opening uses ``O_NONBLOCK`` so that even opening a FIFO cannot wait
for a writer. ``inside_folder`` confines names taken from a file (``SHA256SUMS`` entries) to
regular files under one folder, after resolving ``..`` and links.

Failures raise ``error`` (by default ``FileReadError``) with one line naming the file.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

CONFIG_LIMIT = 1 << 20  # bytes: a diffusers config with explicit betas is ~30 KB
RECIPE_LIMIT = 4 << 20  # bytes: a recipe embeds its parents' recipes when it is a branch


class FileReadError(ValueError):
    """A file that cannot be read safely; the message names the file and the problem."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def open_regular(path: str | os.PathLike, error: type[Exception] = FileReadError):
    """Open ``path`` for binary reading if it is a regular file (links followed); else raise ``error``."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise error(f"{p}: file is missing") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, not a file") from None
    except OSError as e:
        raise error(f"{p}: cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: plain blocking reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path: str | os.PathLike, limit: int = CONFIG_LIMIT, error: type[Exception] = FileReadError) -> bytes:
    """The bytes of the regular file ``path``, refused if it holds more than ``limit`` bytes."""
    with open_regular(path, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:
        size = os.stat(path).st_size
        raise error(f"{path}: {_size(size)} is too large for this kind of file (at most {_size(limit)}); "
                    "is it the right file?")
    return data


def read_text(path: str | os.PathLike, limit: int = CONFIG_LIMIT, error: type[Exception] = FileReadError) -> str:
    data = read_limited(path, limit, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None


def parse_json(text: str, where: str, error: type[Exception] = FileReadError) -> Any:
    """``json.loads`` whose failures (syntax, absurd nesting, huge integers) are one line naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise error(f"{where}: not valid JSON ({str(e).splitlines()[0]})") from None


def read_json(path: str | os.PathLike, limit: int = CONFIG_LIMIT, error: type[Exception] = FileReadError) -> Any:
    """The JSON value in ``path`` (a bounded, regular-file read)."""
    return parse_json(read_text(path, limit, error), str(path), error)


def inside_folder(folder: Path, name: str, error: type[Exception] = FileReadError, listed_in: str = "") -> Path:
    """``folder / name`` if it resolves (through ``..`` and links) to a regular file inside ``folder``."""
    where = f" listed in {listed_in}" if listed_in else ""
    if not name or "\x00" in name:
        raise error(f"{folder}: an empty or invalid file name{where}")
    if os.path.isabs(name):
        raise error(f"{folder}: {name!r}{where} is an absolute path; entries must name files inside the folder")
    root = folder.resolve()
    target = (folder / name)
    lexical = os.path.normpath(name)
    if lexical == os.pardir or lexical.startswith(os.pardir + os.sep):
        raise error(f"{target}{where} points outside the folder; refusing to read it")
    try:
        resolved = target.resolve(strict=True)
    except FileNotFoundError:
        raise error(f"{target}{where} is missing") from None
    except (OSError, RuntimeError) as e:  # a link loop
        raise error(f"{target}{where}: cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
    if resolved != root and root not in resolved.parents:
        raise error(f"{target}{where} points outside the folder (to {resolved}); refusing to read it")
    try:
        st = resolved.stat()
    except OSError as e:
        raise error(f"{target}{where}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{target}{where} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
    return resolved
