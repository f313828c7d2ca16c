"""Sweep specs: the cells they make are ordinary validated recipes, and every bad spec is one line
naming the spec's line, before anything runs (no folder, no worker)."""
import json

import pytest

from studio.cli import main
from studio.session.recipe import Recipe
from studio.sweep.cells import canonical_json, cell_key
from studio.sweep.spec import SPEC_KEYS, SpecError, load_spec, parse_spec

GOOD = """\
title = "a small grid"
model = "gmm"

[fixed]
batch = 2
guidance = "cfg"
label = 1

[axes]
sampler = ["ddim", "euler"]
steps = [4, 8]
scale = {start = 1.0, stop = 3.0, count = 3}
seeds = {start = 10, count = 2}
"""


def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "grid.toml")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_cells_are_the_cross_product_of_validated_recipes():
    spec = parse_spec(GOOD, "grid.toml")
    assert len(spec.cells) == 2 * 2 * 3 * 2
    assert [a.name for a in spec.axes] == ["sampler", "steps", "scale", "seed"]
    assert spec.axes[2].values == (1.0, 2.0, 3.0) and spec.axes[3].values == (10, 11)
    first = spec.cells[0]
    assert first.values == {"sampler": "ddim", "steps": 4, "scale": 1.0, "seed": 10}
    expected = Recipe(model="gmm", sampler="ddim", steps=4, scale=1.0, seed=10, batch=2, guidance="cfg",
                      label=1).validate().resolved()
    assert first.recipe == expected
    assert first.key == cell_key(expected)
    # the key is the recipe's: the same recipe written another way has it, any change does not
    assert cell_key(Recipe.from_json(expected.to_json())) == first.key
    assert len({c.key for c in spec.cells}) == len(spec.cells)
    assert json.loads(canonical_json(expected)) == {k: v for k, v in expected.to_dict().items() if k != "versions"}
    assert spec.pool == ("seed",) and spec.setting_axes == ["sampler", "steps", "scale"]
    assert spec.metrics == ("weight_error", "ref_distance", "component_weights", "seconds_per_image", "nfe")
    assert (spec.reference_steps, spec.fd_reference) == (SPEC_KEYS["reference_steps"].default,
                                                        SPEC_KEYS["fd_reference"].default)


def test_settings_a_sampler_does_not_take_merge_into_one_cell():
    spec = parse_spec('model = "gmm"\n[axes]\nsampler = ["ddim", "euler"]\neta = [0.0, 1.0]\n', "s.toml")
    assert spec.merged == 1  # euler has no eta: its two cells are one recipe
    assert [(c.values["sampler"], c.values["eta"]) for c in spec.cells] == [("ddim", 0.0), ("ddim", 1.0),
                                                                            ("euler", None)]


def test_the_model_folder_recommended_scale_is_used_when_the_spec_names_none():
    from studio.core.loading import DEFAULT_MODEL_DIR, read_recommended_scales

    if not (DEFAULT_MODEL_DIR / "recommended.json").exists():
        pytest.skip("the digits model is not in this checkout")
    spec = parse_spec('[fixed]\nlabel = 3\n[axes]\nguidance = ["cfg", "classifier"]\n', "s.toml")
    rec = read_recommended_scales(DEFAULT_MODEL_DIR)
    assert [c.recipe.scale for c in spec.cells] == [rec["cfg"], rec["classifier"]]


