"""The default executor: a pool of worker processes on this machine, no server to start.

Workers are started with the ``spawn`` context (a fresh interpreter: no forked torch thread pools
or CUDA state), each opens the model once (worker.py) and runs cells sent to it. At most two cells
per worker are in flight, so a kill loses little and results stream back as they finish. A worker
that dies (killed, out of memory) breaks the pool: the cells it had are put back in the queue and a
fresh pool is started; results that arrived are never run again. A worker whose parent is gone (the
sweep was killed) exits by itself within a second, and the next local sweep unlinks the named
semaphores a killed sweep's pool leaves in /dev/shm (see "the pool's named semaphores" below).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import re
import secrets
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


# -- the pool's named semaphores --------------------------------------------------------------------
# A spawn pool's queues are locked by POSIX named semaphores (/dev/shm/sem.mp-…), unlinked at exit by
# multiprocessing's resource tracker. A sweep killed with SIGKILL as a process group takes the tracker
# with it, and the semaphores stay until the machine restarts. Each pool records their names under
# the user's cache folder, by the driver's process id; the next local sweep unlinks those of drivers
# that are gone, as the next run removes a killed run's staging folders.
POOLS_FOLDER = "sweep-pools"
_SEM_NAME = re.compile(r"^/mp-[A-Za-z0-9_]+$")  # multiprocessing's names, nothing else is unlinked


def _pools_folder() -> Path:
    from ..core.file_hashes import user_cache_dir

    return user_cache_dir() / POOLS_FOLDER


def semaphore_names(pool: cf.ProcessPoolExecutor) -> list[str]:
    """The names of the named semaphores behind a process pool's call and result queues."""
    from multiprocessing import synchronize

    names = []
    for queue in (getattr(pool, "_call_queue", None), getattr(pool, "_result_queue", None)):
        for v in vars(queue).values() if queue is not None else ():
            name = getattr(getattr(v, "_semlock", None), "name", None) if isinstance(v, synchronize.SemLock) else None
            if isinstance(name, str) and _SEM_NAME.match(name):
                names.append(name)
    return names


def record_semaphores(names: list[str]) -> None:
    """Add ``names`` to this process's record (a record that cannot be written only risks a leak)."""
    if not names:
        return
    path = _pools_folder() / f"{os.getpid()}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = _recorded(path)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(sorted(set(known) | set(names))), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _recorded(path: Path) -> list[str]:
    from ..core.file_reading import FileReadError, read_json

    try:
        names = read_json(path, 1 << 20)
    except FileReadError:
        return []
    return [n for n in names if isinstance(n, str) and _SEM_NAME.match(n)] if isinstance(names, list) else []


def remove_stale_semaphores() -> int:
    """Unlink the semaphores recorded by local sweeps whose process is gone; returns how many were left."""
    from ..session.atomic import process_alive

    try:
        from _multiprocessing import sem_unlink
    except ImportError:  # no named semaphores here (Windows)
        return 0
    folder = _pools_folder()
    try:
        records = [p for p in folder.iterdir() if p.suffix == ".json" and p.stem.isdigit()]
    except OSError:
        return 0
    removed = 0
    for record in records:
        if process_alive(int(record.stem)):
            continue
        for name in _recorded(record):
            try:
                sem_unlink(name)
                removed += 1
            except OSError:  # unlinked at its exit, as it should be
                pass
        try:
            record.unlink()
        except OSError:
            pass
    return removed


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

    def terminal(self, stream):
        """Where the driver's own lines go: ``stream`` (a local sweep has no cluster output to keep off it)."""
        return stream

    def describe(self) -> str:
        return f"{self.workers} local worker process{'es' if self.workers != 1 else ''}, " \
               f"{self.config['threads']} thread{'s' if self.config['threads'] != 1 else ''} each"

    def _start(self) -> None:
        remove_stale_semaphores()
        ctx = multiprocessing.get_context("spawn")
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                            initargs=(self.config, os.getpid()))
        record_semaphores(semaphore_names(self._pool))
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
                                 "(try fewer --workers), or a script that starts a sweep lacks "
                                 "`if __name__ == \"__main__\":`")

    def close(self) -> None:
        self._stop()
