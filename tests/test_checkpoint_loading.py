"""Opening single-file checkpoints: the studio's load against diffusers' own, sampling against diffusers'
pipelines, the command line (info, sample, recipes, convert) and every bad input as one line.

Tiny SD 1.x-like and SDXL-like pipelines are written as single files in the original layout
(checkpoint_files.py; the inverse of diffusers' converters is derived from them), with a config folder
per family standing in for the shipped ``assets/configs`` (whose full-size networks would not fit a
tiny file). The truth is the tiny diffusers pipeline the file was written from, and diffusers'
``from_single_file`` with the same local config.
"""
from __future__ import annotations

import json
import socket
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint_files import make_tiny_checkpoint, original_state_dict, write_checkpoint
from studio.checkpoints import configs as configs_module
from studio.checkpoints.configs import config_folder
from studio.checkpoints.loading import open_checkpoint
from studio.cli import main
from studio.core import engine
from studio.core.guidance import Guidance
from studio.core.loading import ModelLoadError
from test_checkpoint_layouts import sd15, sdxl_base, write_sparse_safetensors

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

SIZE, BATCH, TOL = 16, 2, 1e-4
PROMPT, NEGATIVE = "a red seven on a blue background", "green"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{"sd1" | "sdxl": (diffusers pipeline, its single file, the config root holding both families)}."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: make_tiny_checkpoint(kind, root) for kind in ("sd1", "sdxl")}


@pytest.fixture(scope="module")
def opened(tiny):
    return {kind: open_checkpoint(path, config_root=root) for kind, (_, path, root) in tiny.items()}


@pytest.fixture
def tiny_configs(tiny, monkeypatch):
    """The tiny config folders in place of the shipped ones, where the command line finds them."""
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny["sd1"][2])


def components(pipe_or_model) -> dict:
    encoders = getattr(pipe_or_model, "text_encoders", None)
    if encoders is None:
        encoders = [e for e in (pipe_or_model.text_encoder, getattr(pipe_or_model, "text_encoder_2", None)) if e]
    return {"unet": pipe_or_model.unet, "vae": pipe_or_model.vae,
            **{f"text_encoder_{i}": e for i, e in enumerate(encoders)}}


