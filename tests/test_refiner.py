"""Sampling with an SDXL refiner checkpoint: its second text encoder only, and the aesthetic-score
micro-conditioning ((original size, crop, aesthetic score) in place of the base model's (original size,
crop, target size), Podell et al. 2023, Sec. 2.2; 6.0 for the prompt and 2.5 for the unconditional
branch, diffusers' defaults).

The truth is diffusers' ``StableDiffusionXLImg2ImgPipeline`` over the tiny refiner the single file was
written from (checkpoint_files.py):
- text-to-image: the pipeline given the initial latents as its (4-channel) image, at strength 1 with
  ``denoising_start=0.0``, so that it adds no noise and runs every step from exactly those latents;
- image-to-image: the image's latents as its image, noised by the pipeline with its generator; the same
  ε, drawn here with that generator, is given to the studio's forward process at the start of its tail
  plan (as tests/test_img2img.py does for SD).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoint_files import make_tiny_checkpoint

from studio.checkpoints.loading import open_checkpoint
from studio.core import engine
from studio.core.forward import noised, start_index, tail_plan
from studio.core.guidance import Guidance

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

SIZE, BATCH, TOL, STEPS = 16, 2, 1e-4, 10
PROMPT, NEGATIVE = "a red seven on a blue background", "green"
SCHEDULERS = {"ddim": ("DDIMScheduler", {}),
              "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"})}


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    pipe, path, configs = make_tiny_checkpoint("sdxl-refiner", tmp_path_factory.mktemp("refiner"))
    pipe.set_progress_bar_config(disable=True)
    return pipe, open_checkpoint(path, config_root=configs)


def diffusers_refiner(pipe, kind, image, strength, scale, seed=0, **kw):
    import diffusers

    name, extra = SCHEDULERS[kind]
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **extra)
    with torch.no_grad():
        out = pipe(prompt=[PROMPT] * BATCH, negative_prompt=[NEGATIVE] * BATCH if scale > 1 else None,
                   image=image.clone(), strength=strength, num_inference_steps=STEPS, guidance_scale=scale,
                   generator=torch.Generator().manual_seed(seed), output_type="latent", **kw)
    return torch.as_tensor(np.asarray(out.images))


def studio_run(model, kind, start, x_start, scale):
    plan = tail_plan(engine.model_plan(model, engine.get_sampler(kind), STEPS), start)
    guidance = Guidance("cfg", scale) if scale > 1 else Guidance("none")
    last = None
    for last in engine.sample(model, kind, STEPS, batch=BATCH, plan=plan, init_noise=x_start(plan), guidance=guidance,
                              prompt=PROMPT, negative_prompt=NEGATIVE if scale > 1 else None, size=(SIZE, SIZE)):
        pass
    return last.x


def relative_error(ours, ref) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def test_the_refiner_opens_as_a_text_model_with_aesthetic_scores(refiner):
    pipe, model = refiner
    assert model.info.text_conditioned and model.info.pipeline == "StableDiffusionXLImg2ImgPipeline"
    assert len(model.text_encoders) == 1
    cond, uncond, _ = model.conditions(PROMPT, None, 1, SIZE, SIZE)
    assert cond.time_ids.tolist() == [[SIZE, SIZE, 0, 0, 6.0]] and uncond.time_ids.tolist() == [[SIZE, SIZE, 0, 0, 2.5]]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.pooled, pooled)


@pytest.mark.parametrize("scale", [5.0, pytest.param(1.0, marks=pytest.mark.slow)], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("kind", ["ddim", pytest.param("dpmpp_2m", marks=pytest.mark.slow)])
def test_text_to_image_matches_diffusers_refiner(refiner, kind, scale):
    pipe, model = refiner
    x_T = torch.randn(BATCH, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    ours = studio_run(model, kind, 0, lambda plan: x_T, scale)
    ref = diffusers_refiner(pipe, kind, x_T, 1.0, scale, denoising_start=0.0)
    assert relative_error(ours, ref) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("kind,strength", [("ddim", 0.3), ("ddim", 0.8), ("dpmpp_2m", 0.8)])
def test_image_to_image_matches_diffusers_refiner(refiner, kind, strength, scale):
    pipe, model = refiner
    x0 = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(2)).expand(BATCH, -1, -1, -1)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # the pipeline's own draw
    ours = studio_run(model, kind, start_index(STEPS, strength), lambda plan: noised(x0, eps, plan.alpha_bars[0]),
                      scale)
    ref = diffusers_refiner(pipe, kind, x0, strength, scale, seed=3)
    assert relative_error(ours, ref) < TOL


@pytest.mark.slow
def test_studio_sample_runs_a_refiner_file_from_an_image(tmp_path, monkeypatch):
    from PIL import Image
    from test_checkpoint_loading import sample_args

    from studio.checkpoints import configs as configs_module
    from studio.cli import main

    _, path, configs = make_tiny_checkpoint("sdxl-refiner", tmp_path / "m")
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", configs)
    start = tmp_path / "start.png"
    Image.fromarray((np.random.RandomState(0).rand(SIZE, SIZE, 3) * 255).astype(np.uint8)).save(start)
    assert main(sample_args(path, tmp_path / "t2i")) == 0
    assert main(sample_args(path, tmp_path / "i2i", "--init-image", str(start), "--strength", "0.5")) == 0
    xt = np.load(tmp_path / "i2i" / "trajectory.npz")["xt"]
    assert len(xt) == 2  # int(2 · 0.5) = 1 step after the noised image


# == the refiner as a diffusers pipeline folder ==============================================================
@pytest.fixture(scope="module")
def refiner_folder(refiner, tmp_path_factory):
    """The tiny refiner written by diffusers' own ``save_pretrained``: model_index.json names
    StableDiffusionXLImg2ImgPipeline, text_encoder and tokenizer are [null, null]."""
    from studio.checkpoints.convert import write_sha256sums

    pipe, _ = refiner
    folder = tmp_path_factory.mktemp("refiner-folder") / "refiner"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_sha256sums(folder)
    return folder


def test_a_refiner_folder_opens_as_the_refiner(refiner, refiner_folder):
    import json

    from studio.checkpoints.models import load_model
    from studio.session.model_description import describe_model

    index = json.loads((refiner_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["text_encoder"] == [None, None]
    model = load_model(str(refiner_folder), "cpu")
    assert model.info.pipeline == "StableDiffusionXLImg2ImgPipeline" and len(model.text_encoders) == 1
    cond, uncond, _ = model.conditions(PROMPT, None, 1, SIZE, SIZE)
    assert cond.time_ids.tolist() == [[SIZE, SIZE, 0, 0, 6.0]] and uncond.time_ids.tolist() == [[SIZE, SIZE, 0, 0, 2.5]]
    described = describe_model(str(refiner_folder))  # what a sweep's driver checks, weights-free
    assert described.info.pipeline == model.info.pipeline
    assert described.info.text_encoders == model.info.text_encoders


def test_a_refiner_folder_samples_as_diffusers_refiner(refiner, refiner_folder):
    from studio.checkpoints.models import load_model

    pipe, _ = refiner
    model = load_model(str(refiner_folder), "cpu")
    x_T = torch.randn(BATCH, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    ours = studio_run(model, "ddim", 0, lambda plan: x_T, 5.0)
    ref = diffusers_refiner(pipe, "ddim", x_T, 1.0, 5.0, denoising_start=0.0)
    assert relative_error(ours, ref) < TOL


def test_the_base_saved_as_an_image_to_image_folder_opens_as_the_base(tmp_path):
    """``StableDiffusionXLImg2ImgPipeline(**base.components).save_pretrained``: both encoders and no
    aesthetic score; it is SDXL base, and opens as such."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from studio.checkpoints.convert import write_sha256sums
    from studio.checkpoints.models import load_model

    base, _, _ = make_tiny_checkpoint("sdxl", tmp_path / "base")
    folder = tmp_path / "img2img"
    StableDiffusionXLImg2ImgPipeline(**base.components, requires_aesthetics_score=False).save_pretrained(
        str(folder), safe_serialization=True)
    write_sha256sums(folder)
    model = load_model(str(folder), "cpu")
    assert model.info.pipeline == "StableDiffusionXLPipeline" and len(model.text_encoders) == 2
