"""LoRA files (``--lora FILE[:WEIGHT]``) and standalone VAE files (``--vae``) on text-to-image models.

The truth is diffusers itself: the tiny SD 1.x-like checkpoint of checkpoint_files.py opened with
``from_single_file``, the same LoRA files loaded with ``load_lora_weights`` + ``set_adapters`` at the
same weights, the same scheduler and initial latents; for a VAE, the AutoencoderKL the file was
written from. LoRAs are built with peft on the tiny networks (random, non-zero B) and written in the
diffusers/PEFT layout (``save_lora_weights``) and the kohya layout (diffusers' ``convert_state_dict_to_kohya``).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from checkpoint_files import make_tiny_checkpoint, original_state_dict, tiny_pipeline
from test_checkpoint_loading import (
    BATCH,
    PROMPT,
    SIZE,
    TOL,
    diffusers_final,
    one_line_error,
    reference_pipeline,
    sample_args,
    studio_final,
    x_T,
)

from studio.checkpoints import configs as configs_module
from studio.checkpoints.loading import open_checkpoint
from studio.checkpoints.lora import apply_loras, loaded_loras
from studio.checkpoints.vae_file import apply_vae
from studio.cli import main
from studio.core.loading import ModelLoadError

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def peft_lora(pipe, seed: int, text: bool = True) -> dict[str, torch.Tensor]:
    """A random LoRA of rank 4 on the pipeline's UNet attention (and first text encoder), in PEFT layout with
    diffusers' ``unet.`` / ``text_encoder.`` prefixes."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    out = {}
    parts = [("unet", pipe.unet, UNET_TARGETS)] + ([("text_encoder", pipe.text_encoder, TEXT_TARGETS)] if text else [])
    for prefix, module, targets in parts:
        module = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False),
                                         copy.deepcopy(module))
        state = get_peft_model_state_dict(module)
        out.update({f"{prefix}.{k}": v * 0.5 if ".lora_B." in k else v for k, v in state.items()})
    return out


def kohya(state: dict) -> dict:
    """The same LoRA in the kohya / web UI layout (text encoder names as CLIP's original ``text_model.``)."""
    from diffusers.utils import convert_state_dict_to_kohya

    named = {k.replace("text_encoder.", "text_encoder.text_model.", 1): v for k, v in state.items()}
    return convert_state_dict_to_kohya(named)


def save(state: dict, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    pipe, path, configs = make_tiny_checkpoint("sd1", root)
    xl_pipe = tiny_pipeline("sdxl", root / ".xl-tokenizer")
    files = {"peft": save(peft_lora(pipe, 1), root / "peft.safetensors"),
             "kohya": save(kohya(peft_lora(pipe, 2)), root / "kohya.safetensors"),
             "sdxl": save(peft_lora(xl_pipe, 3, text=False), root / "sdxl-lora.safetensors")}
    return pipe, path, configs, files


@pytest.fixture(scope="module")
def model(tiny):
    _, path, configs, _ = tiny
    return open_checkpoint(path, config_root=configs)


@pytest.fixture(scope="module")
def reference(tiny):
    """diffusers' own pipeline from the same file, with both LoRAs loaded by diffusers."""
    _, path, configs, files = tiny
    ref = reference_pipeline("sd1", path, configs)
    ref.load_lora_weights(str(files["peft"]), adapter_name="peft")
    ref.load_lora_weights(str(files["kohya"]), adapter_name="kohya")
    return ref


def relative_error(ours, ref) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


# -- agreement with diffusers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [5.0, pytest.param(1.0, marks=pytest.mark.slow)], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("weights", [{"peft": 1.0}] + [pytest.param(w, marks=pytest.mark.slow) for w in (
    {"peft": 0.5}, {"kohya": 1.0}, {"peft": 0.5, "kohya": 1.0})], ids=["peft-1", "peft-0.5", "kohya-1", "both"])
def test_ddim_final_latents_with_loras_match_diffusers(tiny, model, reference, weights, scale):
    files = tiny[3]
    apply_loras(model, [f"{files[name]}:{w}" for name, w in weights.items()])
    reference.set_adapters(list(weights), adapter_weights=list(weights.values()))
    lat = x_T()
    ours, ref = studio_final(model, lat, scale), diffusers_final(reference, lat, scale)
    assert relative_error(ours, ref) <= TOL, (weights, scale)
    apply_loras(model, [])
    plain = studio_final(model, lat, scale)
    assert relative_error(plain, ref) > 100 * TOL  # the LoRA changed the result


