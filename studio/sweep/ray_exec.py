"""``--ray auto|ADDRESS``: the same sweep on a Ray cluster (Moritz et al. 2018, https://docs.ray.io).

Ray places the workers; the studio keeps no scheduler or RPC of its own. Each worker is a Ray actor
holding the opened model (worker.py's ``CellWorker``, the class the local pool runs), with
``--cpus-per-worker`` CPUs (its torch threads) and ``--gpus-per-worker`` GPUs. The driver keeps
at most two cells in flight per actor and takes results with ``ray.wait`` as they finish, so they
are written into the sweep's folder as they come (driver.py); the nodes need no shared disk, only
the studio installed and the model at the same path.

An actor that dies (its node lost, killed, out of memory) is replaced by a fresh one and the cells
it held are queued again; a result that had already arrived is kept, and the driver writes each
cell once, so nothing is lost or counted twice. A head that stops answering (its machine lost, its
GCS killed) ends the sweep within ``HEAD_GONE_S`` with :class:`ClusterLost`, one line, the cells written
so far kept: Ray's driver would otherwise wait a minute for its GCS and then end the process itself.
``ray`` is an optional dependency (the ``cluster`` extra); it is imported only here.

Connecting is bounded and quiet: the address must answer a gRPC handshake within ``HANDSHAKE_S``
(a port where nothing, or something other than Ray, answers is one line, not minutes of Ray's
retries), a token the head refuses is reported as such at once, and Ray's own log lines while
connecting go to a temporary file rather than the terminal. For the rest of the sweep, what Ray
writes (worker and raylet messages, its loggers) goes to a log file in the user's cache
(:class:`RayOutputKeptOff`); workers' output is not forwarded (``log_to_driver=False``).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import secrets
import sys
import tempfile
import time
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


HANDSHAKE_S = 5.0  # the most an address may take to accept a connection and answer as a gRPC server
# the HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server (Ray's GCS, its
# client server) answers with a SETTINGS frame of its own; anything else is not a Ray cluster
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4
TOKEN_WHERE = "put the head's token (`ray get-auth-token` on the head) in ~/.ray/auth_token or RAY_AUTH_TOKEN"
TOKEN_HELP = f"{TOKEN_WHERE}, and set RAY_AUTH_MODE=token"


@contextlib.contextmanager
def ray_logs_kept_off_the_terminal():
    """Send what Ray's C++ core and loggers write to stderr (retry warnings, gRPC errors) to a temporary
    file while connecting: the studio says in one line what went wrong."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class RayOutputKeptOff:
    """Ray's own output kept off the terminal for as long as the sweep uses the cluster, in a log file.

    Once connected, Ray still writes to this process's terminal: the raylet's and the autoscaler's messages
    (a node lost, a worker killed, a request that cannot be scheduled) through its error listener on
    ``sys.stdout``, its loggers on ``sys.stderr``, its C++ core on file descriptor 2. So for the pool's life
    file descriptors 1 and 2, ``sys.stdout`` and ``sys.stderr`` and the ``ray`` logger's handlers all write
    to ``path``; the studio's own lines reach the terminal through :meth:`terminal`, and a task's error
    reaches the user as the sweep's one line, as it does on the local pool. The file is removed at the end
    when Ray wrote nothing."""

    def __init__(self, path: str):
        self.path = path
        sys.stdout.flush()
        sys.stderr.flush()
        self._file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in self._saved_fds:
            os.dup2(self._file.fileno(), fd)
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self._file
        logger = logging.getLogger("ray")
        self._saved_handlers = logger.handlers
        logger.handlers = [logging.StreamHandler(self._file)]
        self._terminals: list = []

    def terminal(self, stream):
        """``stream``, or a writer to where it wrote before (the terminal) when it writes to file descriptor 1
        or 2 (a stream of another file, a test's capture, goes on writing there)."""
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return stream
        if fd not in self._saved_fds:
            return stream
        out = open(os.dup(self._saved_fds[fd]), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                   errors="replace")
        self._terminals.append(out)
        return out

    def restore(self) -> None:
        """Everything back as it was; the log file removed when empty."""
        if self._file.closed:
            return
        logging.getLogger("ray").handlers = self._saved_handlers
        sys.stdout, sys.stderr = self._saved_streams
        for t in self._terminals:
            t.flush()
        self._file.flush()
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        for t in self._terminals:
            t.close()
        self._file.close()
        try:
            if os.path.getsize(self.path) == 0:
                os.unlink(self.path)
        except OSError:
            pass


