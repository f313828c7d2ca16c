"""A model described from its configs and weight headers (session/model_description.py): the description is
what the opened model says of itself, for every kind of model the studio opens, and a recipe is refused
by it exactly when, and with the line with which, a run on the opened model refuses it."""
from __future__ import annotations

import dataclasses

import pytest

from studio.checkpoints import configs as configs_module
from studio.checkpoints.models import load_model
from studio.core.loading import DEFAULT_MODEL_DIR, TEXT_MODEL_DIR, ModelLoadError
from studio.session.model_description import check_recipe, describe_model
from studio.session.recipe import Recipe
from studio.session.runner import Run

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]


def same_info(described, opened) -> None:
    assert dataclasses.asdict(described.info) == dataclasses.asdict(opened.info)
    assert (described.classifier is not None) == (getattr(opened, "classifier", None) is not None)


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    """A class-conditional UNet folder with named classes and a null label (pipeline layout)."""
    from _models import make_unet, save_model_folder

    folder = tmp_path_factory.mktemp("unet")
    save_model_folder(make_unet(num_class_embeds=4), folder, {"prediction_type": "v_prediction"},
                      {"class_names": ["a", "b", "c"], "null_label": 3}, layout="pipeline")
    return folder


@pytest.fixture
def tiny_configs(tiny_sd1_file, monkeypatch):
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])


@pytest.mark.parametrize("spec", ["gmm", "default", "digits-text"])
def test_a_built_in_model_is_described_as_it_opens(spec):
    folder = {"default": DEFAULT_MODEL_DIR, "digits-text": TEXT_MODEL_DIR}.get(spec)
    if folder is not None and not any(folder.glob("*.json")):
        pytest.skip(f"{spec} is not in this checkout")
    same_info(describe_model(spec), load_model(spec, "cpu"))


def test_a_unet_folder_and_a_single_file_checkpoint_are_described_as_they_open(unet_folder, tiny_sd1_file,
                                                                                tiny_configs):
    d = describe_model(str(unet_folder))
    same_info(d, load_model(str(unet_folder), "cpu"))
    assert d.labels == (0, 1, 2) and d.guidance_modes == ("none", "cfg")
    path = str(tiny_sd1_file[0])
    d = describe_model(path, prediction_type="v_prediction")
    same_info(d, load_model(path, "cpu", prediction_type="v_prediction"))
    assert d.info.prediction_type == "v_prediction" and d.guidance_modes == ("none", "cfg") and d.labels == ()


def test_the_mixture_offers_every_guidance_and_its_four_labels():
    d = describe_model("gmm")
    assert d.guidance_modes == ("none", "cfg", "classifier") and d.labels == (0, 1, 2, 3)


def test_weights_cut_short_are_found_from_the_header_without_reading_a_tensor(unet_folder, tiny_sd1_file, tmp_path,
                                                                              tiny_configs):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(unet_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors.*truncated"):
        describe_model(str(folder))
    single = tmp_path / "cut.safetensors"
    single.write_bytes(tiny_sd1_file[0].read_bytes()[:-64])
    with pytest.raises(ModelLoadError, match="cut.safetensors"):
        describe_model(str(single))


REFUSED = [  # (model, recipe settings): each refused by the opened model's run
    ("gmm", dict(label=9)),
    ("gmm", dict(prompt="a seven")),
    ("gmm", dict(width=32, height=32)),
    ("gmm", dict(label=1, guidance="classifier", classifier_form="mean", sampler="euler")),
    ("unet", dict(guidance="classifier", label=0)),
    ("unet", dict(label=3)),
    ("digits-text", dict(label=1)),
    ("digits-text", dict(prompt="a 7", guidance="classifier")),
    ("digits-text", dict(prompt="a 7", width=30)),
]
ACCEPTED = [
    ("gmm", dict(label=2, guidance="classifier", scale=2.0)),
    ("unet", dict(label=2, guidance="cfg", scale=2.0)),
    ("digits-text", dict(prompt="a 7", negative_prompt="red", width=48, height=32)),
]


def _model(name, unet_folder):
    return str(unet_folder) if name == "unet" else name


@pytest.mark.parametrize("name, settings", REFUSED + ACCEPTED)
def test_a_recipe_is_refused_by_the_description_exactly_as_by_the_opened_model(name, settings, unet_folder):
    if name == "digits-text" and not (TEXT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("digits-text is not in this checkout")
    spec = _model(name, unet_folder)
    recipe = Recipe(model=spec, steps=3, batch=1, device="cpu", **settings)
    try:
        Run(recipe, model=load_model(spec, "cpu")).trajectory.close()
        opened = None
    except ValueError as e:
        opened = str(e)
    try:
        check_recipe(describe_model(spec), recipe)
        described = None
    except ValueError as e:
        described = str(e)
    assert described == opened
    assert (opened is None) == ((name, settings) in ACCEPTED)


def test_an_image_to_start_from_is_opened_and_its_digest_checked(tmp_path):
    from PIL import Image

    image = tmp_path / "start.png"
    Image.new("RGB", (20, 12), (200, 30, 30)).save(image)
    d = describe_model("gmm")
    check_recipe(d, Recipe(model="gmm", init_image=str(image), strength=0.5, steps=4))
    with pytest.raises(ValueError, match="is not the image this recipe was made with"):
        check_recipe(d, Recipe(model="gmm", init_image=str(image), init_image_sha256="0" * 64, steps=4))
    (tmp_path / "not.png").write_text("no image")
    with pytest.raises(ValueError, match="init_image"):
        check_recipe(d, Recipe(model="gmm", init_image=str(tmp_path / "not.png"), steps=4))