@pytest.mark.parametrize("text, line, words", [
    ('model = "gmm"\n[axes]\nsteps = [4,\n', 3, "not valid TOML"),
    ('model = "gmm"\nsteps = 4\n', 2, "steps: unknown key; recipe settings go in [fixed] or [axes]"),
    ('model = "gmm"\nmetric = []\n', 2, "metric: unknown key (did you mean 'metrics'?)"),
    ('model = "gmm"\n[fixed]\nbatch = 2\n\n[axes]\nsampler = ["ddim"]\nstpes = [4, 8]\n', 7,
     "axes.stpes: unknown recipe setting 'stpes' (did you mean 'steps'?)"),
    ('model = "gmm"\n[axes]\nsampler = ["ddim"]\nsteps = []\n', 4, "axes.steps: is empty"),
    ('model = "gmm"\n[axes]\nsampler = ["ddim"]\n# a comment\nsteps = [4, 0]\n', 5,
     "axes.steps: steps must be an integer from 1 to 10000, got 0"),
    ('model = "gmm"\n[axes]\nsampler = ["ddim", "nope"]\n', 3, "axes.sampler: unknown sampler 'nope'"),
    ('model = "gmm"\n[fixed]\nbatch = 0\n', 3, "fixed.batch: batch must be an integer from 1 to 1024"),
    ('model = "gmm"\n[fixed]\nprompt = "a cat"\n[axes]\nlabel = [0, 1]\n', 5,
     "axes.label: the cell label=0 is refused: a recipe takes a class label or a prompt"),
    ('model = "gmm"\n[axes]\nsteps = 4\n', 3, "axes.steps: must be a list of values"),
    ('model = "gmm"\n[axes]\nmodel = ["gmm", "default"]\n', 3, "axes.model: cannot be an axis"),
    ('model = "gmm"\n[axes]\nsteps = [4, 4]\n', 3, "axes.steps: lists 4 twice"),
    ('model = "gmm"\nmetrics = ["accuracy"]\n', 2, "metrics: unknown metric 'accuracy' for model 'gmm'; "
     "choose from weight_error, ref_distance, component_weights, seconds_per_image, nfe"),
    ('model = "gmm"\nmetrics = "nfe"\n', 2, "metrics: metrics must be a list of strings, got 'nfe'"),
    ('model = "gmm"\n\nreference_steps = 0\n', 3, "reference_steps: reference_steps must be an integer from 1 to "
     "100000, got 0"),
    ('model = "gmm"\nfd_reference = 2.5\n', 2, "fd_reference: fd_reference must be an integer from 1 to 1000000"),
    ('title = 3\nmodel = "gmm"\n', 1, "title: title must be a string, got 3"),
    ('model = ""\n', 1, "model: is empty; name a model"),
    ('model = "gmm"\nreference_step = 40\n', 2, "unknown key (did you mean 'reference_steps'?); the spec takes "
     "title, model, metrics, pool, reference_steps, fd_reference, fixed, axes"),
    ('model = "gmm"\npool = ["label"]\n[axes]\nsteps = [4]\n', 2, "pool: 'label' is not an axis"),
    ('model = "no/such/folder"\n', 1, "model: 'no/such/folder' is not a built-in model"),
    ('model = "gmm"\n[fixed]\nsteps = 4\n[axes]\nsteps = [4, 8]\n', 5, "axes.steps: steps is both fixed and an axis"),
])
def test_a_bad_spec_is_one_line_naming_its_line(text, line, words):
    msg = spec_error(text)
    assert msg.startswith(f"grid.toml line {line}: "), msg
    assert words in msg, msg


def test_studio_sweep_refuses_a_bad_spec_before_anything_runs(tmp_path, capsys):
    spec = tmp_path / "grid.toml"
    spec.write_text('model = "gmm"\n[fixed]\nbatch = 2\n[axes]\nsampler = ["ddim", "heun"]\nsteps = [4, -1]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studio: error: ") and f"{spec} line 6: axes.steps" in err[0], err
    assert not out.exists()  # nothing ran, nothing was made


@pytest.mark.slow
def test_a_value_only_the_model_refuses_is_caught_before_any_cell_runs(tmp_path, capsys):
    """The gmm has 4 classes: label 7 passes the recipe's checks but not the model's; the driver checks
    every distinct setting against the model's description before any cell is computed."""
    spec = tmp_path / "grid.toml"
    spec.write_text('model = "gmm"\n[fixed]\nbatch = 2\nsteps = 3\n\n[axes]\nlabel = [0, 7]\nseeds = [0, 1]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("studio: error")]
    assert len(err) == 1 and "grid.toml line 7: axes.label:" in err[0] and "label 7 is out of range" in err[0], err
    assert not any((out / "cells").rglob("result.json"))


def test_the_cli_needs_a_spec_and_a_folder(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "o")]) == 2
    assert "give a spec" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read the spec" in capsys.readouterr().err
    assert main(["sweep", "--report", str(tmp_path)]) == 2
    assert "no sweep.json here" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    ok = tmp_path / "ok.toml"
    ok.write_text('model = "gmm"\n')
    assert main(["sweep", str(ok), "--out", str(tmp_path / "busy")]) == 2
    assert "is not empty and holds no sweep" in capsys.readouterr().err
    assert load_spec(ok).cells[0].recipe.model == "gmm"


