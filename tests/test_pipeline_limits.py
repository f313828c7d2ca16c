"""Pipeline folders whose configs ask for absurd networks are refused from the configs, before anything is built.

A text-to-image pipeline folder is a UNet, a VAE and one or two CLIP text encoders, each sized by its own
config.json. A sample_size of 100 000 or layers_per_block of 100 000 would otherwise end in a 160 GB
allocation failure or minutes of building followed by bad_alloc; every such config must give one line naming
the file, the field and the limit (or the memory it would need), and do so without building the network.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studio.core.loading import ModelLoadError, load_model
from studio.core.pipeline import MAX_BLOCKS, TEXT_ENCODER_LIMITS, UNET_LIMITS, VAE_LIMITS, check_pipeline_size
from text_pipelines import make_sd_pipeline, make_sdxl_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("pipe") / "sd")


@pytest.fixture
def pipe(pristine, tmp_path):
    import shutil

    return shutil.copytree(pristine, tmp_path / "sd", symlinks=True)


def edit(folder, component, **changes):
    path = folder / component / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def refusal(folder, *names) -> str:
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(folder), device="cpu")
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_the_tiny_pipeline_opens_and_its_size_is_counted(pipe):
    import torch

    n = check_pipeline_size(pipe, "StableDiffusionPipeline", torch.device("cpu"), torch.float32)
    model = load_model(str(pipe), device="cpu")
    built = sum(p.numel() for m in (model.unet, model.vae, *model.text_encoders) for p in m.parameters())
    assert n == built  # counted on the meta device, exactly what was then built


@pytest.mark.slow  # a second pipeline folder; the SD one above is the fast lane's
def test_an_sdxl_pipeline_is_counted_with_both_text_encoders(tmp_path):
    import torch

    folder = make_sdxl_pipeline(tmp_path / "xl")
    n = check_pipeline_size(folder, "StableDiffusionXLPipeline", torch.device("cpu"), torch.float32)
    model = load_model(str(folder), device="cpu")
    assert len(model.text_encoders) == 2
    assert n == sum(p.numel() for m in (model.unet, model.vae, *model.text_encoders) for p in m.parameters())


@pytest.mark.parametrize("component,field,value,limit", [
    ("unet", "sample_size", 100_000, UNET_LIMITS["sample_size"]),
    ("unet", "layers_per_block", 100_000, UNET_LIMITS["layers_per_block"]),
    ("unet", "layers_per_block", [1, 100_000], UNET_LIMITS["layers_per_block"]),
    ("unet", "transformer_layers_per_block", [1, 100_000], UNET_LIMITS["transformer_layers_per_block"]),
    ("unet", "cross_attention_dim", 10**9, UNET_LIMITS["cross_attention_dim"]),
    ("unet", "attention_head_dim", 10**9, UNET_LIMITS["attention_head_dim"]),
    ("unet", "block_out_channels", [32, 10**9], UNET_LIMITS["block_out_channels"]),
    ("vae", "layers_per_block", 100_000, VAE_LIMITS["layers_per_block"]),
    ("vae", "block_out_channels", [16, 10**9], VAE_LIMITS["block_out_channels"]),
    ("text_encoder", "vocab_size", 10**9, TEXT_ENCODER_LIMITS["vocab_size"]),
    ("text_encoder", "num_hidden_layers", 100_000, TEXT_ENCODER_LIMITS["num_hidden_layers"]),
    ("text_encoder", "hidden_size", 10**8, TEXT_ENCODER_LIMITS["hidden_size"]),
    ("text_encoder", "max_position_embeddings", 10**9, TEXT_ENCODER_LIMITS["max_position_embeddings"]),
])
def test_a_size_field_beyond_its_limit_is_one_line_naming_field_and_limit(pipe, component, field, value, limit):
    path = edit(pipe, component, **{field: value})
    refusal(pipe, str(path), field, f"{limit:,}")


def test_too_many_blocks_are_refused(pipe):
    path = edit(pipe, "unet", down_block_types=["DownBlock2D"] * 1000)
    refusal(pipe, str(path), "down_block_types", f"at most {MAX_BLOCKS}")


def test_parameters_beyond_memory_are_counted_not_allocated(pipe):
    """Every field within its limit, the product is not: 65 536-channel blocks are ~10¹² parameters (TBs)."""
    edit(pipe, "unet", block_out_channels=[1 << 16, 1 << 16], norm_num_groups=8, attention_head_dim=8)
    msg = refusal(pipe, "parameters", "available")
    assert any(u in msg for u in ("TB", "GB")), msg


def test_a_text_encoder_too_large_for_memory_is_counted_with_the_rest(pipe):
    edit(pipe, "text_encoder", vocab_size=1 << 20, hidden_size=1 << 16, intermediate_size=1 << 18,
         num_attention_heads=64, num_hidden_layers=64)  # ~10¹² parameters
    refusal(pipe, "parameters", "available")


def test_a_sample_size_whose_decoded_image_cannot_fit_names_the_vae(pipe):
    """1024 latents a side decode (VAE factor 2) to 2048² pixels: the VAE's 16-channel last feature map is 256 MB,
    the UNet's first (8 channels at 1024²) 32 MB; on a machine with 128 MB free only the decode is refused."""
    import torch

    edit(pipe, "unet", sample_size=1024, block_out_channels=[8, 8], norm_num_groups=8, attention_head_dim=8)
    free = lambda device: 128 << 20  # noqa: E731 - a machine with 128 MB free
    with pytest.raises(ModelLoadError) as ei:
        check_pipeline_size(pipe, "StableDiffusionPipeline", torch.device("cpu"), torch.float32, available=free)
    msg = str(ei.value)
    assert str(pipe / "vae" / "config.json") in msg and "sample_size 1024" in msg and "256.0 MB" in msg, msg
    check_pipeline_size(pipe, "StableDiffusionPipeline", torch.device("cpu"), torch.float32,
                        available=lambda device: 512 << 20)  # room for it: opens


@pytest.mark.slow  # a fresh interpreter; load_model's refusals above are what the CLI prints
def test_the_cli_gives_one_line(pipe, tmp_path):
    edit(pipe, "unet", layers_per_block=100_000)
    r = subprocess.run([sys.executable, "-m", "studio", "sample", "--model", str(pipe), "--prompt", "a 4",
                        "--steps", "2", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "layers_per_block" in lines[0], r.stderr


def test_a_standalone_vae_folder_is_bounded_as_a_pipelines_vae(pipe, tmp_path):
    """``--vae FOLDER`` reads another AutoencoderKL config: the same limits, before it is built."""
    import shutil

    from studio.checkpoints.vae_file import load_vae

    model = load_model(str(pipe), device="cpu")
    vae = shutil.copytree(pipe / "vae", tmp_path / "vae")
    assert load_vae(str(vae), model) is not None  # the pipeline's own VAE, as a folder: opens
    path = edit(tmp_path, "vae", layers_per_block=100_000)
    with pytest.raises(ModelLoadError, match=f"{path}: layers_per_block is 100,000, allowed 0 to 64"):
        load_vae(str(vae), model)
