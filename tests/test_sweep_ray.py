"""The same sweep on the local pool and on a real Ray instance (started here on 127.0.0.1 with 2 CPUs,
no mock): bit-identical cells on CPU for the exact mixture and the digits model, and a worker actor
killed mid-sweep is replaced with nothing lost or written twice."""
import json
import logging
import os
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
    assert (tmp_path / "ray" / "reference.npz").is_file()


def test_the_test_instance_stays_on_loopback(local_ray):
    """conftest keeps Ray off the machine's network address (it would otherwise replace 127.0.0.1)."""
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