def test_weight_zero_is_no_lora_and_a_weight_change_reloads_nothing(tiny, model):
    files = tiny[3]
    lat = x_T(2)
    apply_loras(model, [])
    plain = studio_final(model, lat, 5.0)
    apply_loras(model, [f"{files['peft']}:1"])
    unet, state = model.unet, loaded_loras(model)
    loads, layers = state.loads, [m for m in model.unet.modules() if hasattr(m, "lora_A")]
    one = studio_final(model, lat, 5.0)
    apply_loras(model, [f"{files['peft']}:0"])
    zero = studio_final(model, lat, 5.0)
    assert torch.allclose(zero, plain, rtol=0, atol=1e-6) and not torch.allclose(one, plain, atol=1e-3)
    apply_loras(model, [f"{files['peft']}:0.5"])
    half = studio_final(model, lat, 5.0)
    assert not torch.allclose(half, one, atol=1e-3)
    assert model.unet is unet and state.loads == loads  # nothing loaded again: only set_adapters
    assert [m for m in model.unet.modules() if hasattr(m, "lora_A")] == layers
    apply_loras(model, [])


# -- recipes and the command line --------------------------------------------------------------------------------

@pytest.fixture
def tiny_configs(tiny, monkeypatch):
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny[2])


@pytest.mark.slow
def test_recipe_records_each_lora_and_replays(tiny, tiny_configs, tmp_path, capsys):
    from studio.core.file_hashes import sha256_file

    _, path, _, files = tiny
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(files["peft"].read_bytes())
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(sample_args(path, a, "--lora", f"{lora}:0.5", "--lora", str(files["kohya"]))) == 0
    recipe = json.loads((a / "recipe.json").read_text())
    assert recipe["loras"] == [f"{lora}:0.5", f"{files['kohya']}:1"]
    weights = recipe["versions"]["weights"]
    assert weights["lora:mine.safetensors"] == sha256_file(lora)
    assert weights["lora:kohya.safetensors"] == sha256_file(files["kohya"])
    assert main(["sample", "--recipe", str(a / "recipe.json"), "--quiet", "--save-raw", "--out", str(b)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert np.array_equal(np.load(a / "trajectory.npz")["xt"], np.load(b / "trajectory.npz")["xt"])
    save(peft_lora(tiny[0], 5), lora)  # another LoRA under the same name
    assert main(["sample", "--recipe", str(a / "recipe.json"), "--quiet", "--out", str(c)]) == 0
    assert "lora:mine.safetensors changed" in capsys.readouterr().err
    lora.write_bytes(files["kohya"].read_bytes())
    refused(capsys, tmp_path, sample_args(path, tmp_path / "d", "--lora", str(lora), "--lora", str(files["kohya"])),
            "the same LoRA is given twice")


def test_relative_lora_paths_are_made_absolute(tiny, tiny_configs, tmp_path, monkeypatch):
    _, path, _, files = tiny
    monkeypatch.chdir(files["peft"].parent)
    assert main(sample_args(path, tmp_path / "a", "--lora", "peft.safetensors:0.25")) == 0
    assert json.loads((tmp_path / "a" / "recipe.json").read_text())["loras"] == [f"{files['peft']}:0.25"]


# -- bad LoRA files, each one line -------------------------------------------------------------------------------

def refused(capsys, tmp_path, args, *needles):
    assert main(args) == 2
    err = one_line_error(capsys)
    for needle in needles:
        assert needle in err, err


def test_an_sdxl_lora_on_an_sd1_model(tiny, tiny_configs, tmp_path, capsys):
    _, path, _, files = tiny
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", str(files["sdxl"])), str(files["sdxl"]),
            "a LoRA for Stable Diffusion XL base (its cross-attention layers read 2048-wide text features)",
            "is Stable Diffusion 1.x (768)")


def test_a_lora_whose_keys_match_nothing(tiny, model, tmp_path):
    state = {"unet.mid_block.nowhere.to_q.lora_A.weight": torch.randn(4, 64),
             "unet.mid_block.nowhere.to_q.lora_B.weight": torch.randn(64, 4)}
    path = save(state, tmp_path / "stray.safetensors")
    before = [n for n, _ in model.unet.named_modules()]
    with pytest.raises(ModelLoadError) as e:
        apply_loras(model, [str(path)])
    assert "none of its 1 LoRA layers matches a layer of" in str(e.value) and "\n" not in str(e.value)
    assert [n for n, _ in model.unet.named_modules()] == before  # the model is as it was


def test_not_a_lora(tiny, tiny_configs, tmp_path, capsys):
    pipe, path, _, _ = tiny
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", str(path)),
            "a Stable Diffusion 1.x checkpoint, not a LoRA; open it as the model")
    vae = {k.removeprefix("first_stage_model."): v for k, v in original_state_dict("sd1", pipe).items()
           if k.startswith("first_stage_model.")}
    vae_path = save(vae, tmp_path / "vae.safetensors")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", str(vae_path)),
            "a standalone VAE, not a LoRA; give it with --vae")


