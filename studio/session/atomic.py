"""The one way the studio writes outputs (the CLI's run folders and the window's exports).

A target (a folder or one or more files) is *reserved* before any work is done:

- its parent folder is created (permissions from the user's umask, like ``mkdir -p``);
- leftovers of studio processes that died there (``.NAME.partial-PID-…`` staging and
  ``.NAME.old-PID-…`` backups whose process is gone, e.g. after a SIGKILL) are removed;
- a lock (``.NAME.lock``, ``flock``) is taken, so two studio processes writing the same target
  cannot both succeed: the second fails at once with a message naming the target;
- the existing target is checked: a file is replaced only with ``overwrite``; a folder only when
  it is empty or with ``overwrite``.

Everything is written into staging names in the same folder and moved into place by ``commit``
with ``os.rename``/``os.link`` (atomic on one file system); without ``overwrite`` the move itself
refuses a target that appeared meanwhile. If anything fails, or the process is told to stop
(SIGTERM/SIGHUP raise ``Terminated`` through ``terminate_cleanly``), the staging is removed and
nothing half-made is left. Staging files and folders are created with mode 0666/0777 filtered by
the umask, so outputs are as readable as anything else the user makes (``tempfile`` would make
them 0600/0700).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: exclusive-create lock files instead
    fcntl = None


class OutputError(RuntimeError):
    """An output that cannot be written; one line naming the path and the problem."""


class TargetExists(OutputError):
    """The output exists and ``overwrite`` was not given; ``paths`` lists everything that would be replaced."""

    def __init__(self, paths: Sequence[Path], message: str):
        super().__init__(message)
        self.paths = list(paths)


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP); raised in the main thread so cleanups run."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


STAGING = re.compile(r"^\..+\.(?:partial|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (conservatively True where that cannot be told)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def sweep_stale(folder: Path, pattern: re.Pattern = STAGING) -> list[Path]:
    """Remove entries of ``folder`` matching ``pattern`` (group ``pid``) whose process is gone and
    that belong to this user; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or process_alive(int(m.group("pid"))):
            continue
        try:
            if uid is not None and entry.stat(follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        _remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def _staging_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else e.__class__.__name__)


# -- locking ----------------------------------------------------------------------------------------
class _Lock:
    """An exclusive, non-blocking lock on ``path`` (a lock file removed when released)."""

    def __init__(self, path: Path, what: Path):
        self.path, self.what, self.fd = path, what, None

    def acquire(self) -> None:
        for _ in range(20):
            try:
                if fcntl is None:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                else:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileExistsError:
                raise self._busy() from None
            except OSError as e:
                raise OutputError(f"{self.what}: cannot write here ({_reason(e)})") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    os.close(fd)
                    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise self._busy() from None
                    raise OutputError(f"{self.what}: cannot lock ({_reason(e)})") from None
                try:  # the holder before us may have removed the file after we opened it: lock the live one
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise self._busy()

    def _busy(self) -> OutputError:
        return OutputError(f"{self.what}: another studio process is writing it right now; wait for it to finish "
                           "or choose another output")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# -- reservations -----------------------------------------------------------------------------------
