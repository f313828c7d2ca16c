"""``--ray auto|ADDRESS``: the same sweep on a Ray cluster (Moritz et al. 2018, https://docs.ray.io).

Ray places the workers; the studio keeps no scheduler or RPC of its own. Each worker is a Ray actor
holding the opened model (worker.py's ``CellWorker``, the class the local pool runs), with
``--cpus-per-worker`` CPUs (its torch threads) and ``--gpus-per-worker`` GPUs. The driver keeps
at most two cells in flight per actor and takes results with ``ray.wait`` as they finish, so they
are written into the sweep's folder as they come (driver.py); the nodes need no shared disk, only
the studio installed and the model at the same path.

An actor that dies (its node lost, killed, out of memory) is replaced by a fresh one and the cells
it held are queued again; a result that had already arrived is kept, and the driver writes each
cell once, so nothing is lost or counted twice. ``ray`` is an optional dependency (the ``cluster``
extra); it is imported only here.
"""
from __future__ import annotations

import collections
import logging
import math
import secrets
from typing import Callable, Optional

from .local import SweepError
from .worker import CellWorker, one_line

IN_FLIGHT_PER_WORKER = 2
WAIT_S = 0.5  # ray.wait returns this often, so Ctrl-C and SIGTERM are seen promptly


def _ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray, which is not installed; install the cluster extra: "
                         "pip install -e '.[cluster]'") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on is one line at once (Ray itself retries for minutes)."""
    import socket

    if address == "local":
        return
    if address == "auto":  # what Ray would connect to: RAY_ADDRESS, else the last `ray start` on this machine
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # a Ray without it: let ray.init find the cluster
            return
        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as e:
            raise SweepError(f"--ray auto: no Ray cluster found on this machine ({one_line(e)}); start one with "
                             "`ray start --head` or give its address") from None
        if not found:
            return
        address = found
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address!r}: give auto or the cluster's address as HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SweepError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); is `ray start --head` "
                         "running there, and is the port open?") from None


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: the one this machine joined with ``ray start``) unless
    this process is connected already; returns whether this call connected (and so must disconnect)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SweepError(f"cannot reach a Ray cluster at {address!r} ({one_line(e)}); start one with "
                         "`ray start --head` (then `ray start --address HOST:PORT` on the other machines) "
                         "or give its address") from None
    return True


class RayPool:
    """One Ray actor per worker; replaced when it dies."""

    name = "ray"

    def __init__(self, config: dict, address: str, workers: Optional[int], gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, todo: int = 1):
        self.ray = _ray()
        self.owns = connect(address)
        self.address = address
        self.gpus, self.cpus = float(gpus_per_worker), float(cpus_per_worker)
        resources = self.ray.cluster_resources()
        if self.gpus > 0 and resources.get("GPU", 0) < self.gpus:
            self.close()
            raise SweepError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs; --gpus-per-worker "
                             f"{self.gpus:g} cannot be placed")
        if workers is None:
            share = resources.get("GPU", 0) / self.gpus if self.gpus > 0 else resources.get("CPU", 1) / max(self.cpus, 1e-9)
            workers = max(1, min(int(math.floor(share + 1e-9)), todo))
        self.workers = int(workers)
        self.config = dict(config, threads=max(1, int(self.cpus)))
        self.replaced = 0
        self.max_replacements = 3 * self.workers + 3
        self.prefix = f"studio-sweep-{secrets.token_hex(4)}"
        self._count = 0
        self._remote = self.ray.remote(CellWorker)
        self.actors: dict[int, object] = {}
        self.names: dict[int, str] = {}  # slot -> the actor's Ray name (``ray.get_actor(name)`` finds it)
        for slot in range(self.workers):
            self._new_actor(slot)

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} Ray worker actor{'s' if self.workers != 1 else ''} ({self.cpus:g} CPU{gpus} each) " \
               f"on the cluster at {self.address}"

    def _new_actor(self, slot: int) -> None:
        self._count += 1
        name = f"{self.prefix}-{self._count}"
        self.actors[slot] = self._remote.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                                 name=name).remote(self.config)
        self.names[slot] = name

    def _replace(self, slot: int) -> None:
        try:
            self.ray.kill(self.actors[slot], no_restart=True)
        except Exception:
            pass
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise SweepError(f"Ray worker actors died {self.replaced} times; the cluster may be out of memory "
                             "or losing nodes (see `ray status`)")
        self._new_actor(slot)

    def preflight(self, items: list) -> Optional[tuple]:
        for _ in range(3):
            try:
                return self.ray.get(self.actors[0].preflight.remote(items))
            except self.ray.exceptions.RayActorError:
                self._replace(0)
        raise SweepError("the first Ray worker actor died three times while opening the model")

    def run(self, tasks: list[tuple[str, dict]], on_result: Callable[[dict], None]) -> None:
        ray = self.ray
        queue = collections.deque(tasks)
        inflight: dict = {}  # ObjectRef -> (slot, task)
        while queue or inflight:
            load = collections.Counter(slot for slot, _ in inflight.values())
            for slot, actor in self.actors.items():
                while queue and load[slot] < IN_FLIGHT_PER_WORKER:
                    task = queue.popleft()
                    inflight[actor.run.remote(*task)] = (slot, task)
                    load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref not in inflight:
                    continue
                slot, task = inflight.pop(ref)
                try:
                    payload = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # CellWorker.run does not raise: a bug, not a cell
                    raise SweepError(f"a Ray worker failed: {one_line(e)}") from None
                except ray.exceptions.RayError:  # the actor (or its node) died: replace it, re-run its cells
                    queue.appendleft(task)
                    for other, (s, t) in list(inflight.items()):
                        if s != slot:
                            continue
                        del inflight[other]
                        try:
                            done, _ = ray.wait([other], timeout=0)
                            if done:
                                on_result(ray.get(other))  # it finished before the actor died: keep it
                                continue
                        except ray.exceptions.RayError:
                            pass
                        queue.appendleft(t)
                    self._replace(slot)
                    continue
                on_result(payload)

    def close(self) -> None:
        for actor in getattr(self, "actors", {}).values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = {}
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
            self.owns = False
