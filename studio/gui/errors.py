"""Exceptions nothing else handled, while the window runs: logged in full, shown as one line.

A slot that raises (or a Qt virtual method such as ``dropEvent``) would otherwise print a
traceback on the terminal the user may not be looking at, and show nothing in the window.
``install_excepthook`` routes ``sys.excepthook`` and ``threading.excepthook`` to the window:
the traceback goes to ``<user cache>/sampling-studio/studio.log``, the window's error bar shows
one line naming the problem and the log. ``Terminated`` (SIGTERM while the window runs) closes
the window instead, after it has unwound whatever was being written.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import Callable

from .worker import one_line

LOG_NAME = "studio.log"
log = logging.getLogger("studio.gui")


def log_path() -> Path:
    from ..core.file_hashes import user_cache_dir

    return user_cache_dir() / LOG_NAME


def _file_handler() -> logging.Handler | None:
    path = log_path()
    for h in list(log.handlers):
        if isinstance(h, logging.handlers.RotatingFileHandler):
            if h.baseFilename == str(path.absolute()):
                return h
            log.removeHandler(h)  # the cache folder moved ($STUDIO_CACHE_DIR changed)
            h.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        h = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=1, encoding="utf-8")
    except OSError:
        return None
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False  # the log file, not the terminal
    return h


def log_exception(exc_type, exc, tb) -> None:
    if _file_handler() is None:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    log.error("unhandled exception", exc_info=(exc_type, exc, tb))


def log_shown(message: str) -> None:
    """Keep what the window's error bar showed in the log too (a user can send the log)."""
    if _file_handler() is not None:
        log.info("shown: %s", message)


def one_line_report(exc: BaseException) -> str:
    return f"Unexpected error: {one_line(exc)} (the details are in {log_path()})"


def install_excepthook(report: Callable[[type, BaseException, object], None],
                       on_terminated: Callable[[], None]) -> Callable[[], None]:
    """Send unhandled exceptions of any thread to ``report`` (called on the thread that raised: the
    window passes a queued signal's ``emit``); returns a function restoring the previous hooks."""
    from ..session.atomic import Terminated

    previous_sys, previous_thread = sys.excepthook, threading.excepthook

    def sys_hook(exc_type, exc, tb):
        if issubclass(exc_type, Terminated):
            on_terminated()
            return
        if issubclass(exc_type, KeyboardInterrupt):
            on_terminated()
            return
        report(exc_type, exc, tb)

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        report(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook

    def restore() -> None:
        sys.excepthook, threading.excepthook = previous_sys, previous_thread

    return restore
