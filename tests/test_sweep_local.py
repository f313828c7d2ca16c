"""Sweeps on the local worker pool: resumable after a real kill, cells reproducible alone with
`studio sample --recipe`, metrics of the exact mixture against its closed forms, the report."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from studio.cli import main
from studio.core.file_hashes import user_cache_dir
from studio.session.recipe import Recipe
from studio.session.runner import Run
from studio.sweep.cells import CELLS, read_arrays, read_result
from studio.sweep.driver import run_sweep
from studio.sweep.local import POOLS_FOLDER
from studio.sweep.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CELL_FILES = {"result.json", "recipe.json", "final.png", "final.npz"}

SLOW_CELLS = """\
model = "gmm"
reference_steps = 20

[fixed]
sampler = "heun"
batch = 4

[axes]
steps = [120, 160]
seeds = {start = 0, count = 10}
"""


def cell_dirs(out: Path) -> list[Path]:
    root = out / CELLS
    return [d for shard in root.iterdir() for d in shard.iterdir()] if root.is_dir() else []


def finished(out: Path) -> int:
    return sum(1 for d in cell_dirs(out) if not d.name.startswith(".") and (d / "result.json").is_file())


def start_sweep(spec: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "studio", "sweep", str(spec), "--out", str(out), "--workers", "1",
                             "--no-report"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(out: Path, cells: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while finished(out) < cells:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < timeout, "the sweep made no progress"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_sweep_keeps_whole_cells_and_the_rerun_computes_only_the_missing(tmp_path, capsys):
    spec_path = tmp_path / "slow.toml"
    spec_path.write_text(SLOW_CELLS)
    spec = load_spec(spec_path)
    total = len(spec.cells)
    out = tmp_path / "sweep"

    # SIGTERM: the sweep stops cleanly, says how many cells it kept, exits 128 + 15
    proc = start_sweep(spec_path, out)
    wait_for(out, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    kept = finished(out)
    last = err.strip().splitlines()[-1]
    assert last.startswith("studio: error: interrupted;") and f"{kept} of {total} cells are in" in last, err

    # SIGKILL of the whole process group (driver, workers and multiprocessing's resource tracker)
    proc = start_sweep(spec_path, out)
    wait_for(out, kept + 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    record = user_cache_dir() / POOLS_FOLDER / f"{proc.pid}.json"
    semaphores = json.loads(record.read_text())
    shm = Path("/dev/shm")
    if shm.is_dir():  # Linux: the killed pool's named semaphores are still there
        assert semaphores and all((shm / f"sem.{n.lstrip('/')}").exists() for n in semaphores)
    present = [d for d in cell_dirs(out) if not d.name.startswith(".")]
    assert kept + 3 <= len(present) < total
    for d in present:  # no half-written cell is ever visible
        assert {p.name for p in d.iterdir()} == CELL_FILES, d
        assert read_arrays(out, d.name)["x"].shape == (4, 3, 16, 16)
        assert read_result(out, d.name)["status"] == "ok"

    # the re-run computes exactly the missing cells, and removes the killed run's staging folders
    assert main(["sweep", str(spec_path), "--out", str(out), "--workers", "1", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert f"{total - len(present)} of {total} cells to compute" in err
    assert f"{total - len(present)} cells computed, {len(present)} already there" in err
    assert finished(out) == total
    assert not [d for d in cell_dirs(out) if d.name.startswith(".")]
    # ... and unlinks the killed pool's semaphores
    assert not record.exists()
    assert not any((shm / f"sem.{n.lstrip('/')}").exists() for n in semaphores)

    # every cell, whichever run made it, is the recipe's own image
    for cell in spec.cells[::7]:
        x = Run(cell.recipe).run_to_end().final().numpy()
        assert np.array_equal(read_arrays(out, cell.key)["x"], x)


SMALL = """\
title = "exact mixture: sampler error against NFE"
model = "gmm"
reference_steps = 400

[fixed]
batch = 8
spacing = "linspace"

