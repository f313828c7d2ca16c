"""Cooperative cancellation of long work in a thread (hashing weights, loading a model).

A caller that may want to stop a thread's work (the window closing while a model loads) runs it
inside ``cancellable(event)``; long loops call ``check()`` between chunks and raise ``Cancelled``
once the event is set. Outside ``cancellable`` (the CLI, tests, library use) ``check()`` does
nothing. Qt-free: the event is a plain ``threading.Event``.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_local = threading.local()


class Cancelled(Exception):
    """The work was cancelled by its caller (not an error of the input)."""


@contextlib.contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within this block, ``check()`` in this thread raises ``Cancelled`` once ``event`` is set."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = previous


def check() -> None:
    """Raise ``Cancelled`` if the current thread's work was cancelled."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("cancelled")
