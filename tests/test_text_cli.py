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
    with pytest.raises(RecipeError, match="label or a prompt"):
        Recipe(guidance="cfg").validate()
    with pytest.raises(RecipeError, match="width"):
        Recipe(prompt="x", width="wide").validate()
    Recipe(prompt="", guidance="cfg").validate()


def test_cli_sample_text_model(pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--model", str(pipeline), "--prompt", "a red 7 on a blue background and more words",
                 "--negative-prompt", "green", "--sampler", "euler", "--steps", "5", "--batch", "2", "--guidance",
                 "cfg", "--scale", "3", "--width", "16", "--height", "24", "--out", str(out), "--save-raw", "--quiet"])
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
    assert Image.open(out / "xt" / "0005.png").size == (8 * 2 + 3, 12 + 2)  # preview grid of 2 at latent size
    # the recipe reproduces the run exactly
    out2 = tmp_path / "again"
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--out", str(out2), "--save-raw", "--quiet"]) == 0
    assert np.array_equal(np.load(out2 / "trajectory.npz")["xt"], raw["xt"])


def test_cli_full_frames_and_final_decode(pipeline, tmp_path, cache):
    out = tmp_path / "full"
    assert main(["sample", "--model", str(pipeline), "--prompt", "a cat", "--steps", "3", "--batch", "1",
                 "--decode-frames", "full", "--out", str(out), "--quiet"]) == 0
    frame = Image.open(out / "x0" / "0003.png")
    assert frame.size == (16 + 2, 16 + 2)  # a full decode: image size, with the grid's border
    model = cache.get(recipe(pipeline))
    traj = execute(recipe(pipeline, prompt="a cat", steps=3, batch=1, guidance="none", scale=3.0, seed=0,
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
    assert Image.open(out / "x0" / "0002.png").size == (16 + 2, 16 + 2)  # tiny decoder: full resolution


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