class Reservation:
    """A checked, locked claim on ``target`` (and ``companions`` beside it, e.g. a .recipe.json).

    Use as a context manager: ``stage_folder()`` / ``stage_file(path)`` give the names to write,
    ``commit()`` moves them into place; leaving the block without committing removes them."""

    def __init__(self, target: str | os.PathLike, overwrite: bool = False, folder: bool = False,
                 companions: Sequence[str | os.PathLike] = (), overwrite_hint: str = "allow overwriting"):
        self.target = Path(os.path.abspath(os.path.expanduser(os.fspath(target))))
        self.overwrite = overwrite
        self.overwrite_hint = overwrite_hint
        self.folder = folder
        self.companions = [Path(os.path.abspath(os.fspath(c))) for c in companions]
        self.parent = self.target.parent
        self._lock = _Lock(self.parent / f".{self.target.name}.lock", self.target)
        self._staged: dict[Path, Path] = {}  # target -> staging path
        self._held = False

    # -- claiming -------------------------------------------------------------------------------
    def __enter__(self) -> "Reservation":
        self._check_name()
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.parent}: cannot create the folder ({_reason(e)})") from None
        if not self.parent.is_dir():
            raise OutputError(f"{self.parent}: not a folder")
        if not os.access(self.parent, os.W_OK | os.X_OK):
            raise OutputError(f"{self.parent}: no permission to write in this folder")
        sweep_stale(self.parent)
        self._lock.acquire()
        self._held = True
        try:
            self.check()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.discard()
        finally:
            self.release()

    def release(self) -> None:
        if self._held:
            self._lock.release()
            self._held = False

    def _check_name(self) -> None:
        name = self.target.name
        if not name or name in (".", ".."):
            raise OutputError(f"{self.target}: give a file or folder name")
        if "\x00" in str(self.target):
            raise OutputError(f"{str(self.target)!r}: the name contains a NUL character")

    def check(self) -> None:
        """Refuse what would be overwritten without ``overwrite`` (folders: unless empty)."""
        t = self.target
        if self.folder and t.exists() and not t.is_dir():
            raise OutputError(f"{t}: exists and is not a folder; choose another output")
        for p in self.companions if self.folder else (t, *self.companions):
            if p.is_dir():
                raise OutputError(f"{p}: is a folder; choose a file name")
        existing = self.existing()
        if existing and not self.overwrite:
            what = "already exists and is not empty" if self.folder else "already exists"
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise TargetExists(existing, f"{existing[0]}: {what}{more}; choose another name or {self.overwrite_hint}")

    def existing(self) -> list[Path]:
        """The targets that exist now (what ``overwrite`` would replace)."""
        folder = [self.target] if self.folder and self.target.is_dir() and any(self.target.iterdir()) else []
        files = self.companions if self.folder else [self.target, *self.companions]
        return folder + [p for p in files if p.exists()]

    # -- staging ----------------------------------------------------------------------------------
    def stage_folder(self) -> Path:
        """A new empty staging folder for the target folder (mode 0777 & ~umask)."""
        tmp = _staging_name(self.target, "partial")
        try:
            os.mkdir(tmp, 0o777)
        except OSError as e:
            raise OutputError(f"{self.target}: cannot write ({_reason(e)})") from None
        self._staged[self.target] = tmp
        return tmp

    def stage_file(self, target: Optional[Path] = None) -> Path:
        """An empty staging file for ``target`` (default: the main target), mode 0666 & ~umask;
        writers open it again by name (keeping its mode)."""
        target = Path(os.path.abspath(target)) if target is not None else self.target
        tmp = _staging_name(target, "partial")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as e:
            raise OutputError(f"{target}: cannot write ({_reason(e)})") from None
        self._staged[target] = tmp
        return tmp

    def discard(self) -> None:
        for tmp in self._staged.values():
            _remove(tmp)
        self._staged.clear()

    # -- committing -------------------------------------------------------------------------------
    def commit(self) -> None:
        """Move everything staged into place (re-checking, under the lock, that nothing appeared)."""
        try:
            for target, tmp in list(self._staged.items()):
                if tmp.is_dir():
                    self._commit_folder(target, tmp)
                else:
                    self._commit_file(target, tmp)
                del self._staged[target]
        except OSError as e:
            raise OutputError(f"{self.target}: cannot write ({_reason(e)}); nothing was written") from None

    def _commit_folder(self, target: Path, tmp: Path) -> None:
        if not (target.exists() or target.is_symlink()):
            try:
                os.rename(tmp, target)
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        if target.is_dir() and not target.is_symlink() and (self.overwrite or not any(target.iterdir())):
            old = _staging_name(target, "old")
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous one back
                raise
            _remove(old)
            return
        raise OutputError(f"{target}: appeared while this output was being made; nothing was replaced "
                          "(choose another output or allow overwriting)")

    def _commit_file(self, target: Path, tmp: Path) -> None:
        if self.overwrite:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)  # fails if the target exists: no silent replacement
        except FileExistsError:
            raise OutputError(f"{target}: appeared while this output was being made; nothing was replaced") from None
        except OSError:  # a file system without hard links: check, then rename
            if target.exists():
                raise OutputError(f"{target}: appeared while this output was being made; nothing was replaced") from None
            os.replace(tmp, target)
            return
        os.unlink(tmp)


def precheck(target: str | os.PathLike, overwrite: bool = False, folder: bool = False,
             companions: Sequence[str | os.PathLike] = ()) -> None:
    """The reservation's checks without taking it: fail before slow work (composing frames) when the
    output is sure to be refused. ``TargetExists`` lists what ``overwrite`` would replace."""
    r = Reservation(target, overwrite, folder, companions)
    r._check_name()
    r.check()


@contextlib.contextmanager
def _nothing_written_on_error(r: "Reservation"):
    """A failure while staging becomes one OutputError line (the reservation removes what was staged)."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, ValueError) as e:
        raise OutputError(f"{r.target}: cannot write ({_reason(e)}); nothing was written") from None


def write_folder(target: str | os.PathLike, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Reserve ``target``, call ``fill(staging_folder)``, commit; returns the target."""
    with Reservation(target, overwrite, folder=True) as r:
        tmp = r.stage_folder()
        with _nothing_written_on_error(r):
            fill(tmp)
        r.commit()
        return r.target


def write_files(writers: dict, overwrite: bool = False) -> Path:
    """Reserve every path of ``writers`` ({path: write(staging_path_str)}), write them all, then move
    them into place; returns the first path."""
    paths = [Path(p) for p in writers]
    with Reservation(paths[0], overwrite, companions=paths[1:]) as r:
        with _nothing_written_on_error(r):
            for path, write in zip(paths, writers.values()):
                write(str(r.stage_file(path)))
        r.commit()
        return r.target


# -- termination ------------------------------------------------------------------------------------
def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_cleanly(signals: Sequence[int] = ("SIGTERM", "SIGHUP")) -> Iterator[None]:
    """Within this block (main thread only), SIGTERM and SIGHUP raise ``Terminated`` so that every
    ``finally`` runs: staging folders are removed, locks released, spill caches deleted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in signals:
        sig = getattr(signal, name, None) if isinstance(name, str) else name
        if sig is None:
            continue
        previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