def test_a_ray_cluster_that_cannot_be_reached_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    pytest.importorskip("ray")
    spec = tmp_path / "grid.toml"
    spec.write_text('model = "gmm"\n[axes]\nsteps = [2, 3]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--ray", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in err[0], err
    assert not out.exists()
    assert main(["sweep", str(spec), "--out", str(out), "--ray", "nonsense"]) == 2
    assert "give auto or the cluster's address as HOST:PORT" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--out", str(out), "--gpus-per-worker", "1"]) == 2
    assert "--gpus-per-worker applies to --ray" in capsys.readouterr().err


def test_a_spec_key_given_is_checked_and_kept():
    spec = parse_spec('model = "gmm"\nreference_steps = 40\nfd_reference = 300\ntitle = "t"\n'
                      'metrics = ["nfe", "weight_error", "nfe"]\n', "s.toml")
    assert (spec.reference_steps, spec.fd_reference, spec.title) == (40, 300, "t")
    assert spec.metrics == ("nfe", "weight_error")
    assert spec.to_dict()["reference_steps"] == 40 and spec.to_dict()["fd_reference"] == 300


def test_the_help_lists_every_spec_key_and_metric_from_their_declarations(capsys):
    from studio.evaluation.metrics import METRICS

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for o in SPEC_KEYS.values():
        assert f"{o.name} {o.help}" in text, o.name
    assert "an integer from 1 to 100000; default 500" in text
    for name, m in METRICS.items():
        assert f" {name} " in text and m.label in text


def _image(path, colour):
    from PIL import Image

    Image.new("RGB", (24, 20), colour).save(path)
    return path


def test_files_a_spec_names_are_read_relative_to_its_folder(tmp_path, monkeypatch):
    """init_image, init_noise, vae, classifier and each LoRA's file, in [fixed] and [axes], as model is."""
    import numpy as np

    (tmp_path / "in").mkdir()
    _image(tmp_path / "in" / "a.png", (200, 20, 20))
    np.save(tmp_path / "in" / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('model = "gmm"\n[fixed]\nbatch = 1\nsteps = 4\nclassifier = "in/clf"\n'
                         'loras = ["in/l.safetensors:0.5"]\nvae = "in/vae"\n[axes]\ninit_image = ["in/a.png"]\n')
    monkeypatch.chdir(tmp_path / "in")  # the working folder plays no part
    spec = load_spec(spec_file)
    assert spec.fixed["classifier"] == str(tmp_path / "in" / "clf")
    assert spec.fixed["vae"] == str(tmp_path / "in" / "vae")
    assert spec.fixed["loras"] == [f"{tmp_path / 'in' / 'l.safetensors'}:0.5"]
    assert [c.recipe.init_image for c in spec.cells] == [str(tmp_path / "in" / "a.png")]
    spec_file.write_text('model = "gmm"\n[fixed]\nbatch = 1\nsteps = 4\n[axes]\ninit_noise = ["in/x.npy"]\n')
    assert load_spec(spec_file).cells[0].recipe.init_noise == str(tmp_path / "in" / "x.npy")


def test_an_image_to_start_from_and_the_strength_are_axes_and_each_cell_records_the_images_digest(tmp_path):
    import hashlib

    a, b = _image(tmp_path / "a.png", (200, 20, 20)), _image(tmp_path / "b.png", (20, 20, 200))
    spec_file = tmp_path / "img.toml"
    spec_file.write_text('model = "gmm"\n[fixed]\nbatch = 1\nsteps = 4\n[axes]\n'
                         'init_image = ["a.png", "b.png"]\nstrength = [0.5, 1.0]\n')
    spec = load_spec(spec_file)
    assert [a.name for a in spec.axes] == ["init_image", "strength"] and len(spec.cells) == 4
    for cell in spec.cells:
        path = cell.recipe.init_image
        assert cell.recipe.init_image_sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert cell.values == {"init_image": path, "strength": cell.recipe.strength}
    keys = [c.key for c in spec.cells]
    _image(a, (10, 200, 10))  # an edited image: its cells are other cells, not the ones computed before
    assert [c.key for c in load_spec(spec_file).cells][:2] != keys[:2]
    assert [c.key for c in load_spec(spec_file).cells][2:] == keys[2:]
    b.unlink()
    msg = str(pytest.raises(SpecError, load_spec, spec_file).value)
    assert msg.startswith(f"{spec_file} line 6: axes.init_image: the cell init_image=") and "b.png" in msg


@pytest.mark.slow
def test_an_image_to_image_sweep_runs_each_image_and_strength(tmp_path):
    import contextlib
    import io

    from studio.sweep.cells import read_result

    _image(tmp_path / "a.png", (200, 20, 20))
    _image(tmp_path / "b.png", (20, 20, 200))
    spec_file = tmp_path / "img.toml"
    spec_file.write_text('model = "gmm"\nmetrics = ["nfe"]\n[fixed]\nbatch = 1\nsteps = 10\n[axes]\n'
                         'init_image = ["a.png", "b.png"]\nstrength = [0.3, 0.8]\n')
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--workers", "1", "--no-report"]) == 0
    spec = load_spec(spec_file)
    for cell in spec.cells:
        r = read_result(tmp_path / "out", cell.key)
        assert r["status"] == "ok" and r["recipe"]["init_image_sha256"] == cell.recipe.init_image_sha256
        assert r["metrics"]["nfe"] == int(10 * cell.recipe.strength)  # int(N·s) steps, as diffusers' img2img


def test_a_loras_weight_is_an_axis(tmp_path):
    """Issue 27: "the weight is an axis": ``loras`` takes one LoRA list per cell, each file read relative to
    the spec, so a sweep over a LoRA's weight is an axis of lists."""
    spec_file = tmp_path / "lora.toml"
    spec_file.write_text('model = "gmm"\n[fixed]\nbatch = 1\nsteps = 4\n[axes]\n'
                         'loras = [["l.safetensors:0"], ["l.safetensors:0.5"], ["l.safetensors:1"]]\n')
    spec = load_spec(spec_file)
    lora = tmp_path / "l.safetensors"
    assert [c.recipe.loras for c in spec.cells] == [[f"{lora}:0"], [f"{lora}:0.5"], [f"{lora}:1"]]
    assert len({c.key for c in spec.cells}) == 3
