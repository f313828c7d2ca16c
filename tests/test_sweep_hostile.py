"""Sweeps given hostile input, on real files and real local sweeps of the exact mixture: every case ends in
one line naming the problem and what to do, or just works; nothing is left in --out that should not be."""
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from studio.cli import main
from studio.sweep.cells import CELLS, cell_folder, read_result
from studio.sweep.spec import MAX_CELLS, SpecError, load_spec, parse_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """\
model = "gmm"
reference_steps = {ref}

[fixed]
batch = 2
sampler = "ddim"

[axes]
steps = [2, 3]
seeds = [0]
"""


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: error: ") and "Traceback" not in err, err
    return lines[0]


def sweep(spec: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(spec), "--out", str(out), "--workers", "1", *extra])


@pytest.fixture(scope="module")
def tiny_done(tmp_path_factory):
    """A finished two-cell sweep of the gmm, run once; the stderr of ``studio sweep`` as it ran."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("tiny")
    spec = folder / "tiny.toml"
    spec.write_text(TINY.format(ref=20))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert sweep(spec, folder / "out") == 0
    return folder / "out", err.getvalue()


@pytest.fixture
def tiny(tiny_done, tmp_path):
    """A copy of the finished sweep and its spec, for a test to damage or extend."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.format(ref=20))
    shutil.copytree(tiny_done[0], tmp_path / "out")
    return spec, tmp_path / "out"


@pytest.mark.slow
def test_every_line_a_sweep_writes_has_the_one_prefix(tiny_done):
    lines = tiny_done[1].strip().splitlines()
    assert len(lines) >= 3 and all(line.startswith("studio: ") for line in lines), lines
    assert any("2 of 2 cells to compute" in line for line in lines)


@pytest.mark.parametrize("axes, words", [
    ("seeds = {start = 0, count = 1000000}\nscale = {start = 0.0, stop = 5.0, count = 1000000}\n",
     "1000000 seeds × 1000000 scale make 1,000,000,000,000 cells"),
    ("seeds = {start = 0, count = 2000000}\n", "2000000 seeds make 2,000,000 cells"),
    ("seeds = {start = 0, count = 400}\nsteps = {start = 1, count = 400}\n", "make 160,000 cells"),
])
def test_a_grid_beyond_the_limit_is_refused_from_the_axes_lengths(axes, words):
    with pytest.raises(SpecError) as e:
        parse_spec(f'model = "gmm"\n[axes]\n{axes}', "big.toml")
    assert str(e.value).startswith("big.toml line 2: axes: ") and words in str(e.value)
    assert f"more than a sweep takes ({MAX_CELLS:,}); split it" in str(e.value)


def test_a_long_axis_within_the_limit_is_checked_for_repeats_without_comparing_every_pair():
    spec = parse_spec('model = "gmm"\n[axes]\nseeds = {start = 0, count = 3000}\n', "s.toml")
    assert len(spec.cells) == 3000 and spec.cells[-1].values == {"seed": 2999}


def test_a_spec_that_is_a_device_or_a_pipe_is_one_line_without_reading_it(tmp_path, capsys):
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(SpecError, match="is a character device, not a regular file"):
        load_spec(zero)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert sweep(fifo, tmp_path / "out") == 2
    assert "cannot read the spec" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_prompt_with_a_control_character_is_refused_at_its_spec_line():
    with pytest.raises(SpecError) as e:
        parse_spec('model = "digits-text"\n[fixed]\nprompt = "a red 7\\u0000"\n', "p.toml")
    assert str(e.value).startswith("p.toml line 3: fixed.prompt: ") and "U+0000 at character 8" in str(e.value)


