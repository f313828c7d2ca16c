"""LoRAs and image-to-image in the web UIs' ``parameters`` text: ``<lora:NAME:WEIGHT>`` tags, "Lora hashes"
(A1111's short hash) and "Denoising strength", written by the studio and read from a web UI's image.

The hash's truth is its definition in A1111 (``modules/hashes.py`` ``addnet_hash_safetensors``): the
SHA-256 of the bytes after the safetensors header (its length is the file's first 8 bytes, little-endian),
cut to 12 hex digits, computed here with hashlib directly.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.checkpoints.lora_tags import short_hash, split_lora_tags
from studio.session.parameters import denoising_strength, format_parameters, parse_parameters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


def addnet_hash(path) -> str:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()[:12]


def lora_file(path, seed: int = 0, metadata=None):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(path), metadata=metadata)
    return path


def recipe(**kw):
    base = dict(prompt="a red 7", negative_prompt=None, steps=20, sampler="euler", karras=None, guidance="cfg",
                scale=3.0, seed=7, width=32, height=32, model="digits-text", guidance_rescale=0.0, label=None,
                loras=[], init_image=None, strength=None, start_step=None)
    base.update(kw)
    return SimpleNamespace(**base)


def webui_png(path, text: str):
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


# -- the text ----------------------------------------------------------------------------------------------------

def test_a_run_with_loras_writes_tags_and_their_web_ui_hashes(tmp_path):
    ink, other = lora_file(tmp_path / "ink style.safetensors", 1), lora_file(tmp_path / "b.safetensors", 2)
    text = format_parameters(recipe(loras=[f"{ink}:0.8", f"{other}:-1"]))
    assert text.splitlines()[0] == "a red 7 <lora:ink style:0.8> <lora:b:-1>"
    assert f'Lora hashes: "ink style: {addnet_hash(ink)}, b: {addnet_hash(other)}"' in text
    p = parse_parameters(text)
    assert p["prompt"] == "a red 7" and p["warnings"] == []
    assert [(t.name, t.weight, t.hash) for t in p["lora_tags"]] == [
        ("ink style", 0.8, addnet_hash(ink)), ("b", -1.0, addnet_hash(other))]
    assert "Lora hashes" not in format_parameters(recipe())


def test_the_files_own_web_ui_hash_is_the_one_written(tmp_path):
    tagged = lora_file(tmp_path / "t.safetensors", metadata={"sshs_model_hash": "ABCDEF0123456789" * 4})
    assert short_hash(tagged) == "abcdef012345"  # A1111 prefers the metadata's hash (network.py)


def test_a_hash_names_the_file_in_any_of_the_web_uis_forms(tmp_path):
    from studio.checkpoints.lora_tags import matches_hash

    path = lora_file(tmp_path / "a.safetensors")
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    assert matches_hash(path, addnet_hash(path).upper()) and matches_hash(path, whole[:12])  # A1111; Forge
    assert matches_hash(path, whole) and not matches_hash(path, "0123456789ab") and not matches_hash(path, whole[:4])
    tagged = lora_file(tmp_path / "t.safetensors", metadata={"sshs_model_hash": "feedface" * 8})
    assert matches_hash(tagged, "feedfacefeed") and matches_hash(tagged, addnet_hash(tagged))


@pytest.mark.parametrize("text, prompt, tags", [
    ("a cat, <lora:ink:0.8>", "a cat,", [("ink", 0.8)]),
    ("<lora:ink> a cat", "a cat", [("ink", 1.0)]),
    ("a <lora:a:0.5>  cat <lyco:b:1.5>", "a cat", [("a", 0.5), ("b", 1.5)]),
    ("a cat <lora:a:te=0.2:unet=0.7>", "a cat", [("a", 0.7)]),
    ("a cat <hypernet:h:1>", "a cat <hypernet:h:1>", []),
])
def test_tags_are_cut_from_the_prompt_the_model_sees(text, prompt, tags):
    warnings: list[str] = []
    out, found = split_lora_tags(text, warnings)
    assert out == prompt and [(t.name, t.weight) for t in found] == tags


def test_odd_tags_read_with_one_line_warnings():
    p = parse_parameters("a <lora:x:1:0.5> <lora:y:lots> <lora:z:99>\nSteps: 2, Seed: 1")
    assert p["prompt"] == "a" and [t.name for t in p["lora_tags"]] == ["x"]
    assert len(p["warnings"]) == 3 and all("\n" not in w for w in p["warnings"])
    assert "text-encoder weight 1 and UNet weight 0.5" in p["warnings"][0]
    assert "not a number" in p["warnings"][1] and "outside" in p["warnings"][2]


# -- denoising strength ------------------------------------------------------------------------------------------

def test_an_image_to_image_run_writes_its_denoising_strength():
    text = format_parameters(recipe(init_image="/x.png", strength=0.75))
    assert "Denoising strength: 0.75" in text and parse_parameters(text)["strength"] == 0.75
    assert "Denoising strength" not in format_parameters(recipe())
    with pytest.raises(ValueError, match="Denoising strength"):
        parse_parameters("Steps: 2, Seed: 1, Denoising strength: 1.5")


@pytest.mark.parametrize("steps", [1, 3, 7, 20, 50, 999])
def test_a_start_step_is_written_as_the_strength_that_runs_as_many_steps(steps):
    from studio.core.forward import start_index

    for k in sorted({0, 1, steps // 3, steps - 1} & set(range(steps))):
        written = denoising_strength(recipe(steps=steps, init_image="/x.png", start_step=k))
        assert start_index(steps, float(written)) == k, (steps, k, written)


# -- reading a web UI's image: the LoRA files beside the model ----------------------------------------------

def test_lora_tags_resolve_beside_the_model_or_say_what_is_missing(tmp_path):
    from studio.session.export import read_webui_parameters
    from studio.session.recipe import Recipe

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Lora").mkdir()
    model = models / "Stable-diffusion" / "m.safetensors"
    model.write_bytes(b"")  # only its place matters here
    beside = lora_file(models / "Stable-diffusion" / "near.safetensors", 1)
    webui = lora_file(models / "Lora" / "far.safetensors", 2)
    changed = lora_file(models / "Lora" / "changed.safetensors", 3)
    text = (f"a cat <lora:near:0.5>, <lora:far:1.25> <lora:changed:1> <lora:gone:1>\nSteps: 20, Sampler: Euler, "
            f'Seed: 1, Lora hashes: "near: {addnet_hash(beside)}, far: {addnet_hash(webui)}, changed: 0123456789ab"')
    png = webui_png(tmp_path / "w.png", text)
    s = read_webui_parameters(png, Recipe(model=str(model), loras=[f"{beside}:2"]))
    assert s["prompt"] == "a cat ," and s["loras"] == [f"{beside}:0.5", f"{webui}:1.25"]
    assert len(s["warnings"]) == 2 and all("\n" not in w for w in s["warnings"])
    assert "'changed'" in s["warnings"][0] and str(changed) in s["warnings"][0] and "0123456789ab" in s["warnings"][0]
    assert "'gone'" in s["warnings"][1] and "not found" in s["warnings"][1]
    plain = read_webui_parameters(webui_png(tmp_path / "p.png", "a dog\nSteps: 20, Seed: 1"), Recipe(model=str(model)))
    assert plain["loras"] == [] and plain["warnings"] == []  # an image without LoRAs opens without
    builtin = read_webui_parameters(png, Recipe(model="digits-text"))
    assert builtin["loras"] == [] and len(builtin["warnings"]) == 4


def test_denoising_strength_applies_to_a_recipe_that_starts_from_an_image(tmp_path):
    from studio.session.export import read_webui_parameters
    from studio.session.recipe import Recipe

    png = webui_png(tmp_path / "i.png", "a cat\nSteps: 20, Seed: 1, Denoising strength: 0.4")
    image = tmp_path / "start.png"
    Image.new("RGB", (8, 8)).save(image)
    current = Recipe(model="gmm", init_image=str(image), start_step=3)
    s = read_webui_parameters(png, current)
    assert (s["strength"], s["start_step"], s["warnings"]) == (0.4, None, [])
    assert Recipe(model="gmm").replace(**{k: v for k, v in s.items() if k != "warnings"}, init_image=str(image))
    without = read_webui_parameters(png, Recipe(model="gmm"))
    assert "strength" not in without and "denoising strength 0.4" in without["warnings"][0]


@pytest.mark.slow
def test_a_studio_image_with_a_lora_reopens_with_it_and_runs_the_same(tmp_path, monkeypatch):
    """The whole way: a run with a LoRA writes final.png; its parameters chunk alone (no recipe) read on the
    same model gives the LoRA and the prompt back, and the rerun's latents equal the first run's."""
    from checkpoint_files import make_tiny_checkpoint
    from test_checkpoint_loading import sample_args
    from test_checkpoint_lora import peft_lora, save

    from studio.checkpoints import configs as configs_module
    from studio.cli import main
    from studio.session.export import read_webui_parameters
    from studio.session.recipe import Recipe

    pipe, path, configs = make_tiny_checkpoint("sd1", tmp_path / "m")
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", configs)
    lora = save(peft_lora(pipe, 1), path.parent / "style.safetensors")
    assert main(sample_args(path, tmp_path / "a", "--lora", f"{lora}:0.5", "--sampler", "euler")) == 0
    with Image.open(tmp_path / "a" / "final.png") as im:
        text = im.text["parameters"]
    assert "<lora:style:0.5>" in text.splitlines()[0] and f"style: {addnet_hash(lora)}" in text
    first = Recipe.from_dict(json.loads((tmp_path / "a" / "recipe.json").read_text()))
    webui = tmp_path / "webui.png"
    webui_png(webui, text)  # the parameters chunk only, as a web UI's image has
    s = read_webui_parameters(webui, Recipe(model=str(path)))
    assert s.pop("warnings") == [] and s["loras"] == [f"{lora}:0.5"] and s["prompt"] == first.prompt
    again = first.replace(loras=[]).replace(**s)  # the LoRA comes from the image's text
    (tmp_path / "again.json").write_text(again.to_json())
    assert main(["sample", "--recipe", str(tmp_path / "again.json"), "--quiet", "--save-raw",
                 "--out", str(tmp_path / "b")]) == 0
    a, b = np.load(tmp_path / "a" / "trajectory.npz")["xt"], np.load(tmp_path / "b" / "trajectory.npz")["xt"]
    assert np.array_equal(a, b)
