"""The same sweep on the local pool and on a real Ray instance (started here on 127.0.0.1 with 2 CPUs,
no mock): bit-identical cells on CPU for the exact mixture and the digits model, and a worker actor
killed mid-sweep is replaced with nothing lost or written twice."""
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # every test starts or uses a local Ray instance

from studio.sweep.cells import CELLS, cell_folder, read_arrays, read_result  # noqa: E402
from studio.sweep.driver import run_sweep  # noqa: E402
from studio.sweep.spec import load_spec  # noqa: E402

GMM = """\
model = "gmm"
reference_steps = 40

[fixed]
batch = 3
guidance = "cfg"
label = 2

[axes]
sampler = ["ddim", "euler_a", "heun"]
steps = [30, 60]
scale = [1.0, 4.0]
seeds = {start = 5, count = 2}
"""

DIGITS = """\
model = "default"
pool = ["label"]

[fixed]
batch = 2
guidance = "cfg"
scale = 3.0

[axes]
sampler = ["ddim", "dpmpp_2m"]
steps = [3, 6]
label = [0, 7]
seeds = [0, 1]
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=96 * 2**20, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def write_spec(folder: Path, name: str, text: str):
    path = folder / name
    path.write_text(text)
    return load_spec(path)


def quiet_sweep(spec, out, **kw):
    with open(os.devnull, "w") as devnull:
        return run_sweep(spec, out, stream=devnull, **kw)


def assert_same_cells(spec, a: Path, b: Path) -> None:
    """Every cell of ``spec`` is in both folders with bit-identical images, arrays and metrics."""
    for cell in spec.cells:
        ra, rb = read_result(a, cell.key), read_result(b, cell.key)
        assert ra["status"] == rb["status"] == "ok"
        xa, xb = read_arrays(a, cell.key), read_arrays(b, cell.key)
        assert xa.keys() == xb.keys()
        for k in xa:
            assert np.array_equal(xa[k], xb[k]), (cell.values, k)
        png = "final.png"
        assert (cell_folder(a, cell.key) / png).read_bytes() == (cell_folder(b, cell.key) / png).read_bytes()
        strip = lambda m: {k: v for k, v in m.items() if k != "seconds_per_image"}  # noqa: E731
        assert strip(ra["metrics"]) == strip(rb["metrics"])


@pytest.fixture(scope="module")
def gmm_local(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gmm")
    spec = write_spec(folder, "gmm.toml", GMM)
    stats = quiet_sweep(spec, folder / "local", workers=2)
    assert stats.computed == len(spec.cells) == 24
    return spec, folder


def test_ray_and_the_local_pool_make_the_same_cells_bit_for_bit_on_the_gmm(local_ray, gmm_local):
    spec, folder = gmm_local
    stats = quiet_sweep(spec, folder / "ray", workers=2, ray="auto")
    assert stats.computed == 24 and stats.executor.startswith("2 Ray worker actors")
    assert_same_cells(spec, folder / "local", folder / "ray")
    workers = {read_result(folder / "ray", c.key)["worker"] for c in spec.cells}
    assert len(workers) == 2 and all(read_result(folder / "ray", c.key)["executor"] == "ray" for c in spec.cells)
    a = json.loads((folder / "local" / "results.json").read_text())["settings"]
    b = json.loads((folder / "ray" / "results.json").read_text())["settings"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rows]  # noqa: E731
    assert drop(a) == drop(b)


def test_a_ray_worker_killed_mid_sweep_is_replaced_and_nothing_is_lost_or_doubled(local_ray, gmm_local, monkeypatch):
    """A worker actor is killed, as a lost node or the OOM killer would, right after the driver has written the
    second cell: most cells are still to come, so the executor must notice the dead actor, replace it and re-run
    what it held. The kill happens in the driver's own result handler, so no race with the sweep's speed."""
    from studio.sweep import driver

    spec, folder = gmm_local
    out = folder / "ray-killed"
    killed: list[str] = []
    write_cell = driver.write_cell

    def write_then_kill_a_worker(*args, **kw):
        write_cell(*args, **kw)
        if not killed and len(list((out / CELLS).rglob("result.json"))) >= 2:
            names = sorted(n for n in ray.util.list_named_actors() if n.startswith("studio-sweep-"))
            ray.kill(ray.get_actor(names[0]))
            killed.append(names[0])

    monkeypatch.setattr(driver, "write_cell", write_then_kill_a_worker)
    stats = quiet_sweep(spec, out, workers=2, ray="auto")
    assert killed
    assert stats.replaced_workers >= 1
    assert stats.computed == 24 and not stats.errors and stats.duplicates == 0
    names = [d.name for shard in (out / CELLS).iterdir() for d in shard.iterdir()]
    assert sorted(names) == sorted(c.key for c in spec.cells)  # every cell once, no staging left
    assert_same_cells(spec, folder / "local", out)


@pytest.mark.slow
def test_ray_and_the_local_pool_agree_on_the_digits_model(local_ray, tmp_path):
    """The built-in digits model with its clean-image evaluator: the same images, evaluator features
    and predictions either way; accuracy and Fréchet distance pooled over labels and seeds."""
    from studio.core.loading import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "evaluator" / "config.json").exists():
        pytest.skip("the digits model is not in this checkout")
    spec = write_spec(tmp_path, "digits.toml", DIGITS)
    assert spec.metrics == ("accuracy", "diversity", "frechet", "class_fractions", "seconds_per_image", "nfe")
    quiet_sweep(spec, tmp_path / "local", workers=2)
    quiet_sweep(spec, tmp_path / "ray", workers=2, ray="auto")
    assert_same_cells(spec, tmp_path / "local", tmp_path / "ray")
    settings = json.loads((tmp_path / "ray" / "results.json").read_text())["settings"]
    assert len(settings) == 4  # sampler × steps; labels and seeds pooled
    for row in settings:
        assert row["images"] == 2 * 2 * 2
        arrays = [read_arrays(tmp_path / "ray", c.key) for c in spec.cells
                  if (c.values["sampler"], c.values["steps"]) == (row["sampler"], row["steps"])]
        labels = np.concatenate([np.full(2, c.values["label"]) for c in spec.cells
                                 if (c.values["sampler"], c.values["steps"]) == (row["sampler"], row["steps"])])
        pred = np.concatenate([a["pred"] for a in arrays])
        assert row["accuracy"] == pytest.approx(float((pred == labels).mean()))
        assert np.isfinite(row["frechet"]) and row["frechet"] > 0 and row["diversity"] > 0
    # the Fréchet distance compares with held-out images of the labels asked for (0 and 7), not all ten
    assert (tmp_path / "ray" / "reference-labels-0-7.npz").is_file() and not (tmp_path / "ray" / "reference.npz").exists()


def test_the_test_instance_stays_on_loopback(local_ray):
    """conftest keeps Ray off the machine's network address (it would otherwise replace 127.0.0.1)."""
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_a_local_ray_writes_its_token_into_the_private_home_not_the_users(local_ray, real_home_ray_files):
    """ray.init() on a new local cluster turns token authentication on and writes ~/.ray/auth_token: the tests'
    HOME is a temporary folder (conftest.py), so the user's own ~/.ray is exactly as it was."""
    real_home, ray_files_now, ray_files_before = real_home_ray_files
    assert Path(os.environ["HOME"]) != real_home
    assert (Path(os.environ["HOME"]) / ".ray" / "auth_token").is_file()
    assert ray_files_now() == ray_files_before


