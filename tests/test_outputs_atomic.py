"""Outputs are never lost or half-made: one atomic writer for the CLI and the window's exports.

Signals are sent to real processes (SIGTERM while a run folder or an export is being written,
SIGKILL to leave debris for the next run), two real processes race for one ``--out``, and
permissions are checked under a umask set here.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.session import export as ex
from studio.session.atomic import OutputError, Reservation, TargetExists, sweep_stale
from studio.session.output import write_run_folder
from studio.session.recipe import Recipe
from studio.session.runner import Run

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and umask")


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # subprocesses inherit it


@pytest.fixture(scope="module")
def traj():
    return Run(Recipe(model="gmm", steps=5, batch=2, seed=4)).run_to_end()


def studio(*args, environ=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "studio", *args], env=environ or env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def staging(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# -- one writer -------------------------------------------------------------------------------------
def test_the_cli_and_the_window_exports_share_one_writer_and_one_error_type(traj, tmp_path):
    assert ex.ExportError is OutputError
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(TargetExists) as a:
        write_run_folder(traj, tmp_path / "taken")
    with pytest.raises(TargetExists) as b:
        ex.export_frames(traj, tmp_path / "taken")
    assert a.value.paths == b.value.paths == [tmp_path / "taken"]
    (tmp_path / "f.gif").write_bytes(b"old")
    with pytest.raises(TargetExists) as c:
        ex.export_animation(traj, tmp_path / "f.gif")
    assert c.value.paths == [tmp_path / "f.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gif", "taken"]


def test_a_missing_export_folder_is_created(traj, tmp_path):
    out = ex.export_final(traj, tmp_path / "new" / "deeper" / "final.png")
    assert out.exists() and (tmp_path / "new" / "deeper" / "final.png.recipe.json").exists()


def same_picture(big: np.ndarray, small: np.ndarray) -> bool:
    """``big`` is ``small`` enlarged by a whole factor, nearest neighbour."""
    f = big.shape[0] // small.shape[0]
    return f >= 1 and np.array_equal(big, np.repeat(np.repeat(small, f, axis=0), f, axis=1))


def test_frame_numbers_mean_the_same_in_the_cli_and_in_window_exports(traj, tmp_path):
    """xt 0000 = the noise, xt k = after step k, x0 k = the x̂₀ of step k, in both layouts (the CLI's frames are
    the window's enlarged by whole pixels, as its final.png is)."""
    write_run_folder(traj, tmp_path / "cli")
    ex.export_frames(traj, tmp_path / "win", which="both")
    for k in range(len(traj.xt)):
        a = np.asarray(Image.open(tmp_path / "cli" / "xt" / f"{k:04d}.png").convert("RGB"))
        b = np.asarray(Image.open(tmp_path / "win" / f"xt_{k:04d}.png").convert("RGB"))
        assert same_picture(a, b)
    for k in range(1, len(traj.x0) + 1):
        a = np.asarray(Image.open(tmp_path / "cli" / "x0" / f"{k:04d}.png").convert("RGB"))
        b = np.asarray(Image.open(tmp_path / "win" / f"x0_{k:04d}.png").convert("RGB"))
        assert same_picture(a, b)
    assert not (tmp_path / "cli" / "x0" / "0000.png").exists() and not (tmp_path / "win" / "x0_0000.png").exists()


# -- permissions -------------------------------------------------------------------------------------
@posix_only
def test_outputs_respect_the_umask(traj, tmp_path):
    old = os.umask(0o027)
    try:
        write_run_folder(traj, tmp_path / "run", save_raw=True)
        ex.export_frames(traj, tmp_path / "frames")
        ex.export_animation(traj, tmp_path / "a.gif")
        ex.export_final(traj, tmp_path / "sub" / "final.png")
    finally:
        os.umask(old)
    for p in [tmp_path / "run", tmp_path / "run" / "xt", tmp_path / "frames", tmp_path / "sub"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o750, p
    for p in [tmp_path / "run" / "final.png", tmp_path / "run" / "recipe.json", tmp_path / "run" / "trajectory.npz",
              tmp_path / "run" / "xt" / "0000.png", tmp_path / "frames" / "xt_0000.png", tmp_path / "a.gif",
              tmp_path / "a.gif.recipe.json", tmp_path / "sub" / "final.png"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


# -- checks before sampling, locking -------------------------------------------------------------------
@pytest.mark.slow
def test_sample_refuses_a_non_empty_out_before_sampling(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = studio("sample", "--model", "gmm", "--steps", "1000", "--batch", "64", "--out", str(out))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "already exists and is not empty" in err and "--overwrite" in err
    assert "steps/s" not in err, "it sampled before checking --out"
    assert len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(out)) == ["keep.txt"]


@pytest.mark.slow
def test_a_locked_out_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    with Reservation(out, overwrite=True, folder=True):
        p = studio("sample", "--model", "gmm", "--steps", "1000", "--overwrite", "--out", str(out))
        _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "another studio process is writing it" in err and "steps/s" not in err
    assert not out.exists() and os.listdir(tmp_path) == []  # the lock file is gone too


@pytest.mark.slow  # two processes sampling 1,000 steps
def test_two_runs_racing_for_one_out_exactly_one_wins(tmp_path):
    out = tmp_path / "out"
    procs = [studio("sample", "--model", "gmm", "--steps", "400", "--batch", "2", "--seed", str(seed), "--quiet",
                    "--out", str(out)) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    rc_loser, err = next((rc, e) for rc, e in results if rc != 0)
    assert ("another studio process is writing it" in err or "already exists" in err) and "Traceback" not in err
    winner = [1, 2][[rc for rc, _ in results].index(0)]
    assert json.loads((out / "recipe.json").read_text())["seed"] == winner
    assert sorted(os.listdir(tmp_path)) == ["out"]


# -- signals -----------------------------------------------------------------------------------------
@posix_only
@pytest.mark.slow
def test_sigterm_while_writing_a_run_folder_removes_the_staging(tmp_path):
    out = tmp_path / "run"
    p = studio("sample", "--model", "gmm", "--steps", "1000", "--batch", "1", "--quiet", "--out", str(out))
    part = wait_for(lambda: [d for d in staging(tmp_path) if d.is_dir() and any((d / "xt").glob("*.png"))]
                    if staging(tmp_path) else None, 240, "the staging folder to fill")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [f"studio: error: terminated (signal {int(signal.SIGTERM)}); nothing was written"]
    assert not part[0].exists() and not out.exists()
    assert os.listdir(tmp_path) == []


EXPORT_SCRIPT = textwrap.dedent("""
    import sys
    from studio.session.atomic import Terminated, terminate_cleanly
    from studio.session import export as ex
    from studio.session.recipe import Recipe
    from studio.session.runner import Run

    traj = Run(Recipe(model="gmm", steps=1000, batch=1)).run_to_end()
    print("ready", flush=True)
    try:
        with terminate_cleanly():
            ex.export_frames(traj, sys.argv[1], which="both", scale=4)
    except Terminated:
        sys.exit(143)
""")


@posix_only
@pytest.mark.slow  # a process; SIGTERM while writing a run folder stays in the fast lane
def test_sigterm_during_an_export_removes_the_staging(tmp_path):
    out = tmp_path / "frames"
    p = subprocess.Popen([sys.executable, "-c", EXPORT_SCRIPT, str(out)], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    part = wait_for(lambda: [d for d in staging(tmp_path) if d.is_dir() and len(os.listdir(d)) > 20], 240,
                    "the export's staging folder to fill")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 143
    assert not part[0].exists() and not out.exists() and os.listdir(tmp_path) == []


@posix_only
@pytest.mark.slow  # three processes
def test_debris_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "a"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    environ = env(TMPDIR=str(tmpdir))
    # batch 64 × 1000 steps keeps more than the trajectory's 64 MB in memory: it spills to TMPDIR
    p = studio("sample", "--model", "gmm", "--steps", "1000", "--batch", "64", "--quiet", "--out", str(out), environ=environ)
    spill = wait_for(lambda: list(tmpdir.glob("studio-trajectory-*")), 240, "the spill cache")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert spill[0].exists()
    # a killed writer's staging folder (made by hand with a dead process's pid)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    debris = tmp_path / f".b.partial-{dead.pid}-0123abcd"
    debris.mkdir()
    (debris / "final.png").write_bytes(b"half")
    mine = tmp_path / f".c.partial-{os.getpid()}-0123abcd"  # a live process's staging is left alone
    mine.mkdir()
    q = studio("sample", "--model", "gmm", "--steps", "2", "--quiet", "--out", str(tmp_path / "next"), environ=environ)
    _, err = q.communicate(timeout=120)
    assert q.returncode == 0, err
    assert not spill[0].exists() and not debris.exists() and mine.exists()
    assert sweep_stale(tmp_path) == []


# -- weights fingerprint -------------------------------------------------------------------------------
@pytest.mark.slow  # three processes opening a diffusers UNet
def test_a_recipe_records_the_weights_and_replaying_changed_weights_warns(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from _models import make_unet, save_model_folder
    folder = save_model_folder(make_unet(), tmp_path / "m", dict(clip_sample=False))
    weights = folder / "diffusion_pytorch_model.safetensors"
    common = ["sample", "--steps", "2", "--batch", "1", "--quiet"]
    p = subprocess.run([sys.executable, "-m", "studio", *common, "--model", str(folder), "--out", str(tmp_path / "a")],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    recorded = json.loads((tmp_path / "a" / "recipe.json").read_text())["versions"]["weights"]
    assert recorded == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}
    with Image.open(tmp_path / "a" / "final.png") as im:
        assert json.loads(im.text["recipe"])["versions"]["weights"] == recorded
    replay = [*common, "--recipe", str(tmp_path / "a" / "recipe.json")]
    p = subprocess.run([sys.executable, "-m", "studio", *replay, "--out", str(tmp_path / "b")], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr
    sd = load_file(str(weights))
    sd["conv_out.bias"] = sd["conv_out.bias"] + torch.full_like(sd["conv_out.bias"], 0.01)
    save_file(sd, str(weights))
    p = subprocess.run([sys.executable, "-m", "studio", *replay, "--out", str(tmp_path / "c")], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: warning:") and weights.name in lines[0], p.stderr
    assert "changed" in lines[0] and recorded[weights.name][:12] in lines[0]


def test_weight_digests_are_computed_once_per_file_version(tmp_path, monkeypatch):
    from studio.core import file_hashes

    f = tmp_path / "w.safetensors"
    f.write_bytes(os.urandom(1 << 16))
    calls = []
    real = file_hashes.sha256_file
    monkeypatch.setattr(file_hashes, "sha256_file", lambda p, e=None: calls.append(p) or real(p))
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert [file_hashes.cached_sha256(f) for _ in range(3)] == [want] * 3
    assert len(calls) == 1
    f.write_bytes(os.urandom(1 << 16))
    assert file_hashes.cached_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() and len(calls) == 2
