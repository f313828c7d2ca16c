"""``studio sample --prediction-type``: a recipe field that reaches the single-file loader, is recorded in the
recipe and replayed from it, keys the model cache, and is refused in one line for other models.

A tiny SD 1.x-like pipeline written as a single file in the original layout (checkpoint_files.py), its
config folder standing in for the shipped ``assets/configs``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from studio.checkpoints import configs as configs_module
from studio.cli import main
from studio.session.recipe import Recipe
from studio.session.runner import ModelCache

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

SIZE = 16


@pytest.fixture
def tiny_configs(tiny_sd1_file, monkeypatch):
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--prompt", "a red seven", "--steps", "2", "--batch", "1",
            "--width", str(SIZE), "--height", str(SIZE), "--quiet", "--save-raw", "--out", str(out), *extra]


@pytest.mark.slow
def test_v_prediction_samples_differently_and_the_recipe_replays_it(tiny_sd1_file, tiny_configs, tmp_path, capsys):
    path = tiny_sd1_file[0]
    eps, v, replay = tmp_path / "eps", tmp_path / "v", tmp_path / "replay"
    assert main(sample_args(path, eps, "--prediction-type", "epsilon")) == 0
    assert main(sample_args(path, v, "--prediction-type", "v_prediction")) == 0
    assert json.loads((v / "recipe.json").read_text())["prediction_type"] == "v_prediction"
    assert main(["sample", "--recipe", str(v / "recipe.json"), "--quiet", "--save-raw", "--out", str(replay)]) == 0
    assert "warning" not in capsys.readouterr().err
    xe, xv, xr = (np.load(d / "trajectory.npz")["xt"] for d in (eps, v, replay))
    assert np.array_equal(xe[0], xv[0])  # the same noise: only what the UNet's output means changed
    assert not np.allclose(xe[-1], xv[-1], atol=1e-3)
    assert np.array_equal(xv, xr)


def test_the_prediction_type_keys_the_model_cache(tiny_sd1_file, tiny_configs):
    cache = ModelCache()
    base = Recipe(model=str(tiny_sd1_file[0]), prompt="a red seven")
    eps = cache.get(base)
    assert eps.info.prediction_type == "epsilon"  # the SD 1.x family's own
    v = cache.get(base.replace(prediction_type="v_prediction"))
    assert v is not eps and v.info.prediction_type == "v_prediction"
    assert cache.key == ModelCache.key_for(base.replace(prediction_type="v_prediction"))
    assert cache.get(base.replace(prediction_type="v_prediction")) is v


def test_refused_in_one_line_for_a_model_that_is_not_a_single_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--model", "gmm", "--steps", "2", "--batch", "1", "--prediction-type", "v_prediction",
                 "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("studio: error: gmm: a prediction type is chosen for "
                                                   "single-file checkpoints only")
    assert not out.exists()
    with pytest.raises(SystemExit, match="2"):  # not a choice: argparse's one line
        main(["sample", "--model", "gmm", "--prediction-type", "sample", "--out", str(out)])
    assert "invalid choice: 'sample'" in capsys.readouterr().err


def test_a_sweep_takes_it_in_fixed_and_its_workers_open_the_model_with_it(tiny_sd1_file, tiny_configs):
    from studio.sweep.spec import SpecError, parse_spec
    from studio.sweep.worker import CellWorker

    model = json.dumps(str(tiny_sd1_file[0]))
    with pytest.raises(SpecError, match="prediction_type.*set it in \\[fixed\\]"):
        parse_spec(f'model = {model}\n[axes]\nprediction_type = ["epsilon", "v_prediction"]\n', "s.toml")
    spec = parse_spec(f'model = {model}\nmetrics = []\n[fixed]\nprediction_type = "v_prediction"\n', "s.toml")
    assert spec.cells[0].recipe.prediction_type == "v_prediction"
    worker = CellWorker({"model": str(tiny_sd1_file[0]), "device": "cpu", "prediction_type": spec.fixed["prediction_type"],
                         "metrics": [], "reference_steps": 2})
    assert worker.load_error is None and worker.model.info.prediction_type == "v_prediction"