@pytest.mark.slow
def test_nan_weights_and_a_truncated_lora(tiny, tiny_configs, tmp_path, capsys):
    _, path, _, files = tiny
    state = peft_lora(tiny[0], 4)
    key = next(k for k in state if ".lora_B." in k)
    state[key][0, 0] = float("nan")
    nan = save(state, tmp_path / "nan.safetensors")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", str(nan)), f"weight {key} holds NaN")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(files["peft"].read_bytes()[:-100])
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", str(cut)), str(cut), "truncated")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", f"{files['peft']}:abc"), "no such LoRA file")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--lora", f"{files['peft']}:11"),
            "weight must be a number from -10 to 10, got 11")


def test_a_lora_on_a_pixel_model(tiny, tmp_path, capsys):
    refused(capsys, tmp_path, ["sample", "--model", "gmm", "--steps", "2", "--batch", "1", "--quiet", "--out",
                               str(tmp_path / "o"), "--lora", str(tiny[3]["peft"])],
            "LoRAs apply to text-to-image models")


# -- a standalone VAE --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_vae(tiny, tmp_path_factory):
    """A second tiny VAE (other weights, same shapes) and its files: original layout, diffusers layout, folder."""
    root = tmp_path_factory.mktemp("vae")
    other = tiny_pipeline("sd1", root / ".tok", seed=7)
    vae_keys = {k.removeprefix("first_stage_model."): v for k, v in original_state_dict("sd1", other).items()
                if k.startswith("first_stage_model.")}
    folder = root / "folder"
    other.vae.save_pretrained(str(folder))
    return other.vae, {"original": save(vae_keys, root / "vae-original.safetensors"),
                       "diffusers": save(other.vae.state_dict(), root / "vae-diffusers.safetensors"),
                       "folder": folder}


@pytest.mark.parametrize("form", ["original", "diffusers", "folder"])
@pytest.mark.slow
def test_a_vae_swapped_in_decodes_as_diffusers_with_that_vae(tiny, other_vae, form):
    _, path, configs, _ = tiny
    vae, files = other_vae
    model = open_checkpoint(path, config_root=configs)
    own = model.vae
    lat = x_T(3)
    apply_vae(model, str(files[form]))
    ours = (model.decode(studio_final(model, lat, 5.0)) + 1) / 2
    ref_pipe = reference_pipeline("sd1", path, configs)
    ref_pipe.vae = vae
    ref = diffusers_image(ref_pipe, lat, 5.0)
    assert relative_error(ours, ref) <= TOL
    apply_vae(model, None)
    assert model.vae is own


def diffusers_image(pipe, latents, scale):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    with torch.no_grad():
        return pipe(prompt=PROMPT, negative_prompt="green", num_inference_steps=10, guidance_scale=scale,
                    latents=latents.clone(), num_images_per_prompt=BATCH, height=SIZE, width=SIZE,
                    output_type="pt").images


@pytest.mark.slow
def test_the_vae_is_recorded_and_refusals_are_one_line(tiny, other_vae, tiny_configs, tmp_path, capsys):
    from diffusers import AutoencoderKL
    from text_pipelines import tiny_vae

    from studio.core.file_hashes import sha256_file

    _, path, _, files = tiny
    vae_file = other_vae[1]["original"]
    assert main(sample_args(path, tmp_path / "a", "--vae", str(vae_file))) == 0
    recipe = json.loads((tmp_path / "a" / "recipe.json").read_text())
    assert recipe["vae"] == str(vae_file) and recipe["versions"]["weights"][f"vae:{vae_file.name}"] == sha256_file(vae_file)
    wide = save(tiny_vae(latent_channels=16).state_dict(), tmp_path / "flux-like.safetensors")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--vae", str(wide)), str(wide),
            "a VAE with 16 latent channels but", "samples 4-channel latents")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--vae", str(files["peft"])),
            "a LoRA, not a VAE; give it with --lora")
    xl = tmp_path / "xl-vae"
    config = {k: v for k, v in other_vae[0].config.items() if not k.startswith("_")}
    AutoencoderKL.from_config({**config, "scaling_factor": 0.13025}).save_pretrained(str(xl))  # SDXL's scaling
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--vae", str(xl)), "scaled by 0.13025 but")
    state = {k: v.clone() for k, v in other_vae[0].state_dict().items()}
    state["decoder.conv_out.bias"][0] = float("nan")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--vae", str(save(state, tmp_path / "nan.safetensors"))),
            "weight decoder.conv_out.bias holds NaN")
    refused(capsys, tmp_path, sample_args(path, tmp_path / "o", "--vae", str(tmp_path / "missing.safetensors")),
            "no such VAE file or folder")
