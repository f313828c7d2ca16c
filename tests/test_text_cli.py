"""Text-to-image pipelines through the session (Run, branches) and the `studio` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.session.parameters import parse_parameters
from studio.session.recipe import Recipe, RecipeError
from studio.session.runner import ModelCache, Run, execute
from text_pipelines import make_sd_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("cli") / "sd")


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def recipe(folder, **kw):
    base = dict(model=str(folder), sampler="ddim", steps=6, batch=2, seed=3, guidance="cfg", scale=4.0,
                prompt="a red 7", negative_prompt="blue")
    base.update(kw)
    return Recipe(**base)


def test_run_keeps_latents_and_previews(pipeline, cache):
    traj = execute(recipe(pipeline), cache)
    assert len(traj) == 6 and traj.finished
    assert tuple(traj.final().shape) == (2, 4, 8, 8)  # latents
    assert traj.frame_xt(0).shape == (2, 8, 8, 3) and traj.frame_x0(5).dtype == np.uint8  # previews, latent size


def test_changed_prompt_branch_continues_exactly(pipeline, cache):
    """Branching with a new prompt keeps the parent's chain up to the branch step (same plan: exact continuation)
    and then follows the new prompt; the same prompt reproduces the parent exactly."""
    parent = execute(recipe(pipeline), cache)
    same = Run(recipe(pipeline), cache=cache, parent=parent, from_step=2).run_to_end()
    assert torch.equal(same.final(), parent.final())
    other = Run(recipe(pipeline, prompt="a green 3"), cache=cache, parent=parent, from_step=2)
    assert other.offset == 3
    traj = other.run_to_end()
    assert (traj.final() - parent.final()).abs().max() > 1e-3
    # its recipe replays it from scratch
    again = execute(Recipe.from_dict(json.loads(traj.recipe.to_json())), cache)
    assert torch.equal(again.final(), traj.final())


def test_recipe_rules_for_prompts():
    with pytest.raises(RecipeError, match="not both"):
        Recipe(prompt="x", label=1).validate()
    with pytest.raises(RecipeError, match="needs a class label"):
        Recipe(guidance="cfg").validate()
    with pytest.raises(RecipeError, match="width"):
        Recipe(prompt="x", width="wide").validate()
    Recipe(prompt="", guidance="cfg").validate()


def test_cli_sample_text_model(pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--model", str(pipeline), "--prompt", "a red 7 on a blue background and more words",
                 "--negative-prompt", "green", "--sampler", "euler", "--steps", "5", "--batch", "2", "--guidance",
                 "cfg", "--scale", "3", "--width", "16", "--height", "24", "--preview", "linear", "--out", str(out),
                 "--save-raw", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the prompt is longer than the model's 16 tokens; this was cut" in err
    final = Image.open(out / "final.png")
    assert min(final.size) >= 256  # enlarged to be looked at
    params = parse_parameters(final.text["parameters"])
    assert params["prompt"].startswith("a red 7") and params["negative_prompt"] == "green"
    assert (params["steps"], params["sampler"], params["scale"], params["width"], params["height"]) == (5, "euler", 3.0,
                                                                                                        16, 24)
    raw = np.load(out / "trajectory.npz")
    assert raw["xt"].shape == (6, 2, 4, 12, 8)  # latents: (steps+1, batch, C, H/f, W/f)
    grid = (8 * 2 + 3, 12 + 2)  # the preview grid of 2 at latent size, enlarged by whole pixels as final.png
    k = -(-256 // min(grid))
    assert Image.open(out / "xt" / "0005.png").size == (grid[0] * k, grid[1] * k)
    # the recipe reproduces the run exactly
    out2 = tmp_path / "again"
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--out", str(out2), "--save-raw", "--quiet"]) == 0
    assert np.array_equal(np.load(out2 / "trajectory.npz")["xt"], raw["xt"])


def test_cli_full_frames_and_final_decode(pipeline, tmp_path, cache):
    out = tmp_path / "full"
    assert main(["sample", "--model", str(pipeline), "--prompt", "a cat", "--steps", "3", "--batch", "1",
                 "--decode-frames", "full", "--out", str(out), "--quiet"]) == 0
    frame = Image.open(out / "x0" / "0003.png")
    assert frame.size == (18 * 15, 18 * 15)  # a full decode: image size with the grid's border, enlarged to ≥ 256
    model = cache.get(recipe(pipeline))
    ran = json.loads((out / "recipe.json").read_text())
    assert ran["guidance"] == "cfg"  # a prompt is guided by default
    traj = execute(recipe(pipeline, prompt="a cat", steps=3, batch=1, guidance="cfg", scale=ran["scale"], seed=0,
                          negative_prompt=None), cache)
    decoded = ((model.decode(traj.final())[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    final = np.asarray(Image.open(out / "final.png").convert("RGB"))
    scale = final.shape[0] // (16 + 2)  # the grid (one image and a 1-px border) enlarged by a whole number
    inner = final[scale:scale + 16 * scale:scale, scale:scale + 16 * scale:scale]
    assert np.array_equal(inner, decoded.numpy())


@pytest.mark.parametrize("args,pattern", [
    (["--label", "1"], "not both"),
    (["--guidance", "classifier", "--scale", "2"], "classifier guidance is not possible"),
    (["--width", "15"], "multiple of 2"),
    (["--preview", "tiny"], "needs an AutoencoderTiny folder"),
])
def test_cli_refuses_with_one_line(pipeline, tmp_path, capsys, args, pattern):
    code = main(["sample", "--model", str(pipeline), "--prompt", "x", "--steps", "2", "--out",
                 str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code != 0 and pattern in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_info_shows_pipeline(pipeline, capsys):
    assert main(["info", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert "StableDiffusionPipeline" in out and "4x8x8" in out and "CLIPTextModel" in out


def test_tiny_autoencoder_preview(pipeline, tmp_path, capsys):
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)
    tiny.save_pretrained(str(tmp_path / "taesd"))
    out = tmp_path / "tiny"
    assert main(["sample", "--model", str(pipeline), "--prompt", "x", "--steps", "2", "--batch", "1",
                 "--preview", "tiny", "--preview-vae", str(tmp_path / "taesd"), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert Image.open(out / "x0" / "0002.png").size == (18 * 15, 18 * 15)  # tiny decoder: full resolution, enlarged


def test_builtin_text_model_by_name(tmp_path, capsys):
    """`digits-text` is a name like `default` and `gmm` everywhere a model is named (sample, info, recipes)."""
    from studio.core.loading import TEXT_MODEL_DIR

    if not (TEXT_MODEL_DIR / "model_index.json").exists():
        pytest.skip("the built-in text model is not in this checkout")
    assert main(["info", "digits-text"]) == 0
    assert "sample prompt:   a red 7 on a blue background" in capsys.readouterr().out
    out = tmp_path / "dt"
    assert main(["sample", "--model", "digits-text", "--prompt", "a red 7", "--guidance", "cfg", "--steps", "2",
                 "--batch", "1", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["model"] == "digits-text" and recipe["scale"] == 3.0  # the model's recommended CFG scale


# -- guidance by default, and what the frames show -------------------------------------------------------
def test_a_prompt_is_guided_by_default_so_a_negative_prompt_acts(pipeline, tmp_path, capsys):
    """As diffusers' pipelines: a prompt without --guidance runs classifier-free guidance at the model's
    recommended scale (else the fallback), so a negative prompt changes the image; with guidance off a
    negative prompt is refused in one line that says how to turn it on."""
    from studio.core.guidance import default_scale
    from studio.core.loading import read_recommended_scales

    runs = {}
    for name, extra in (("plain", []), ("negative", ["--negative-prompt", "green"])):
        out = tmp_path / name
        assert main(["sample", "--model", str(pipeline), "--prompt", "a red 7", "--steps", "3", "--batch", "1",
                     "--preview", "linear", "--save-raw", "--quiet", "--out", str(out), *extra]) == 0, \
            capsys.readouterr().err
        recipe = json.loads((out / "recipe.json").read_text())
        assert recipe["guidance"] == "cfg"
        assert recipe["scale"] == default_scale("cfg", read_recommended_scales(pipeline))
        runs[name] = np.load(out / "trajectory.npz")["xt"]
    assert np.abs(runs["plain"] - runs["negative"]).max() > 1e-4
    capsys.readouterr()
    code = main(["sample", "--model", str(pipeline), "--prompt", "a red 7", "--negative-prompt", "green",
                 "--guidance", "none", "--out", str(tmp_path / "off"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--guidance cfg" in err and "negative prompt" in err
    assert not (tmp_path / "off").exists()
    # the same rule for recipes (and so sweeps and the window): validation refuses it
    with pytest.raises(RecipeError, match="guidance cfg"):
        Recipe(prompt="a", negative_prompt="b", guidance="none").validate()
    with pytest.raises(RecipeError, match="needs a prompt"):
        Recipe(negative_prompt="b").validate()
    assert Recipe(label=3).validate().guidance == "none"  # class models keep plain conditional sampling


class StepClock:
    """A clock whose readings are given: the timing probe then measures what the test says."""

    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_the_default_preview_is_the_full_decode_where_it_is_cheap(pipeline):
    """decode_share times UNet evaluations and full decodes (the clock injected: start and end of each of the
    three timed calls of each, the fastest kept), and default_preview decodes fully when the share is at most FULL_DECODE_SHARE."""
    from studio.core.loading import load_model
    from studio.session.decodes import FULL_DECODE_SHARE, decode_share, default_preview

    model = load_model(str(pipeline), "cpu")
    step, cheap, dear = 1.0, FULL_DECODE_SHARE * 0.5, FULL_DECODE_SHARE * 2
    assert decode_share(model, StepClock([0.0, step] * 3 + [5.0, 5.0 + cheap] * 3)) == pytest.approx(cheap)
    assert default_preview(model, StepClock([0.0, step] * 3 + [5.0, 5.0 + cheap] * 3)) == "full"
    assert default_preview(model, StepClock([0.0, step] * 3 + [5.0, 5.0 + dear] * 3)) == "linear"


def test_captions_say_what_a_latent_frame_shows(pipeline):
    """A caption names the linear preview, the TAESD preview or the full VAE decode; frames that are full
    decodes (preview full) are the decode cache, nothing is decoded twice."""
    from studio.session.compose import step_caption

    cache = ModelCache()
    model = cache.get(recipe(pipeline))
    model.set_preview("linear")
    traj = execute(recipe(pipeline, steps=2), cache)
    assert step_caption(traj, 1, "xt", full=False).endswith("(linear preview)")
    assert step_caption(traj, 1, "xt").endswith("(full VAE decode)")  # exports show the full decode
    model.set_preview("full")
    traj = execute(recipe(pipeline, steps=2), cache)
    assert traj.preview == "full" and step_caption(traj, 2, "x0", full=False).endswith("(full VAE decode)")
    assert traj.decodes.peek(2, "xt") is traj.frame_xt(2) and traj.decodes.peek(1, "x0") is traj.frame_x0(1)
    assert traj.frame_xt(2).shape[1:3] == (16, 16)  # image size, not latent size