@pytest.mark.slow
def test_a_spec_that_measures_otherwise_is_refused_a_folder_holding_another_sweep(tiny, capsys):
    spec, out = tiny
    before = sorted(p.name for p in (out / CELLS).rglob("result.json"))
    other = spec.with_name("other.toml")
    other.write_text(TINY.format(ref=30))
    assert sweep(other, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds a sweep measured with reference_steps = 20; this spec says 30" in line and "new --out" in line
    other.write_text(TINY.format(ref=20).replace("[fixed]", 'metrics = ["nfe"]\n[fixed]'))
    assert sweep(other, out) == 2
    assert "whose cells record component_weights, nfe, ref_distance" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (out / CELLS).rglob("result.json")) == before
    # more cells measured the same way extend the sweep
    spec.write_text(TINY.format(ref=20).replace("seeds = [0]", "seeds = [0, 1]"))
    assert sweep(spec, out) == 0
    assert "2 of 4 cells to compute" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cut_result_is_named_by_the_report_and_computed_again_by_the_next_run(tiny, capsys):
    spec, out = tiny
    key = load_spec(spec).cells[1].key
    result = cell_folder(out, key) / "result.json"
    whole = json.loads(result.read_text())
    result.write_bytes(result.read_bytes()[: len(result.read_bytes()) // 2])
    assert main(["sweep", "--report", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(result) in line and "not valid JSON" in line and "run the sweep again" in line
    assert sweep(spec, out) == 0
    err = capsys.readouterr().err
    assert "1 damaged cell will be computed again" in err and "1 of 2 cells to compute" in err
    again = read_result(out, key)
    assert again["metrics"] == {**whole["metrics"], "seconds_per_image": again["metrics"]["seconds_per_image"]}
    assert not [p for p in (out / CELLS).rglob(".*")]  # the damaged folder is gone, not set aside


@pytest.mark.slow
def test_a_cut_array_file_is_found_on_resume(tiny, capsys):
    spec, out = tiny
    key = load_spec(spec).cells[0].key
    npz = cell_folder(out, key) / "final.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    assert sweep(spec, out) == 0
    assert f"{npz}: " in capsys.readouterr().err
    assert main(["sweep", "--report", str(out)]) == 0


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"spec": {}, "cells": []}', "spec.model is missing"),
    ('{"spec": {"model": "gmm", "axes": {}, "metrics": [], "pool": [], "fd_reference": 1, "reference_steps": 1}, '
     '"cells": [{"key": "../../../../etc", "values": {}}]}', "cell 1 is not a key of 16 hex digits"),
    ('{"spec": {"model": "gmm", "axes": {}, "metrics": [3], "pool": [], "fd_reference": 1, "reference_steps": 1}, '
     '"cells": []}', "spec.metrics holds a non-string"),
])
def test_report_on_a_malformed_sweep_file_is_one_line(tmp_path, capsys, text, words):
    (tmp_path / "sweep.json").write_text(text)
    assert main(["sweep", "--report", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "sweep.json") in line and words in line


def test_report_on_a_sweep_file_that_is_a_device_is_one_line(tmp_path, capsys):
    (tmp_path / "sweep.json").symlink_to("/dev/zero")
    assert main(["sweep", "--report", str(tmp_path)]) == 2
    assert "is a character device" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def pools_started(monkeypatch):
    """The local worker pools a sweep starts, as they start (the pool is started as usual)."""
    from studio.sweep import local

    started, start = [], local.LocalPool._start

    def record_then_start(pool):
        started.append(pool)
        start(pool)

    monkeypatch.setattr(local.LocalPool, "_start", record_then_start)
    return started


def test_a_value_the_model_refuses_leaves_no_folder_and_starts_no_worker(tmp_path, capsys, pools_started):
    spec = tmp_path / "labels.toml"
    spec.write_text('model = "gmm"\n[fixed]\nbatch = 1\nsteps = 2\n[axes]\nlabel = [0, 9]\n')
    out = tmp_path / "out"
    assert sweep(spec, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "labels.toml line 6: axes.label: the model refuses the cell label=9" in line
    assert not out.exists()
    assert pools_started == []  # checked against the model's description, in the driver


@pytest.mark.parametrize("axes, words", [
    ('guidance = ["none", "classifier"]\nlabel = [1]', "axes.guidance: the model refuses the cell guidance=classifier"),
    ('prompt = ["a seven"]', "axes.prompt: the model refuses the cell prompt=a seven"),
])
def test_a_setting_the_model_cannot_run_is_refused_from_its_configs(tmp_path, capsys, pools_started, axes, words):
    from _models import make_unet, save_model_folder

    folder = save_model_folder(make_unet(num_class_embeds=3), tmp_path / "model", class_names=["a", "b"])
    spec = tmp_path / "s.toml"
    spec.write_text(f'model = "model"\n[fixed]\nbatch = 1\nsteps = 2\n[axes]\n{axes}\n')
    assert folder.is_dir() and sweep(spec, tmp_path / "out") == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and pools_started == []


def test_weights_cut_short_leave_no_folder(tmp_path, capsys, pools_started):
    from _models import make_unet, save_model_folder

    folder = tmp_path / "model"
    save_model_folder(make_unet(), folder)
    weights = next(folder.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-64])
    (folder / "SHA256SUMS").unlink(missing_ok=True)  # the truncated file itself must be what is caught
    spec = tmp_path / "cut.toml"
    spec.write_text(f'model = "{folder}"\n[fixed]\nbatch = 1\n[axes]\nsteps = [2, 3]\n')
    out = tmp_path / "out"
    assert sweep(spec, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot open the model" in line and "diffusion_pytorch_model.safetensors" in line and "truncated" in line
    assert not out.exists() and pools_started == []


@pytest.mark.slow
def test_the_existing_folder_is_untouched_when_the_model_refuses(tiny, capsys):
    spec, out = tiny
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    spec.write_text(TINY.format(ref=20).replace("seeds = [0]", "seeds = [0]\nlabel = [0, 9]"))
    assert sweep(spec, out) == 2
    one_error_line(capsys.readouterr().err)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# -- the pooled contact sheet and the plots --------------------------------------------------------
@pytest.mark.slow
def test_a_pooled_setting_shows_every_label_it_pools(tmp_path):
    import numpy as np

    from studio.sweep.report import THUMB, _setting_tile, _thumbnail
    from studio.sweep.summary import cell_results, load_sweep

    spec = tmp_path / "pooled.toml"
    spec.write_text('model = "gmm"\npool = ["label"]\n[fixed]\nbatch = 1\nsteps = 2\n[axes]\nlabel = [0, 1, 2, 3]\n'
                    'seeds = [0, 1]\n')
    out = tmp_path / "out"
    assert sweep(spec, out, "--no-report") == 0
    doc = load_sweep(out)
    results = cell_results(out, doc)
    tile = _setting_tile(out, results, ["label"])
    side = THUMB // 2  # four labels: a 2 × 2 grid of their first seeds' images
    firsts = [r for r in results if r["values"]["seed"] == 0]
    assert [r["values"]["label"] for r in firsts] == [0, 1, 2, 3]
    for i, r in enumerate(firsts):
        want = _thumbnail(cell_folder(out, r["key"]) / "final.png", side - 2)
        y, x = divmod(i, 2)
        assert np.array_equal(tile[y * side + 1:y * side + side - 1, x * side + 1:x * side + side - 1], want)


def test_lines_on_the_same_points_are_told_apart():
    from studio.sweep.report import line_plot

    rows = [{"sampler": s, "steps": n, "nfe": n, "ref_distance": 1.0 / n} for s in ("ddim", "euler") for n in (5, 10)]
    fig = line_plot(rows, ["sampler", "steps"], "nfe", "ref_distance", "t")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ddim", "euler (= ddim)"]
    a, b = ax.get_lines()
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())


def test_the_frechet_reference_holds_only_the_labels_asked_for(tmp_path):
    import numpy as np

    from studio.evaluation.reference import evaluator_folder, reference_features
    from studio.sweep.summary import covered_labels

    if evaluator_folder("default") is None:
        pytest.skip("the digits model's evaluator is not in this checkout")
    feats = reference_features(tmp_path, "default", 40, labels=[0, 1])
    everything = reference_features(tmp_path, "default", 40)
    assert feats.shape[0] == 40 and everything.shape[0] == 40
    assert (tmp_path / "reference-labels-0-1.npz").is_file() and (tmp_path / "reference.npz").is_file()
    assert not np.array_equal(feats, everything)
    assert np.array_equal(reference_features(tmp_path, "default", 40, labels=(1, 0)), feats)  # read back
    cells = [{"recipe": {"label": k}} for k in (1, 0, 1)]
    assert covered_labels(cells) == (0, 1) and covered_labels(cells + [{"recipe": {"label": None}}]) is None


# -- Ray: addresses where something else answers --------------------------------------------------
class Server:
    """A TCP server on a free loopback port: ``reply`` bytes to each connection (None: silent)."""

    def __init__(self, reply):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply, self.accepted = reply, threading.Event()
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()
            if self.reply is not None:
                try:
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("reply, words", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "something answers there, but it is not a Ray cluster"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "something answers there, but it is not a Ray cluster"),
    (None, "no answer as a Ray cluster within 0.5s"),
])
def test_an_address_where_something_else_answers_is_one_line(reply, words, capfd):
    pytest.importorskip("ray")
    from studio.sweep.local import SweepError
    from studio.sweep.ray_exec import check_reachable

    server = Server(reply)
    try:
        with pytest.raises(SweepError) as e:
            check_reachable(f"127.0.0.1:{server.port}", timeout_s=0.5)
    finally:
        server.close()
    assert words in str(e.value) and "\n" not in str(e.value)
    assert capfd.readouterr().err == ""  # nothing of Ray's on the terminal


@pytest.mark.slow
def test_sigterm_stops_a_sweep_waiting_on_an_address_that_never_answers(tmp_path):
    """The studio's own handshake waits in plain socket calls, so SIGTERM ends it (Ray's retries did not)."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray")
    server = Server(None)
    spec = tmp_path / "g.toml"
    spec.write_text('model = "gmm"\n[axes]\nsteps = [2, 3]\n')
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "studio", "sweep", str(spec), "--out", str(tmp_path / "out"),
                             "--ray", f"127.0.0.1:{server.port}"], cwd=repo, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(repo)))
    try:
        assert server.accepted.wait(120), "the sweep never connected"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_copied_folder_resumes_as_done(tiny, capsys):
    """Every cell of the copy is checked and found whole: no worker starts."""
    spec, out = tiny
    assert sweep(spec, out, "--no-report") == 0
    assert "all 2 cells are already in" in capsys.readouterr().err