def ray_log_path() -> str:
    """Where a sweep's Ray output goes: ``ray-logs/sweep-<pid>.log`` in the user's cache."""
    from ..core.file_hashes import user_cache_dir

    folder = user_cache_dir() / "ray-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"sweep-{os.getpid()}.log")


def _resolve(address: str) -> Optional[str]:
    """HOST:PORT of ``address`` (``auto``: RAY_ADDRESS, else the last `ray start` on this machine); None
    when Ray finds it itself (``local``, or a Ray without the lookup)."""
    if address == "local":
        return None
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # a Ray without it: let ray.init find the cluster
            return None
        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as e:
            raise SweepError(f"--ray auto: no Ray cluster found on this machine ({one_line(e)}); start one with "
                             "`ray start --head` or give its address") from None
        if not found:
            return None
        address = found
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address!r}: give auto or the cluster's address as HOST:PORT (e.g. 10.0.0.5:6379)")
    return hostport


def answers_as_grpc(hostport: str, timeout_s: float) -> bool:
    """Whether a gRPC server (Ray's GCS) answers at HOST:PORT: the HTTP/2 preface sent, a SETTINGS frame
    back within ``timeout_s``. Raises ``OSError`` (``TimeoutError`` included) when nothing accepts or answers."""
    import socket

    host, _, port = hostport.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
        sock.sendall(_HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    return len(head) == 9 and head[3] == _SETTINGS


def check_reachable(address: str, timeout_s: float = HANDSHAKE_S) -> Optional[str]:
    """One line at once for an address nothing answers on, or where something other than a gRPC server
    (Ray's) answers (Ray itself would retry for minutes); returns the HOST:PORT checked. Plain socket
    calls with a deadline, so Ctrl+C and SIGTERM stop the wait."""
    import socket

    hostport = _resolve(address)
    if hostport is None:
        return None
    try:
        answers = answers_as_grpc(hostport, timeout_s)
    except (socket.timeout, TimeoutError):
        raise SweepError(f"{address}: no answer as a Ray cluster within {timeout_s:g}s (something accepts "
                         "connections there, but not Ray's head); check the address and port "
                         "(`ray start --head` prints it)") from None
    except OSError as e:
        raise SweepError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); is `ray start --head` "
                         "running there, and is the port open?") from None
    if not answers:
        raise SweepError(f"{address}: something answers there, but it is not a Ray cluster; check the address and "
                         "port (`ray start --head` prints it)")
    return hostport


def _token_error(address: str) -> SweepError:
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        return SweepError(f"the Ray cluster at {address} requires a token, and this machine sends none; {TOKEN_HELP}")
    return SweepError(f"the Ray cluster at {address} refused this machine's token (missing or not the head's); "
                      f"{TOKEN_HELP}")


def _auth():
    try:
        from ray._private.authentication import authentication_token_setup as auth
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return None, None
    return auth, AuthenticationError


def check_token_here(address: str) -> None:
    """RAY_AUTH_MODE=token with no token on this machine: one line before anything is contacted."""
    auth, AuthenticationError = _auth()
    if auth is None or address == "local":  # ray.init starts that cluster, and makes the token it needs
        return
    if address == "auto":  # as ray.init: a cluster found on this machine uses ~/.ray/auth_token if there is one
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        auth.ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:
        raise SweepError(f"RAY_AUTH_MODE=token, but this machine has no Ray token; {TOKEN_WHERE}") from None


def check_token_accepted(address: str, hostport: Optional[str]) -> None:
    """A head that refuses this machine's token (or its lack of one), told at once: Ray itself retries
    for about 20 s, then reports a connection failure."""
    auth, AuthenticationError = _auth()
    if auth is None or hostport is None:
        return
    from ray._raylet import GcsClient

    with ray_logs_kept_off_the_terminal():
        try:
            GcsClient(address=hostport)
        except AuthenticationError:
            raise _token_error(address) from None
        except Exception:  # noqa: BLE001 - anything else is ray.init's to report
            pass


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: the one this machine joined with ``ray start``) unless
    this process is connected already; returns whether this call connected (and so must disconnect)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    check_token_here(address)
    hostport = check_reachable(address)
    check_token_accepted(address, hostport)
    try:
        with ray_logs_kept_off_the_terminal():
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ray.exceptions.AuthenticationError:
        raise _token_error(address) from None
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SweepError(f"cannot reach a Ray cluster at {address!r} ({one_line(e)}); start one with "
                         "`ray start --head` (then `ray start --address HOST:PORT` on the other machines) "
                         "or give its address") from None
    return True


PROBE_EVERY_S = 5.0  # how often the driver asks the head (its GCS) whether it is still there
HEAD_SILENCE_S = 15.0  # a head silent this long is gone (a restarting GCS, a network blip, answer within it)
HEAD_GONE_S = HEAD_SILENCE_S + PROBE_EVERY_S + HANDSHAKE_S  # the most a sweep runs on after its head is gone


