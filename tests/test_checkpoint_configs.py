"""The config folders that ship in ``assets/configs``: the networks they build take exactly the weights
diffusers' converters make of each family's real layout, they agree with the family table, and the
folder a load uses (tokenizer files, prediction variant) is made once, offline, in the user's cache."""
from __future__ import annotations

import json

import pytest
import torch

from studio.checkpoints import FAMILIES, inspect_checkpoint
from studio.checkpoints.architecture import check_architecture, mismatches
from studio.checkpoints.configs import CONFIG_ROOT, config_folder, shipped_config
from studio.checkpoints.families import SD1, SD2, SDXL
from studio.checkpoints.header import CheckpointError
from studio.checkpoints.prediction import Prediction
from test_checkpoint_layouts import sd15, sd21, sdxl_base, sdxl_refiner, write_sparse_safetensors

LAYOUTS = {"sd1": sd15, "sd2": sd21, "sdxl": sdxl_base, "sdxl-refiner": sdxl_refiner}


def read(folder, *parts) -> dict:
    return json.loads(folder.joinpath(*parts).read_text())


@pytest.fixture(scope="module")
def headers(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: inspect_checkpoint(write_sparse_safetensors(root / f"{name}.safetensors", build())).header
            for name, build in LAYOUTS.items()}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_shipped_config_builds_exactly_what_the_real_layout_converts_to(headers, family):
    """UNet, VAE and text encoders built on the meta device from the shipped configs have the names and
    shapes diffusers' single-file converters produce from the real original-layout header."""
    assert mismatches(headers[family.name], family, shipped_config(family)) == []


def test_the_comparison_sees_another_family():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        header = inspect_checkpoint(write_sparse_safetensors(Path(d) / "sd21.safetensors", sd21())).header
        found = {m.component: m for m in mismatches(header, SD1, shipped_config(SD1))}
        assert set(found) == {"unet", "text_encoder"}  # the VAE is the same; no CLIP-L weights under SD 1's prefix
        assert found["unet"].reshaped and not found["unet"].missing
        assert found["text_encoder"].missing and not found["text_encoder"].reshaped
        with pytest.raises(CheckpointError, match=r"sd21.safetensors: its unet does not match Stable Diffusion 1.x's "
                                                  r"unet/config.json \(.* of another shape"):
            check_architecture(header, SD1, shipped_config(SD1))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_shipped_config_agrees_with_the_family_table(family):
    folder = shipped_config(family)
    index, unet = read(folder, "model_index.json"), read(folder, "unet", "config.json")
    assert index["_class_name"] == family.pipeline
    assert unet["cross_attention_dim"] == family.context_dim
    assert unet.get("projection_class_embeddings_input_dim") == family.adm_in_channels
    assert unet["sample_size"] * 8 == family.size
    assert read(folder, "scheduler", "scheduler_config.json").get("prediction_type", "epsilon") == family.default_prediction
    for te in family.text_encoders:
        assert read(folder, te.component, "config.json")["hidden_size"] == te.width
        assert index[te.component][0] == "transformers"
    shipped = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert not any(name.endswith((".safetensors", ".bin", "vocab.json", "merges.txt")) for name in shipped)
    assert index.get("safety_checker", [None])[0] is None  # nothing that would need a download


def test_readme_names_the_source_of_every_folder():
    text = (CONFIG_ROOT / "README.md").read_text()
    for name, repo in (("sd1", "runwayml/stable-diffusion-v1-5"), ("sd2", "stabilityai/stable-diffusion-2-1"),
                       ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
                       ("sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0")):
        assert f"`{name}/`" in text and repo in text


# -- the folder a load uses ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, components, pads", [
    (SD1, ("tokenizer",), ("<|endoftext|>",)), (SD2, ("tokenizer",), ("!",)),
    (SDXL, ("tokenizer", "tokenizer_2"), ("<|endoftext|>", "!"))], ids=["sd1", "sd2", "sdxl"])
def test_tokenizers_are_clip_with_the_familys_padding(family, components, pads, tmp_path):
    from transformers import CLIPTokenizer

    folder = config_folder(family, Prediction(family.default_prediction, "test"), cache=tmp_path)
    for component, pad in zip(components, pads):
        tok = CLIPTokenizer.from_pretrained(str(folder / component), local_files_only=True)
        ids = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length).input_ids
        assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids for these words
        assert len(ids) == 77 and tok.pad_token == pad and set(ids[7:]) == {tok.convert_tokens_to_ids(pad)}


def test_prediction_variant_sets_scheduler_and_native_size(tmp_path):
    v = config_folder(SD2, Prediction("v_prediction", "test"), cache=tmp_path)
    eps = config_folder(SD2, Prediction("epsilon", "test"), cache=tmp_path)
    snr = config_folder(SD1, Prediction("v_prediction", "test", zero_terminal_snr=True), cache=tmp_path)
    assert len({v, eps, snr}) == 3
    assert read(v, "unet", "config.json")["sample_size"] == 96 and read(eps, "unet", "config.json")["sample_size"] == 64
    assert read(v, "scheduler", "scheduler_config.json")["prediction_type"] == "v_prediction"
    assert read(eps, "scheduler", "scheduler_config.json")["prediction_type"] == "epsilon"
    sched = read(snr, "scheduler", "scheduler_config.json")
    assert sched["rescale_betas_zero_snr"] is True and sched["timestep_spacing"] == "trailing"
    assert read(snr, "unet", "config.json")["sample_size"] == 64


def test_folder_is_made_once_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    first = config_folder(SD1, Prediction("epsilon", "test"))
    assert first.parent == tmp_path / "cache" / "checkpoint-configs"
    stamp = (first / "tokenizer" / "vocab.json").stat().st_mtime_ns
    assert config_folder(SD1, Prediction("epsilon", "test")) == first
    assert (first / "tokenizer" / "vocab.json").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging left behind


def test_a_missing_config_folder_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="the config folder of Stable Diffusion XL base is missing"):
        shipped_config(SDXL, root=tmp_path)


def test_memory_check_counts_the_dtype_and_names_both_numbers(tmp_path):
    from studio.checkpoints.loading import check_memory, memory_needed
    from studio.core.loading import ModelLoadError

    path = write_sparse_safetensors(tmp_path / "sd15.safetensors", sd15())
    info = inspect_checkpoint(path)
    half, full = memory_needed(info, torch.float16), memory_needed(info, torch.float32)
    vae = info.component("vae").parameters
    assert full == info.weights_bytes(torch.float32) and half == info.weights_bytes(torch.float16) + 2 * vae
    plenty = {"cpu": 1 << 40, "cuda": 1 << 40}
    check_memory(info, torch.device("cuda"), torch.float16, lambda d: plenty[d.type])
    with pytest.raises(ModelLoadError, match=r"sd15.safetensors: its weights need [\d.]+ GB in float16 but cuda has "
                                             r"1.0 GB free"):
        check_memory(info, torch.device("cuda"), torch.float16, lambda d: {"cpu": 1 << 40, "cuda": 1 << 30}[d.type])
    with pytest.raises(ModelLoadError, match=r"its weights need [\d.]+ GB .* but only 1.0 GB of memory is available"):
        check_memory(info, torch.device("cpu"), torch.float32, lambda d: 1 << 30)
    unknown = lambda d: None  # noqa: E731 - memory that cannot be measured is not a refusal
    check_memory(info, torch.device("cpu"), torch.float32, unknown)
