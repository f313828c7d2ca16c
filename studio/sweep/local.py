"""The default executor: a pool of worker processes on this machine, no server to start.

Workers are started with the ``spawn`` context (a fresh interpreter: no forked torch thread pools
or CUDA state), each opens the model once (worker.py) and runs cells sent to it. At most two cells
per worker are in flight, so a kill loses little and results stream back as they finish. A worker
that dies (killed, out of memory) breaks the pool: the cells it had are put back in the queue and a
fresh pool is started; results that arrived are never run again. A worker whose parent is gone (the
sweep was killed) exits by itself within a second.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Optional

from .worker import CellWorker

MAX_POOL_RESTARTS = 3
IN_FLIGHT_PER_WORKER = 2

_WORKER: Optional[CellWorker] = None


class SweepError(RuntimeError):
    """The sweep cannot go on (workers keep dying, the cluster is gone); one line."""


def _watch_parent(ppid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != ppid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init(config: dict, ppid: int) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's: it stops the pool, no tracebacks here
    _watch_parent(ppid)
    _WORKER = CellWorker(config)


def _run(key: str, recipe: dict) -> dict:
    return _WORKER.run(key, recipe)


def _ready() -> int:
    return os.getpid()


def _preflight(items: list) -> Optional[tuple]:
    return _WORKER.preflight(items)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weights_bytes(model: str) -> int:
    """The size of a model's weight files (0 for the closed-form gmm)."""
    from ..session.provenance import model_folder

    folder = model_folder(model)
    if folder is None:
        return 0
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt") and p.is_file())


def default_workers(model: str, device: str, cells: int) -> int:
    """One per core, fewer when the model's copies would not fit in memory (about 0.6 GB for an
    interpreter with torch plus three times the weights), one on a GPU, never more than the cells."""
    if device != "cpu":
        import torch

        if device.startswith(("cuda", "mps")) or (device == "auto" and torch.cuda.is_available()):
            return 1
    n = cores()
    avail = available_memory()
    if avail:
        per_worker = 600 * 2**20 + 3 * weights_bytes(model)
        n = min(n, max(1, int(0.7 * avail // per_worker)))
    return max(1, min(n, cells))


def default_threads(workers: int) -> int:
    """torch threads per worker: the cores shared out, capped by OMP_NUM_THREADS when it is set."""
    n = max(1, cores() // max(workers, 1))
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        cap = 0
    return min(n, cap) if cap > 0 else n


class LocalPool:
    """``--workers N`` processes on this machine."""

    name = "local"

    def __init__(self, config: dict, workers: int, threads: Optional[int] = None):
        self.workers = max(1, int(workers))
        self.config = dict(config, threads=threads or default_threads(self.workers))
        self.replaced = 0
        self._pool: Optional[cf.ProcessPoolExecutor] = None

    def describe(self) -> str:
        return f"{self.workers} local worker process{'es' if self.workers != 1 else ''}, " \
               f"{self.config['threads']} thread{'s' if self.config['threads'] != 1 else ''} each"

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                            initargs=(self.config, os.getpid()))
        # a spawn pool starts a process per task submitted while none is idle: start them all now, so
        # every worker opens the model at once instead of the second one starting after the first cells
        for _ in range(self.workers):
            self._pool.submit(_ready)

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        kill = getattr(pool, "kill_workers", None)  # Python ≥ 3.14
        if kill is not None:
            try:
                kill()
            except Exception:
                pass
        for p in procs:
            try:
                p.kill()
            except (OSError, AttributeError, ValueError):
                pass
        for p in procs:
            try:
                p.join(5)
            except (OSError, AssertionError, ValueError):
                pass

    def preflight(self, items: list) -> Optional[tuple]:
        if self._pool is None:
            self._start()
        try:
            return self._pool.submit(_preflight, items).result()
        except BrokenProcessPool:
            raise SweepError("the worker process died while opening the model (out of memory? a script that "
                             "starts a sweep needs `if __name__ == \"__main__\":`)") from None

    def run(self, tasks: list[tuple[str, dict]], on_result: Callable[[dict], None]) -> None:
        """Run every (key, recipe dict); ``on_result(payload)`` in this thread as each finishes."""
        queue = collections.deque(tasks)
        restarts = 0
        while queue:
            if self._pool is None:
                self._start()
            inflight: dict[cf.Future, tuple[str, dict]] = {}
            broken = False
            try:
                while queue or inflight:
                    while queue and len(inflight) < IN_FLIGHT_PER_WORKER * self.workers:
                        key, recipe = queue.popleft()
                        inflight[self._pool.submit(_run, key, recipe)] = (key, recipe)
                    done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        task = inflight.pop(f)
                        try:
                            payload = f.result()
                        except BrokenProcessPool:
                            queue.appendleft(task)
                            broken = True
                            continue
                        on_result(payload)
                    if broken:
                        break
            except BrokenProcessPool:  # submit() on a pool that just broke
                broken = True
            if not broken:
                return
            for f, task in inflight.items():  # a result that arrived before the break is kept
                if f.done() and not f.cancelled() and f.exception() is None:
                    on_result(f.result())
                else:
                    queue.appendleft(task)
            restarts += 1
            self.replaced += 1
            self._stop()
            if restarts > MAX_POOL_RESTARTS:
                raise SweepError(f"worker processes died {restarts} times; the machine may be out of memory "
                                 "(try fewer --workers)")

    def close(self) -> None:
        self._stop()