[axes]
sampler = ["ddim", "heun", "dpmpp_2m"]
steps = [10, 20, 40]
seeds = [1, 2]
"""


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    spec_path = folder / "small.toml"
    spec_path.write_text(SMALL)
    spec = load_spec(spec_path)
    with open(os.devnull, "w") as quiet:
        stats = run_sweep(spec, folder / "out", workers=2, stream=quiet)
    return spec, folder / "out", stats


def settings_rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["settings"]


@pytest.mark.slow
def test_the_distance_to_the_reference_solve_falls_at_each_sampler_order(small_sweep):
    """DDIM is a first-order solver of the probability-flow ODE (Song et al. 2021; Euler in σ), Heun
    second order (Karras et al. 2022): doubling the steps halves DDIM's error and quarters Heun's."""
    spec, out, stats = small_sweep
    assert stats.computed == len(spec.cells) == 18
    err = {(r["sampler"], r["steps"]): r["ref_distance"] for r in settings_rows(out)}
    for s in ("ddim", "heun", "dpmpp_2m"):
        assert err[s, 10] > err[s, 20] > err[s, 40]
    assert 1.6 < err["ddim", 20] / err["ddim", 40] < 2.4
    assert err["heun", 10] / err["heun", 20] > 3.0 and err["heun", 20] / err["heun", 40] > 3.0
    # NFE as the samplers count it: Heun evaluates twice per step but once on the last
    nfe = {(r["sampler"], r["steps"]): r["nfe"] for r in settings_rows(out)}
    assert nfe["ddim", 20] == 20 and nfe["dpmpp_2m", 20] == 20 and nfe["heun", 20] == 2 * 20 - 1


@pytest.mark.slow
def test_the_reference_itself_is_at_distance_zero_and_mixture_weights_match_the_truth(tmp_path):
    """A cell run with the reference's own sampler and steps is the reference (distance exactly 0).
    Unlabelled samples carry the mixture weights π (up to sampling error: 256 images, TV < 0.12);
    labelled ones carry all their weight on their component."""
    spec_path = tmp_path / "w.toml"
    spec_path.write_text('model = "gmm"\nreference_steps = 60\n[fixed]\nsampler = "dpmpp_2m"\nsteps = 60\nbatch = 64\n'
                         '[axes]\nlabel = [0, 2]\nseeds = {start = 0, count = 4}\n')
    labelled = load_spec(spec_path)
    uncond_path = tmp_path / "u.toml"
    uncond_path.write_text('model = "gmm"\nreference_steps = 60\n[fixed]\nsampler = "dpmpp_2m"\nsteps = 60\n'
                           'batch = 64\n[axes]\nseeds = {start = 0, count = 4}\n')
    with open(os.devnull, "w") as quiet:
        run_sweep(labelled, tmp_path / "l", workers=1, stream=quiet)
        run_sweep(load_spec(uncond_path), tmp_path / "u", workers=1, stream=quiet)
    for r in json.loads((tmp_path / "l" / "results.json").read_text())["cells"]:
        assert r["metrics"]["ref_distance"] == 0.0
        assert r["metrics"]["weight_error"] < 1e-3
    (row,) = settings_rows(tmp_path / "u")
    assert row["images"] == 256
    assert row["weight_error"] < 0.12
    assert row["weight_error"] == pytest.approx(
        0.5 * np.abs(np.array(row["component_weights"]) - np.array([0.4, 0.3, 0.2, 0.1])).sum(), abs=1e-3)


def test_a_cell_is_reproduced_alone_by_studio_sample(small_sweep, tmp_path, capsys):
    spec, out, _ = small_sweep
    cell = spec.cells[4]
    folder = out / CELLS / cell.key[:2] / cell.key
    assert main(["sample", "--recipe", str(folder / "recipe.json"), "--out", str(tmp_path / "again"),
                 "--save-raw", "--quiet"]) == 0
    with np.load(tmp_path / "again" / "trajectory.npz") as f:
        assert np.array_equal(f["xt"][-1], read_arrays(out, cell.key)["x"])
    assert Recipe.load(folder / "recipe.json") == cell.recipe
    doc = json.loads((folder / "recipe.json").read_text())
    assert "versions" in doc


def test_the_report_tables_and_figures_are_redrawn(small_sweep, capsys):
    spec, out, _ = small_sweep
    for p in ("contact_sheet.png", "results.csv", "settings.csv"):
        (out / p).unlink()
    for p in (out / "plots").iterdir():
        p.unlink()
    assert main(["sweep", "--report", str(out)]) == 0
    assert {p.name for p in (out / "plots").iterdir()} >= {"ref_distance_vs_nfe.png", "weight_error_vs_nfe.png",
                                                           "seconds_per_image_vs_nfe.png"}
    assert not any("vs_scale" in p.name for p in (out / "plots").iterdir())  # scale is not an axis here
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("key,sampler,steps,seed,status,") and len(lines) == 1 + len(spec.cells)
    settings = (out / "settings.csv").read_text().splitlines()
    assert settings[0].startswith("sampler,steps,cells,failed,images,") and len(settings) == 1 + 9
    assert all(",2,0,16," in row for row in settings[1:])  # two seeds of 8 images per setting
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as im:
        assert im.width > 3 * 160 and im.height > 3 * 160  # 3 steps across, 3 samplers down
    results = json.loads((out / "results.json").read_text())
    assert all(Recipe.from_dict(c["recipe"]) == cell.recipe for c, cell in zip(results["cells"], spec.cells))


def test_a_second_sweep_into_a_busy_folder_is_refused(small_sweep, capsys):
    from studio.session.atomic import Reservation

    spec, out, _ = small_sweep
    with Reservation(out / "sweep.json", overwrite=True):
        assert main(["sweep", spec.path, "--out", str(out), "--workers", "1"]) == 2
    assert "another studio process is writing it right now" in capsys.readouterr().err
    assert main(["sweep", spec.path, "--out", str(out), "--workers", "1", "--no-report"]) == 0
    assert "all 18 cells are already in" in capsys.readouterr().err
