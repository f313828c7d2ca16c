"""ε or v: the sidecar configs the web UIs read (the LDM and SGM configs Stability shipped), the files'
own markers, the pickle step rule and diffusers' family default, in that order; an explicit choice
overrides them all. Real full-size headers (test_checkpoint_layouts.py) and real sidecar files."""
from __future__ import annotations

import json

import pytest
from test_checkpoint_layouts import sd15, sd21, sdxl_base, write_sparse_safetensors

from studio.checkpoints import (
    CheckpointError,
    CheckpointHeader,
    choose_prediction,
    inspect_checkpoint,
    read_header,
)
from studio.checkpoints.families import SD2

# the parts of stablediffusion's configs/stable-diffusion/v2-inference-v.yaml and v2-inference.yaml that matter
V2_INFERENCE_V = """model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        num_head_channels: 64
        context_dim: 1024
"""
V2_INFERENCE = V2_INFERENCE_V.replace('    parameterization: "v"\n', "")
# generative-models' configs/inference/sd_xl_base.yaml, with the denoiser's scaling named
SDXL_INFERENCE = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    disable_first_stage_autocast: True
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        num_idx: 1000
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.{scaling}
        discretization_config:
          target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization
"""


@pytest.fixture
def sd2_file(tmp_path):
    return write_sparse_safetensors(tmp_path / "v2-1_768.safetensors", sd21())


def test_sd2_without_sidecar_takes_diffusers_default(sd2_file):
    info = inspect_checkpoint(sd2_file)
    assert info.prediction.prediction_type == "v_prediction" and info.prediction.sidecar is None
    assert "diffusers" in info.prediction.source and info.native_size == 768


def test_sidecar_yaml_with_parameterization_v(sd2_file):
    sidecar = sd2_file.with_suffix(".yaml")
    sidecar.write_text(V2_INFERENCE_V)
    info = inspect_checkpoint(sd2_file)
    assert info.prediction.prediction_type == "v_prediction" and info.prediction.sidecar == sidecar
    assert "v2-1_768.yaml" in info.prediction.source and "parameterization" in info.prediction.source


def test_sidecar_yaml_without_parameterization_means_epsilon_at_512(sd2_file):
    sd2_file.with_suffix(".yaml").write_text(V2_INFERENCE)
    info = inspect_checkpoint(sd2_file)
    assert info.prediction.prediction_type == "epsilon" and info.native_size == 512


def test_sidecar_turns_an_sd1_finetune_into_v_prediction(tmp_path):
    path = write_sparse_safetensors(tmp_path / "finetune.safetensors", sd15())
    path.with_suffix(".yaml").write_text(V2_INFERENCE_V)
    assert inspect_checkpoint(path).prediction.prediction_type == "v_prediction"


@pytest.mark.parametrize("scaling, expected", [("VScaling", "v_prediction"), ("EpsScaling", "epsilon")])
def test_sgm_sidecar_names_the_denoiser_scaling(tmp_path, scaling, expected):
    path = write_sparse_safetensors(tmp_path / "xl.safetensors", sdxl_base())
    path.with_suffix(".yaml").write_text(SDXL_INFERENCE.format(scaling=scaling))
    prediction = inspect_checkpoint(path).prediction
    assert prediction.prediction_type == expected and scaling in prediction.source


def test_json_sidecar_with_a_diffusers_prediction_type(sd2_file):
    sd2_file.with_suffix(".json").write_text(json.dumps({"prediction_type": "epsilon"}))
    assert inspect_checkpoint(sd2_file).prediction.prediction_type == "epsilon"


def test_the_explicit_choice_overrides_the_sidecar(sd2_file):
    sd2_file.with_suffix(".yaml").write_text(V2_INFERENCE_V)
    prediction = inspect_checkpoint(sd2_file, prediction_type="epsilon").prediction
    assert prediction.prediction_type == "epsilon" and prediction.source == "chosen explicitly"
    with pytest.raises(ValueError, match="epsilon or v_prediction"):
        inspect_checkpoint(sd2_file, prediction_type="sample")


@pytest.mark.parametrize("text, words", [
    ("model: [unclosed", "not valid YAML"),
    ('model:\n  params:\n    parameterization: "x0"\n', "'x0'"),
    (SDXL_INFERENCE.format(scaling="EDMScaling"), "EDMScaling"),
    ("just a string", "expected a config"),
    ("other: 1\n", "says nothing about the prediction type"),
])
def test_an_unusable_sidecar_is_refused_in_one_line_naming_it(sd2_file, text, words):
    sidecar = sd2_file.with_suffix(".yaml")
    sidecar.write_text(text)
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(sd2_file)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(sidecar)) and words in msg, msg


def test_v_pred_marker_and_ztsnr_in_the_file(tmp_path):
    tensors = sdxl_base() | {"v_pred": ("F32", ()), "ztsnr": ("F32", ())}
    path = write_sparse_safetensors(tmp_path / "vpred-xl.safetensors", tensors)
    info = inspect_checkpoint(path)
    assert info.prediction.prediction_type == "v_prediction" and info.prediction.zero_terminal_snr
    assert "'v_pred' marker" in info.prediction.source and "zero terminal SNR" in info.describe()
    assert info.component("other").tensors == 2


def test_modelspec_metadata(tmp_path):
    path = write_sparse_safetensors(tmp_path / "m.safetensors", sd15(),
                                    metadata={"modelspec.prediction_type": "v", "modelspec.architecture": "x"})
    prediction = inspect_checkpoint(path).prediction
    assert prediction.prediction_type == "v_prediction" and "modelspec" in prediction.source


def test_sd2_base_step_in_a_pickle_means_epsilon(tmp_path):
    header = read_header(write_sparse_safetensors(tmp_path / "m.safetensors", sd21()))
    as_pickle = CheckpointHeader(header.path, "pickle", header.file_size, header.tensors, {}, 0,
                                 {"global_step": 875000})
    prediction = choose_prediction(as_pickle, SD2)
    assert prediction.prediction_type == "epsilon" and "875000" in prediction.source
    assert choose_prediction(header, SD2).prediction_type == "v_prediction"