HEAD = ("import ray, sys; ray.init(num_cpus=1, include_dashboard=False, _node_ip_address='127.0.0.1', "
        "object_store_memory=80 * 2**20); print(ray.get_runtime_context().gcs_address, flush=True); "
        "sys.stdin.read(); ray.shutdown()")


@pytest.fixture(scope="module")
def protected_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 in its own process and home, with token authentication on (a new local
    ray.init's default): (its address, its token)."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("head-home")
    env = dict(os.environ, HOME=str(home), RAY_TMPDIR=os.path.join(os.environ["RAY_TMPDIR"], "head"))
    os.makedirs(env["RAY_TMPDIR"], exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HEAD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), "the head did not start"
        yield address, (home / ".ray" / "auth_token").read_text().strip()
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def client(tmp_path: Path, address: str, **env) -> tuple[int, str]:
    """``studio sweep`` against ``address`` from a machine with its own (empty) home; (exit status, stderr)."""
    import subprocess
    import sys

    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    spec = tmp_path / "g.toml"
    spec.write_text('model = "gmm"\n[axes]\nsteps = [2, 3]\n')
    repo = Path(__file__).resolve().parents[1]
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    full.update(HOME=str(home), PYTHONPATH=str(repo), **env)
    r = subprocess.run([sys.executable, "-m", "studio", "sweep", str(spec), "--out", str(tmp_path / "out"),
                        "--ray", address], cwd=repo, env=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert not (tmp_path / "out").exists()
    return r.returncode, r.stderr


@pytest.mark.parametrize("env, words", [
    ({}, "requires a token, and this machine sends none; put the head's token"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}, "refused this machine's token"),
    ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_MODE=token, but this machine has no Ray token"),
])
def test_a_token_the_head_does_not_accept_is_said_in_one_line(protected_head, tmp_path, env, words):
    address, _ = protected_head
    code, err = client(tmp_path, address, **env)
    assert code == 1 and len(err.strip().splitlines()) == 1 and words in err, err


def test_the_heads_own_token_passes_the_check(protected_head):
    import subprocess
    import sys

    address, token = protected_head
    code = ("from studio.sweep.ray_exec import check_reachable, check_token_here, check_token_accepted; "
            f"a = '{address}'; check_token_here(a); check_token_accepted(a, check_reachable(a)); print('ok')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_spec_the_model_refuses_starts_no_ray_worker(local_ray, tmp_path, monkeypatch):
    """The cells are checked against the model's description in the driver: no actor is ever asked for."""
    from studio.sweep import ray_exec
    from studio.sweep.spec import SpecError

    asked, new_actor = [], ray_exec.RayPool._new_actor

    def record_then_create(pool, slot):
        asked.append(slot)
        new_actor(pool, slot)

    monkeypatch.setattr(ray_exec.RayPool, "_new_actor", record_then_create)
    spec = write_spec(tmp_path, "labels.toml", 'model = "gmm"\n[fixed]\nbatch = 1\nsteps = 2\n[axes]\nlabel = [0, 9]\n')
    with pytest.raises(SpecError, match="axes.label: the model refuses the cell label=9"):
        quiet_sweep(spec, tmp_path / "out", workers=1, ray="auto")
    assert asked == [] and not (tmp_path / "out").exists()


def test_rays_own_messages_stay_off_the_terminal_for_the_whole_sweep(local_ray, tmp_path, monkeypatch, capfd):
    """A message the raylet sends the driver in the middle of a sweep (as when a node is lost or a request
    cannot be scheduled) goes to the sweep's Ray log, not the terminal; the sweep's own lines still reach
    the terminal. The message is published from the driver's result handler, and the handler waits until
    Ray's listener has written it, so it surely arrives while the sweep runs."""
    import sys
    import threading

    import ray._private.worker as ray_worker
    from ray._private.utils import publish_error_to_driver

    from studio.sweep import driver
    from studio.sweep.ray_exec import ray_log_path

    spec = write_spec(tmp_path, "g.toml", 'model = "gmm"\nreference_steps = 20\n[fixed]\nbatch = 1\n'
                                          'sampler = "ddim"\n[axes]\nsteps = [2, 3, 4]\n')
    message = f"a message from the raylet to driver {os.getpid()}"
    log = Path(ray_log_path())
    write_cell, print_to_stdstream, printed = driver.write_cell, ray_worker.print_to_stdstream, threading.Event()

    def print_then_tell(data, *args, **kw):  # Ray's listener prints the driver's messages through this
        print_to_stdstream(data, *args, **kw)
        if any(message in line for line in data.get("lines", ())):
            printed.set()

    def write_then_publish(*args, **kw):
        write_cell(*args, **kw)
        if not write_then_publish.sent:
            write_then_publish.sent = True
            publish_error_to_driver("studio_test", message, ray._private.worker.global_worker.gcs_client)
            assert printed.wait(60), "Ray's listener never printed the message"  # a hang guard

    write_then_publish.sent = False
    monkeypatch.setattr(ray_worker, "print_to_stdstream", print_then_tell)
    monkeypatch.setattr(driver, "write_cell", write_then_publish)
    stats = run_sweep(spec, tmp_path / "out", workers=1, ray="auto", stream=sys.stderr, report=False)
    terminal = capfd.readouterr()
    assert write_then_publish.sent and stats.computed == 3
    assert message not in terminal.out + terminal.err and message in log.read_text()
    assert "3 of 3 cells to compute" in terminal.err  # the sweep's own lines
    assert sys.stdout is not None and logging.getLogger("ray").handlers  # put back as they were


def test_the_head_watch_tells_a_silent_head_from_a_live_one(local_ray):
    """A head that answers is never taken for gone, however long the sweep; one that stops answering is gone
    once it has been silent for HEAD_SILENCE_S, not before. The clock is the test's."""
    import socket

    from studio.sweep.ray_exec import HEAD_SILENCE_S, PROBE_EVERY_S, ClusterLost, HeadWatch

    now = [0.0]
    live = HeadWatch("live", ray.get_runtime_context().gcs_address, clock=lambda: now[0])
    for _ in range(10):
        now[0] += PROBE_EVERY_S
        live.check()
    with socket.socket() as s:  # a port on which nothing listens: refused at once
        s.bind(("127.0.0.1", 0))
        silent_port = s.getsockname()[1]
    now[0] = 0.0
    silent = HeadWatch("silent", f"127.0.0.1:{silent_port}", clock=lambda: now[0])
    while now[0] + PROBE_EVERY_S < HEAD_SILENCE_S:
        now[0] += PROBE_EVERY_S
        silent.check()
    now[0] = HEAD_SILENCE_S
    with pytest.raises(ClusterLost, match="the Ray cluster at silent stopped answering"):
        silent.check()


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def killable_head(tmp_path):
    """A head started as a user would, `ray start --head --block`, on 127.0.0.1 with free ports, in its own
    session (process group), home and Ray folder: (its address, its home, a function that kills it). The kill is
    SIGKILL to that process group and to the head's worker processes (the GCS, the raylet and the actors at
    once, as when the machine is lost); only this head's processes, never `ray stop`."""
    import signal
    import subprocess
    import threading

    psutil = pytest.importorskip("psutil")
    folder = os.path.join(os.environ["RAY_TMPDIR"], f"dies-{os.getpid()}")  # short: Ray's socket paths
    os.makedirs(folder, exist_ok=True)
    port, dashboard, agent, metrics, runtime_env = free_ports(5)  # none of Ray's fixed defaults (6379, 8265…)
    log = tmp_path / "head.log"
    home = tmp_path / "home"  # no token there: `ray start --head` would turn token auth on if there were one
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # a local ray.init may set them
    env["HOME"] = str(home)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={folder}",
         f"--object-store-memory={80 * 2**20}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started, ended = threading.Event(), threading.Event()

    def keep_log() -> None:  # the head's output into its log, telling when the runtime has started or the head ended
        with log.open("w") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if "Ray runtime started" in line:
                    started.set()
        ended.set()
        started.set()

    threading.Thread(target=keep_log, daemon=True).start()

    def kill() -> None:
        try:  # frozen first, so that no process is started while its workers are listed
            os.killpg(proc.pid, signal.SIGSTOP)
            workers = psutil.Process(proc.pid).children(recursive=True)  # Ray's workers have groups of their own
        except (ProcessLookupError, psutil.NoSuchProcess):
            workers = []
        for p in workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(60)

    try:
        assert started.wait(120) and not ended.is_set(), f"the head did not start:\n{log.read_text()}"  # hang guard
        yield f"127.0.0.1:{port}", home, kill
    finally:
        kill()


# The sweep's own command line, with the driver made to say, after writing its first cell, that it has (a byte on
# the pipe whose descriptor is its first argument) and to wait until the test, having killed the head, writes a
# line to its stdin: the head surely dies mid-sweep, whatever the machine's speed.
WAIT_AFTER_FIRST_CELL = """\
import os, sys
from studio.cli import console_main
from studio.sweep import driver
write_cell, told = driver.write_cell, int(sys.argv.pop(1))
def write_then_wait(*args, **kw):
    write_cell(*args, **kw)
    if told >= 0:
        os.write(told, b"1")
        os.close(told)
        sys.stdin.readline()
    globals()["told"] = -1
driver.write_cell = write_then_wait
sys.argv[0] = "studio"
sys.exit(console_main())
"""


def test_a_ray_head_that_dies_mid_sweep_ends_it_in_one_line_and_keeps_its_cells(killable_head, tmp_path):
    """`studio sweep --ray ADDRESS` whose head is killed once the first cell is written: the sweep stops within
    HEAD_GONE_S (instead of Ray's minute of retries and a silent exit), says so in one line with the cells
    kept, exits with status 1, and the same command (here on the local pool) computes only the rest."""
    import select
    import subprocess

    from studio.sweep.ray_exec import HEAD_GONE_S

    address, home, kill = killable_head
    spec_path = tmp_path / "g.toml"
    spec_path.write_text('model = "gmm"\nreference_steps = 20\n[fixed]\nbatch = 2\nsampler = "ddim"\n'
                         '[axes]\nsteps = [20, 21, 22, 23, 24, 25, 26, 27]\n')
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    first_cell, told = os.pipe()
    sweep = subprocess.Popen([sys.executable, "-c", WAIT_AFTER_FIRST_CELL, str(told), "sweep", str(spec_path),
                              "--out", str(out), "--ray", address, "--workers", "1"], pass_fds=(told,),
                             cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    os.close(told)
    try:
        ready, _, _ = select.select([first_cell], [], [], 300)  # a hang guard: the first cell takes seconds
        assert ready and os.read(first_cell, 1) == b"1", sweep.communicate()  # empty read: the sweep ended first
        kill()
        _, err = sweep.communicate(input="the head is gone\n", timeout=HEAD_GONE_S + 120)  # a hang guard
    finally:
        os.close(first_cell)
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    lines = err.strip().splitlines()
    kept = len(list((out / CELLS).glob("*/*/result.json")))
    assert sweep.returncode == 1, err
    assert all(line.startswith("studio: ") for line in lines), err  # no traceback, none of Ray's lines
    errors = [line for line in lines if line.startswith("studio: error:")]
    assert errors == [f"studio: error: the Ray cluster at {address} stopped answering during the sweep; "
                      f"{kept} cell{'s are' if kept != 1 else ' is'} kept in {out}, run the same command again "
                      "to continue once the cluster is back"], err
    assert 1 <= kept < 8
    spec = load_spec(spec_path)
    stats = quiet_sweep(spec, out, workers=1, report=False)
    assert stats.already == kept and stats.computed == 8 - kept and not stats.errors
