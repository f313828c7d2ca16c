"""The Recipe is checked against one schema (``Recipe.schema()``): a malformed recipe — a wrong type or shape,
a value out of range, an unknown choice, a broken branch — gives one line naming the field, the value and
what is allowed, never a traceback; the same line from a recipe file, a PNG's recipe chunk, the command
line and the window."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from _gui import open_window, temp_settings  # noqa: F401 (temp_settings: the window's settings in tmp_path)
from studio.cli import build_parser, main
from studio.core.options import Option
from studio.core.samplers import OPTION_SCHEMA, SAMPLERS
from studio.session.export import read_recipe
from studio.session.recipe import OLD_FORMATS, RECIPE_FORMAT, Recipe, RecipeError
from studio.session.runner import Run

pytestmark = pytest.mark.usefixtures("one_thread")

# (settings over a valid gmm recipe, what the one-line message must contain)
MALFORMED = [
    ({"model": 5}, "model must be a non-empty string, got 5"),
    ({"model": ""}, "model must be a non-empty string, got ''"),
    ({"sampler": "warp_drive"}, "unknown sampler 'warp_drive'; choose one of ddpm, ddim"),
    ({"sampler": ["ddim"]}, f"sampler must be one of {', '.join(SAMPLERS)}, got ['ddim']"),
    ({"steps": "50"}, "steps must be an integer from 1 to 10000, got '50'"),
    ({"steps": 2.5}, "steps must be an integer from 1 to 10000, got 2.5"),
    ({"steps": True}, "steps must be an integer from 1 to 10000, got True"),
    ({"steps": 0}, "steps must be an integer from 1 to 10000, got 0"),
    ({"eta": 1.5}, "eta must be a number from 0 to 1 or null, got 1.5"),
    ({"eta": "0.5"}, "eta must be a number from 0 to 1 or null, got '0.5'"),
    ({"sampler": "euler_a", "eta": -0.1}, "eta must be a number from 0 to 1 or null, got -0.1"),
    ({"variance": "learned"}, "unknown variance 'learned'; choose one of fixed_small, fixed_large"),
    ({"sampler": "langevin", "corrector_steps": "3"}, "corrector_steps must be an integer from 0 to 100 or null, got '3'"),
    ({"sampler": "langevin", "corrector_steps": 101}, "corrector_steps must be an integer from 0 to 100 or null, got 101"),
    ({"sampler": "langevin", "snr": 0}, "snr must be a number > 0 and ≤ 1 or null, got 0"),
    ({"guidance": "cfg", "label": 0, "scale": "3"}, "scale must be a number from 0 to 1000, got '3'"),
    ({"guidance": "cfg", "label": 0, "scale": None}, "scale must be a number from 0 to 1000, got None"),
    ({"guidance_interval": [0.1, None]}, "guidance_interval must be a pair [start, end] of numbers from 0 to 1, got [0.1, None]"),
    ({"guidance_interval": [0.1, 0.5, 0.9]}, "guidance_interval must be a pair"),
    ({"guidance_interval": "0 1"}, "guidance_interval must be a pair [start, end] of numbers from 0 to 1, got '0 1'"),
    ({"guidance_interval": [0.8, 0.2], "guidance": "cfg", "label": 0}, "guidance interval must satisfy 0 ≤ start < end ≤ 1"),
    ({"classifier_form": "both"}, "unknown classifier_form 'both'; choose one of eps, mean"),
    ({"classifier": ["a", "b"]}, "classifier must be a non-empty string or null, got ['a', 'b']"),
    ({"label": "3"}, "label must be an integer ≥ 0 or null, got '3'"),
    ({"label": -1}, "label must be an integer ≥ 0 or null, got -1"),
    ({"guidance": "cfg"}, "guidance needs a class label"),
    ({"seed": -5}, "seed must be an integer from 0 to 9223372036854775807, got -5"),
    ({"seed": 2**64}, "seed must be an integer from 0 to 9223372036854775807"),
    ({"batch": [4]}, "batch must be an integer from 1 to 1024, got [4]"),
    ({"spacing": "karras"}, "unknown spacing 'karras'; choose one of leading, trailing, linspace"),
    ({"karras": "yes"}, "karras must be true or false or null, got 'yes'"),
    ({"x0_mode": "squash"}, "unknown x0_mode 'squash'; choose one of none, clip, threshold"),
    ({"eps_from_x0": 1}, "eps_from_x0 must be true or false, got 1"),
    ({"schedule": []}, "schedule must be an object with keys beta_schedule"),
    ({"schedule": {"beta_end": "0.02"}}, "schedule.beta_end must be a number > 0 and < 1 or null, got '0.02'"),
    ({"schedule": {"warp": 9}}, "unknown schedule setting 'warp'; choose from beta_schedule"),
    ({"device": 0}, "device must be a non-empty string, got 0"),
    ({"dtype": "float64"}, "unknown dtype 'float64'; choose one of float32, float16, bfloat16"),
    ({"init_noise": 3}, "init_noise must be a non-empty string or null, got 3"),
    ({"branch": "parent"}, "branch must be an object with keys parent, from_step or null, got 'parent'"),
    ({"branch": {"parent": {}}}, "branch needs 'from_step' (an integer ≥ -1)"),
    ({"branch": {"parent": 7, "from_step": 2}}, "branch.parent must be an object, got 7"),
    ({"branch": {"parent": {}, "from_step": "2"}}, "branch.from_step must be an integer ≥ -1, got '2'"),
    ({"branch": {"parent": {"sampler": "nope"}, "from_step": 2}}, "branch.parent: unknown sampler 'nope'"),
    ({"colour": "blue"}, "unknown recipe setting 'colour'"),
    ({"format": "sampling-studio/recipe@9"}, "unsupported recipe format 'sampling-studio/recipe@9'"),
]
IDS = [next(iter(bad)) + f"-{i}" for i, (bad, _) in enumerate(MALFORMED)]


def _dict(bad: dict) -> dict:
    return {**Recipe(model="gmm", steps=3, batch=1, device="cpu").to_dict(), **bad}


@pytest.mark.parametrize("bad,message", MALFORMED, ids=IDS)
def test_malformed_recipe_is_one_line_naming_field_value_and_what_is_allowed(bad, message):
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict(_dict(bad))
    text = str(e.value)
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("bad,message", MALFORMED, ids=IDS)
def test_the_same_line_from_a_file_and_a_png_chunk(tmp_path, bad, message):
    expected = _message(bad)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_dict(bad)))
    with pytest.raises(RecipeError) as e:
        read_recipe(path)
    assert str(e.value) == f"{path}: {expected}"
    png = tmp_path / "r.png"
    info = PngInfo()
    info.add_text("recipe", json.dumps(_dict(bad)))
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    with pytest.raises(RecipeError) as e:
        read_recipe(png)
    assert str(e.value) == f"{png}: {expected}"


def _message(bad: dict) -> str:
    try:
        Recipe.from_dict(_dict(bad))
    except RecipeError as e:
        return str(e)
    raise AssertionError(f"{bad} was accepted")


@pytest.mark.parametrize("bad,message", [MALFORMED[i] for i in (2, 5, 17, 33, 42)],
                         ids=[IDS[i] for i in (2, 5, 17, 33, 42)])
def test_the_same_line_from_the_command_line(tmp_path, capsys, bad, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_dict(bad)))
    assert main(["sample", "--recipe", str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"studio: error: {path}: {_message(bad)}"]
    assert not (tmp_path / "out").exists()


def test_a_malformed_recipe_stays_out_of_runs():
    """A Recipe built in code with a wrong type is refused by Run before a model is opened."""
    with pytest.raises(RecipeError, match="guidance_interval must be a pair"):
        Run(Recipe(model="gmm", guidance_interval=(0.0, None)))


def test_every_field_is_declared_and_its_default_is_allowed():
    schema = Recipe.schema()
    assert list(schema) == [f.name for f in fields(Recipe)]
    for name, opt in schema.items():
        assert isinstance(opt, Option) and opt.name == name and opt.help, name
        assert opt.check(getattr(Recipe(), name)) == getattr(Recipe(), name)
    assert set(OPTION_SCHEMA) <= set(schema)  # every sampler option is a recipe field
    assert Recipe().validate() == Recipe(guidance="none")  # unset guidance: none without a prompt


def test_command_line_flags_come_from_the_schema():
    """One flag per declared setting (sub-settings of the schedule too), with the declared choices."""
    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    by_flag = {s: a for a in sample._actions for s in a.option_strings}
    for name, opt in Recipe.schema().items():
        for o in (opt.fields if opt.kind == "mapping" else (opt,)):
            if o.cli_flag:
                assert o.cli_flag in by_flag, o.cli_flag
                if o.kind == "choice":
                    assert list(by_flag[o.cli_flag].choices) == list(o.choices)
    assert {"--timestep-spacing", "--x0", "--eta", "--corrector-steps", "--beta-start"} <= set(by_flag)
    assert not {"--branch", "--parent", "--from-step", "--schedule", "--trained-betas"} & set(by_flag)


def test_a_version_1_euler_a_recipe_loads_as_it_ran():
    """recipe@1 files wrote η = 0 for euler_a and ran it with η = 1; they load with the sampler's default.
    In the current format η = 0 means no fresh noise."""
    old = {**_dict({"sampler": "euler_a", "eta": 0.0}), "format": OLD_FORMATS[0]}
    assert Recipe.from_dict(old).sampler_options() == {"eta": 1.0}
    assert Recipe.from_dict({**old, "eta": 0.5}).sampler_options() == {"eta": 0.5}
    assert Recipe.from_dict({**old, "sampler": "ddim"}).sampler_options() == {"eta": 0.0, "prev_timestep": "plan"}
    new = {**old, "format": RECIPE_FORMAT}
    assert Recipe.from_dict(new).sampler_options() == {"eta": 0.0}


def test_a_run_records_the_sampler_options_it_used(gmm):
    """Null options mean the sampler's declared defaults; the recipe a run keeps spells them out (and drops
    options of other samplers), so its file says exactly what ran."""
    r = Recipe(model="gmm", sampler="langevin", steps=2, batch=1, eta=0.3)
    ran = Run(r, model=gmm).run_to_end().recipe
    assert (ran.corrector_steps, ran.snr, ran.eta, ran.variance) == (1, 0.16, None, None)
    assert Recipe.from_json(ran.to_json()) == ran


@pytest.mark.parametrize("index", [2, 17, 42], ids=[IDS[i] for i in (2, 17, 42)])
def test_the_same_line_in_the_window(qtbot, tmp_path, index):
    """Opening a malformed recipe (here from an exported PNG's chunk) shows the same one line, and the
    panel keeps its settings."""
    bad, _ = MALFORMED[index]
    png = tmp_path / "r.png"
    info = PngInfo()
    info.add_text("recipe", json.dumps(_dict(bad)))
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    win = open_window(qtbot, steps=3)
    before = win.current_recipe()
    assert win.open_recipe(str(png)) is None
    assert win.errorLabel.text() == f"{png}: {_message(bad)}"
    assert win.current_recipe() == before


@pytest.mark.parametrize("path", ["/dev/zero", "/nonexistent/recipe.json"])
def test_recipe_load_refuses_devices_and_missing_files_in_one_line(path):
    from studio.session.recipe import Recipe, RecipeError

    with pytest.raises(RecipeError) as e:
        Recipe.load(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_recipe_load_refuses_oversized_files(tmp_path):
    from studio.session.recipe import Recipe, RecipeError

    big = tmp_path / "big.json"
    big.write_text('{"model": "gmm", "x": "' + "a" * (5 << 20) + '"}')
    with pytest.raises(RecipeError, match="big.json"):
        Recipe.load(big)