def assert_same_weights(a, b, dtype=None):
    ca, cb = components(a), components(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        sa, sb = ca[name].state_dict(), cb[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            want = sa[key] if dtype is None or not sa[key].is_floating_point() else sa[key].to(dtype)
            assert torch.equal(want.cpu(), sb[key].cpu().to(want.dtype)), f"{name}.{key}"


def reference_pipeline(kind, path, root):
    """diffusers' own single-file load with the same local config folder."""
    import diffusers

    from studio.checkpoints import inspect_checkpoint

    info = inspect_checkpoint(path)
    cls = diffusers.StableDiffusionPipeline if kind == "sd1" else diffusers.StableDiffusionXLPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd1" else {"add_watermarker": False}
    return cls.from_single_file(str(path), config=str(config_folder(info.family, info.prediction, root=root)),
                                local_files_only=True, **extra)


# -- the load ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_load_gives_back_the_pipeline_the_file_was_written_from(tiny, opened, kind):
    pipe, path, root = tiny[kind]
    model = opened[kind]
    assert_same_weights(pipe, model)
    assert_same_weights(reference_pipeline(kind, path, root), model)  # and what diffusers' own loader makes
    assert model.info.pipeline == type(pipe).__name__ and model.info.source == str(path)
    assert model.info.name == path.stem and model.info.prediction_type == "epsilon"


def test_half_precision_file_loads_in_the_chosen_dtype(tiny, tmp_path):
    pipe, _, root = tiny["sd1"]
    path = write_checkpoint(tmp_path / "half.safetensors", original_state_dict("sd1", pipe, torch.float16))
    model = open_checkpoint(path, dtype=torch.float16, config_root=root)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in model.text_encoders[0].parameters()} == {torch.float16}
    assert_same_weights(pipe, model, dtype=torch.float16)


def no_network(monkeypatch) -> list:
    """Every attempt to resolve a name or open a connection fails, and is recorded (in case a library
    catches the failure and carries on)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args[:1])
        raise OSError("network access attempted")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    return attempts


def test_loading_attempts_no_network_access(tiny, monkeypatch):
    attempts = no_network(monkeypatch)
    _, path, root = tiny["sdxl"]
    model = open_checkpoint(path, config_root=root)
    assert model.info.pipeline == "StableDiffusionXLPipeline"
    assert attempts == []


def test_prediction_type_override_reaches_the_model_and_its_scheduler(tiny):
    _, path, root = tiny["sd1"]
    model = open_checkpoint(path, prediction_type="v_prediction", config_root=root)
    assert model.info.prediction_type == "v_prediction"
    assert model.info.scheduler_config["prediction_type"] == "v_prediction"


@pytest.mark.slow  # builds and fills 1.07 billion parameters: about a minute and 6.5 GB of memory on 2 cores
def test_full_size_sd15_file_samples_offline_with_the_shipped_config(tmp_path, monkeypatch):
    """A real SD 1.5 header over a zero-filled sparse data region, opened with the shipped config and the
    generated CLIP vocabulary: loading and two steps at 64×64, with nothing reached on the network."""
    from studio.core.file_hashes import sha256_file

    attempts = no_network(monkeypatch)
    path = write_sparse_safetensors(tmp_path / "v1-5-pruned-emaonly.safetensors", sd15())
    out = tmp_path / "out"
    assert main(["sample", "--model", str(path), "--prompt", "a cat", "--steps", "2", "--batch", "1", "--width", "64",
                 "--height", "64", "--quiet", "--save-raw", "--out", str(out)]) == 0
    assert attempts == []
    xt = np.load(out / "trajectory.npz")["xt"]
    assert xt.shape == (3, 1, 4, 8, 8) and np.isfinite(xt).all()
    assert json.loads((out / "recipe.json").read_text())["versions"]["weights"] == {path.name: sha256_file(path)}


def test_sidecar_chooses_the_prediction_type_and_is_fingerprinted(tiny, tmp_path):
    from studio.session.provenance import weights_fingerprint

    pipe, _, root = tiny["sd1"]
    path = write_checkpoint(tmp_path / "model.safetensors", original_state_dict("sd1", pipe))
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    model = open_checkpoint(path, config_root=root)
    assert model.info.prediction_type == "v_prediction"
    assert set(weights_fingerprint(str(path))) == {"model.safetensors", "model.yaml"}


# -- sampling agrees with diffusers ------------------------------------------------------------------------------

def x_T(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))


def studio_final(model, latents, scale):
    guidance = Guidance("cfg", scale) if scale > 1 else Guidance("none")
    last = None
    for last in engine.sample(model, "ddim", 10, batch=BATCH, init_noise=latents, spacing="leading", guidance=guidance,
                              prompt=PROMPT, negative_prompt=NEGATIVE if scale > 1 else None, size=(SIZE, SIZE)):
        pass
    return last.x


def diffusers_final(pipe, latents, scale):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE if scale > 1 else None, num_inference_steps=10,
                   guidance_scale=scale, latents=latents.clone(), num_images_per_prompt=BATCH, height=SIZE, width=SIZE,
                   output_type="latent")
    return out.images


@pytest.mark.parametrize("scale", [5.0, pytest.param(1.0, marks=pytest.mark.slow)], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_ddim_final_latents_match_diffusers_from_single_file(tiny, opened, kind, scale):
    _, path, root = tiny[kind]
    lat = x_T()
    ours = studio_final(opened[kind], lat, scale)
    ref = diffusers_final(reference_pipeline(kind, path, root), lat, scale)
    err = float((ours - ref).abs().max() / ref.abs().max())
    assert err <= TOL, f"{kind} scale {scale}: {err:.2e}"


# -- the command line -------------------------------------------------------------------------------------------

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("studio: error: "), err
    return err


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--prompt", PROMPT, "--steps", "2", "--batch", "1", "--width", str(SIZE),
            "--height", str(SIZE), "--quiet", "--save-raw", "--out", str(out), *extra]


def test_info_reads_the_header_only(tiny, capsys, monkeypatch):
    from studio.checkpoints import loading

    monkeypatch.setattr(loading, "from_single_file", lambda *a, **k: pytest.fail("studio info loaded the weights"))
    _, path, _ = tiny["sdxl"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Stable Diffusion XL base" in out and "model.diffusion_model.label_emb.0.0.weight" in out
    assert main(["info", str(path), "--prediction-type", "v_prediction"]) == 0
    assert "prediction: v_prediction, from chosen explicitly" in capsys.readouterr().out


def test_sample_records_the_file_and_replays(tiny, tiny_configs, tmp_path, capsys):
    from studio.core.file_hashes import sha256_file

    _, path, _ = tiny["sd1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(sample_args(path, a)) == 0
    recipe = json.loads((a / "recipe.json").read_text())
    assert recipe["model"] == str(path.resolve())
    assert recipe["versions"]["weights"] == {path.name: sha256_file(path)}
    assert main(["sample", "--recipe", str(a / "recipe.json"), "--quiet", "--save-raw", "--out", str(b)]) == 0
    assert "warning" not in capsys.readouterr().err
    ra, rb = np.load(a / "trajectory.npz"), np.load(b / "trajectory.npz")
    assert np.array_equal(ra["xt"], rb["xt"])
    assert np.array_equal(np.asarray(Image.open(a / "final.png")), np.asarray(Image.open(b / "final.png")))


@pytest.mark.slow
def test_replay_warns_when_the_file_changed(tiny, tiny_configs, tmp_path, capsys):
    pipe, _, _ = tiny["sd1"]
    path = write_checkpoint(tmp_path / "model.safetensors", original_state_dict("sd1", pipe))
    assert main(sample_args(path, tmp_path / "a")) == 0
    state = original_state_dict("sd1", pipe)
    state["model.diffusion_model.out.2.bias"] += 0.01
    write_checkpoint(path, state)
    assert main(["sample", "--recipe", str(tmp_path / "a" / "recipe.json"), "--quiet", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning: the model's weights are not the ones this recipe was made with (model.safetensors changed" in err


@pytest.mark.slow
def test_convert_writes_a_folder_that_opens_and_samples_the_same(tiny, tiny_configs, tmp_path):
    from studio.core.loading import verify_checksums
    from studio.core.pipeline import load_pipeline_folder

    pipe, path, _ = tiny["sd1"]
    folder = tmp_path / "converted"
    assert main(["convert", str(path), "--out", str(folder), "--quiet"]) == 0
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == ["text_encoder/model.safetensors",
                                                             "unet/diffusion_pytorch_model.safetensors",
                                                             "vae/diffusion_pytorch_model.safetensors"]
    verify_checksums(folder)
    assert_same_weights(pipe, load_pipeline_folder(folder, torch.device("cpu"), torch.float32))
    assert main(sample_args(path, tmp_path / "from-file")) == 0
    assert main(sample_args(folder, tmp_path / "from-folder")) == 0
    a, b = np.load(tmp_path / "from-file" / "trajectory.npz"), np.load(tmp_path / "from-folder" / "trajectory.npz")
    assert np.allclose(a["xt"], b["xt"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_convert_writes_the_refiner(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe, path, root = make_tiny_checkpoint("sdxl-refiner", tmp_path)
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", root)
    assert main(["convert", str(path), "--out", str(tmp_path / "refiner"), "--quiet"]) == 0
    back = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(tmp_path / "refiner"), local_files_only=True)
    assert back.text_encoder is None and back.config.requires_aesthetics_score
    assert_same_weights(pipe, back)


def test_convert_keeps_the_files_dtype_and_refuses_a_used_folder(tiny, tiny_configs, tmp_path, capsys):
    pipe, _, _ = tiny["sd1"]
    path = write_checkpoint(tmp_path / "half.safetensors", original_state_dict("sd1", pipe, torch.float16))
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["convert", str(path), "--out", str(used), "--quiet"]) == 2
    assert "already exists and is not empty" in one_line_error(capsys)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    assert main(["convert", str(path), "--out", str(tmp_path / "half"), "--quiet"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "half" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


# -- bad input: one line, a non-zero exit, nothing written ------------------------------------------------------

def refused(capsys, tmp_path, args, *phrases) -> str:
    out = tmp_path / "out"
    assert main([*args[:-1], str(out)] if args[-1] == "OUT" else args) != 0
    err = one_line_error(capsys)
    for phrase in phrases:
        assert phrase in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err


def test_truncated_file(tiny, tiny_configs, tmp_path, capsys):
    data = tiny["sd1"][1].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-1000])
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "truncated")


def test_header_that_lies_about_offsets(tiny, tiny_configs, tmp_path, capsys):
    data = tiny["sd1"][1].read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4
    raw = json.dumps(header).encode()
    path = tmp_path / "lies.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "the header lies")


def test_unsupported_family(tiny, tiny_configs, tmp_path, capsys):
    pipe, _, _ = tiny["sd1"]
    state = original_state_dict("sd1", pipe)
    conv = state["model.diffusion_model.input_blocks.0.0.weight"]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([conv, conv, conv[:, :1]], dim=1)  # 9 channels
    path = write_checkpoint(tmp_path / "inpaint.safetensors", state)
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "an inpainting checkpoint")


def test_pickled_checkpoint_needs_the_opt_in(tiny, tiny_configs, tmp_path, capsys):
    pipe, _, _ = tiny["sd1"]
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": original_state_dict("sd1", pipe), "global_step": 1}, path)
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "--allow-pickle")
    assert main(sample_args(path, tmp_path / "ok", "--allow-pickle")) == 0


def test_nan_weights(tiny, tiny_configs, tmp_path, capsys):
    pipe, _, _ = tiny["sd1"]
    state = original_state_dict("sd1", pipe)
    state["model.diffusion_model.out.2.bias"][1] = float("nan")
    path = write_checkpoint(tmp_path / "nan.safetensors", state)
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "weight unet.conv_out.bias holds NaN")


def test_not_enough_memory_gives_both_numbers(tiny, tiny_configs, tmp_path, capsys, monkeypatch):
    from studio.core import memory_check

    monkeypatch.setattr(memory_check, "available_device_memory", lambda device: 5 << 20)
    path = tiny["sd1"][1]
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "its weights need", "MB in float32",
            "but only 5.0 MB of memory is available")


def test_weights_that_do_not_fit_the_config(tiny, tmp_path, capsys):
    """The tiny file against the shipped full-size SD 1.x config: refused from the header, before loading."""
    path = tiny["sd1"][1]
    refused(capsys, tmp_path, sample_args(path, "OUT"), str(path), "does not match Stable Diffusion 1.x's",
            "config.json")


def test_incomplete_files_are_refused(tmp_path, capsys):
    bare = write_sparse_safetensors(tmp_path / "bare.safetensors", sdxl_base(text_encoders=False))
    refused(capsys, tmp_path, sample_args(bare, "OUT"), "holds no text_encoder and no text_encoder_2")


def test_a_classifier_or_a_prediction_type_where_it_does_not_apply():
    from studio.checkpoints.models import load_model

    with pytest.raises(ModelLoadError, match="prediction type is chosen for single-file checkpoints only"):
        load_model("gmm", "cpu", prediction_type="v_prediction")