class ClusterLost(SweepError):
    """The Ray head stopped answering during the sweep. Ray's driver would wait for its GCS (the head's
    control store) for a minute and then end the process with a log line; the sweep stops sooner and says
    so, and the driver, which knows the folder, words the user's line (:meth:`told`)."""

    def __init__(self, address: str):
        super().__init__(f"the Ray cluster at {address} stopped answering during the sweep")
        self.address = address

    def told(self, kept: int, out) -> str:
        return (f"{self}; {kept} cell{'s are' if kept != 1 else ' is'} kept in {out}, run the same command again "
                "to continue once the cluster is back")


class HeadWatch:
    """Whether the cluster's head still answers, asked at most every ``PROBE_EVERY_S`` with the gRPC handshake
    of :func:`check_reachable`: one that has not answered for ``HEAD_SILENCE_S`` is gone. ``clock`` is
    injectable (tests)."""

    def __init__(self, address: str, gcs_address: str, clock: Callable[[], float] = time.monotonic):
        self.address, self.gcs_address, self.clock = address, gcs_address, clock
        self.answered_at = self.asked_at = clock()

    def answers(self) -> bool:
        """Ask now; whether the head answered."""
        self.asked_at = self.clock()
        try:
            ok = answers_as_grpc(self.gcs_address, HANDSHAKE_S)
        except OSError:
            ok = False
        if ok:
            self.answered_at = self.clock()
        return ok

    def check(self) -> None:
        """Raise :class:`ClusterLost` once the head has been silent for ``HEAD_SILENCE_S``."""
        if self.clock() - self.asked_at < PROBE_EVERY_S:
            return
        if not self.answers() and self.clock() - self.answered_at >= HEAD_SILENCE_S:
            raise ClusterLost(self.address)


class RayPool:
    """One Ray actor per worker; replaced when it dies. The head is watched (:class:`HeadWatch`): a sweep
    whose cluster is gone stops within ``HEAD_GONE_S`` with :class:`ClusterLost`."""

    name = "ray"

    def __init__(self, config: dict, address: str, workers: Optional[int], gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, todo: int = 1):
        self.ray = _ray()
        self.owns = False
        self.output = RayOutputKeptOff(ray_log_path())
        try:
            self._start(config, address, workers, gpus_per_worker, cpus_per_worker, todo)
        except BaseException:
            self.close()
            raise

    def terminal(self, stream):
        """Where the driver's own lines go while Ray's output is kept off the terminal."""
        return self.output.terminal(stream)

    def _start(self, config: dict, address: str, workers: Optional[int], gpus_per_worker: float,
               cpus_per_worker: float, todo: int) -> None:
        self.owns = connect(address)
        self.address = address
        self.lost = False
        self.watch = HeadWatch(address, self.ray.get_runtime_context().gcs_address)
        self.gpus, self.cpus = float(gpus_per_worker), float(cpus_per_worker)
        resources = self.ray.cluster_resources()
        if self.gpus > 0 and resources.get("GPU", 0) < self.gpus:
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
               f"on the cluster at {self.address} (Ray's own messages: {self.output.path})"

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

    def run(self, tasks: list[tuple[str, dict]], on_result: Callable[[dict], None]) -> None:
        inflight: dict = {}  # ObjectRef -> (slot, task)
        try:
            self._run(tasks, on_result, inflight)
        except ClusterLost:
            self.lost = True  # its actors went with it: nothing to kill, nothing to ask the head
            self._keep_arrived(inflight, on_result)
            raise

    def _keep_arrived(self, inflight: dict, on_result: Callable[[dict], None]) -> None:
        """Results already in this process when the cluster was lost are written, not computed again."""
        ray = self.ray
        try:
            arrived, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0) if inflight else ([], [])
        except ray.exceptions.RayError:
            return
        for ref in arrived:
            try:
                payload = ray.get(ref, timeout=0)
            except (ray.exceptions.RayError, TimeoutError):
                continue
            on_result(payload)

    def _run(self, tasks: list[tuple[str, dict]], on_result: Callable[[dict], None], inflight: dict) -> None:
        ray = self.ray
        queue = collections.deque(tasks)
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
                    if not self.watch.answers():  # with the head: no actor can be made (Ray would block on it)
                        raise ClusterLost(self.address) from None
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
            self.watch.check()

    def close(self) -> None:
        if getattr(self, "lost", False):
            self.actors = {}
        for actor in getattr(self, "actors", {}).values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = {}
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
            self.owns = False
        self.output.restore()
