"""Text-to-image latent pipelines (Stable Diffusion, SDXL) against diffusers' own pipelines.

Tiny random pipelines are built from configs and saved as real folders (tests/text_pipelines.py); the
studio opens them from disk. With the same initial latents, prompt, negative prompt, guidance scale and
scheduler, the studio's final latents and decoded images must equal what ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline.__call__`` produce, to 1e-4 relative to the largest value (float32).

Starting points: diffusers multiplies given latents by the scheduler's ``init_noise_sigma``; the studio's
x_T is in the variance-preserving scale and its Euler/Heun start at x_T·√(σ_max²+1) (diffusers' σ_max
alone for linspace/trailing is an approximation), so diffusers is handed x_T·√(σ_max²+1)/init_noise_sigma.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.core import engine
from studio.core.guidance import Guidance
from studio.core.loading import ModelLoadError
from studio.core.pipeline import load_pipeline_folder
from _models import one_fast_case
from text_pipelines import BATCH, NEGATIVE, PROMPT, SIZE, TOL, SD_SCHEDULER, make_sd_pipeline, make_sdxl_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]



@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "sd": make_sd_pipeline(root / "sd"),
        "sd_v": make_sd_pipeline(root / "sd_v", scheduler={**SD_SCHEDULER, "prediction_type": "v_prediction",
                                                              "timestep_spacing": "trailing"}),
        "sdxl": make_sdxl_pipeline(root / "sdxl"),
        "sd_zsnr": make_sd_pipeline(root / "sd_zsnr", scheduler={**SD_SCHEDULER, "prediction_type": "v_prediction",
                                                                  "timestep_spacing": "trailing",
                                                                  "rescale_betas_zero_snr": True}),
    }


@pytest.fixture(scope="session")
def studio_models(folders):
    return {k: load_pipeline_folder(v, torch.device("cpu"), torch.float32) for k, v in folders.items()}


@pytest.fixture(scope="session")
def diffusers_pipes(folders):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return {
        "sd": StableDiffusionPipeline.from_pretrained(str(folders["sd"]), safety_checker=None),
        "sd_v": StableDiffusionPipeline.from_pretrained(str(folders["sd_v"]), safety_checker=None),
        "sdxl": StableDiffusionXLPipeline.from_pretrained(str(folders["sdxl"])),
        "sd_zsnr": StableDiffusionPipeline.from_pretrained(str(folders["sd_zsnr"]), safety_checker=None),
    }


def x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))


SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler",
              "dpmpp_2m": "DPMSolverMultistepScheduler"}


def diffusers_run(pipe, kind: str, steps: int, spacing: str, latents: torch.Tensor, scale: float,
                  negative=NEGATIVE, rescale: float = 0.0, output_type: str = "latent"):
    import diffusers

    extra = dict(solver_order=2, algorithm_type="dpmsolver++") if kind == "dpmpp_2m" else {}
    pipe.scheduler = getattr(diffusers, SCHEDULERS[kind]).from_config(pipe.scheduler.config, timestep_spacing=spacing,
                                                                      **extra)
    pipe.scheduler.set_timesteps(steps)
    start = latents
    if kind in ("euler", "heun"):
        sigma_max = float(pipe.scheduler.sigmas[0])
        start = latents * math.sqrt(sigma_max ** 2 + 1) / float(pipe.scheduler.init_noise_sigma)
    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=scale,
                   latents=start.clone(), num_images_per_prompt=BATCH, height=SIZE, width=SIZE,
                   guidance_rescale=rescale, output_type=output_type)
    return out.images


def studio_run(model, kind, steps, spacing, latents, scale, negative=NEGATIVE, rescale=0.0):
    last = None
    for rec in engine.sample(model, kind, steps, batch=BATCH, init_noise=latents, spacing=spacing,
                             guidance=Guidance("cfg", scale), prompt=PROMPT, negative_prompt=negative,
                             guidance_rescale=rescale):
        last = rec
    return last.x


def rel_err(ours, ref) -> float:
    ref = torch.as_tensor(np.asarray(ref))
    return float((ours - ref).abs().max() / ref.abs().max())


CASES = [("ddim", 10, "leading"), ("ddim", 10, "trailing"), ("euler", 10, "linspace"), ("heun", 6, "linspace"),
         ("dpmpp_2m", 15, "linspace")]


@pytest.mark.parametrize("key", ["sd", "sdxl"])
@pytest.mark.parametrize("kind,steps,spacing", one_fast_case(CASES))
def test_final_latents_match_diffusers_pipeline(studio_models, diffusers_pipes, key, kind, steps, spacing):
    lat = x_T(1)
    ours = studio_run(studio_models[key], kind, steps, spacing, lat, 5.0)
    ref = diffusers_run(diffusers_pipes[key], kind, steps, spacing, lat, 5.0)
    assert rel_err(ours, ref) <= TOL, f"{key} {kind} {spacing}: {rel_err(ours, ref):.2e}"


@pytest.mark.parametrize("key", ["sd", "sdxl"])
def test_decoded_image_matches_diffusers(studio_models, diffusers_pipes, key):
    model = studio_models[key]
    lat = x_T(2)
    final = studio_run(model, "ddim", 8, "leading", lat, 4.0)
    ours = (model.decode(final) + 1) / 2  # diffusers' postprocess: x/2 + 0.5, clamped
    ref = diffusers_run(diffusers_pipes[key], "ddim", 8, "leading", lat, 4.0, output_type="pt")
    assert ours.shape == (BATCH, 3, SIZE, SIZE)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("key", ["sd", "sdxl"])
def test_no_negative_prompt_matches_diffusers(studio_models, diffusers_pipes, key):
    """No negative prompt: SD's unconditional branch is the empty prompt, SDXL's is zeroed
    (force_zeros_for_empty_prompt), exactly as diffusers does."""
    lat = x_T(3)
    ours = studio_run(studio_models[key], "ddim", 8, "leading", lat, 3.0, negative=None)
    ref = diffusers_run(diffusers_pipes[key], "ddim", 8, "leading", lat, 3.0, negative=None)
    assert rel_err(ours, ref) <= TOL
    other = studio_run(studio_models[key], "ddim", 8, "leading", lat, 3.0, negative=NEGATIVE)
    assert (other - ours).abs().max() > 1e-3  # the negative prompt is really the unconditional branch


def test_guidance_rescale_matches_diffusers(studio_models, diffusers_pipes):
    lat = x_T(4)
    ours = studio_run(studio_models["sd"], "ddim", 8, "leading", lat, 6.0, rescale=0.7)
    ref = diffusers_run(diffusers_pipes["sd"], "ddim", 8, "leading", lat, 6.0, rescale=0.7)
    assert rel_err(ours, ref) <= TOL
    plain = studio_run(studio_models["sd"], "ddim", 8, "leading", lat, 6.0)
    assert (plain - ours).abs().max() > 1e-3


@pytest.mark.parametrize("kind,steps", one_fast_case([("ddim", 8), ("euler", 8), ("dpmpp_2m", 15)]))
def test_v_prediction_matches_diffusers(studio_models, diffusers_pipes, kind, steps):
    assert studio_models["sd_v"].info.prediction_type == "v_prediction"
    lat = x_T(5)
    ours = studio_run(studio_models["sd_v"], kind, steps, "trailing", lat, 3.0)
    ref = diffusers_run(diffusers_pipes["sd_v"], kind, steps, "trailing", lat, 3.0)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("kind,steps", one_fast_case([("ddim", 8), ("euler", 8), ("dpmpp_2m", 15)]))
def test_zero_terminal_snr_matches_diffusers(studio_models, diffusers_pipes, kind, steps):
    """rescale_betas_zero_snr (Lin et al. 2024): ᾱ_T = 0, so the first step sees pure noise and x̂₀ comes
    from v̂ directly; the σ-space samplers use ᾱ_T = 2⁻²⁴ as diffusers does."""
    model = studio_models["sd_zsnr"]
    lat = x_T(6)
    ours = studio_run(model, kind, steps, "trailing", lat, 3.0)
    ref = diffusers_run(diffusers_pipes["sd_zsnr"], kind, steps, "trailing", lat, 3.0)
    assert torch.isfinite(ours).all()
    assert rel_err(ours, ref) <= TOL, f"{kind}: {rel_err(ours, ref):.2e}"


def test_prompt_embeddings_are_computed_once(studio_models):
    model = studio_models["sd"]
    calls = []
    enc = model.text_encoders[0]
    hook = enc.register_forward_hook(lambda *a: calls.append(1))
    try:
        for _ in range(2):
            list(engine.sample(model, "ddim", 3, batch=BATCH, guidance=Guidance("cfg", 2.0),
                               prompt="a prompt seen once", negative_prompt="a negative seen once"))
    finally:
        hook.remove()
    assert len(calls) == 2  # one forward for the prompt, one for the negative prompt, over both runs


def test_long_prompt_truncation_is_reported(studio_models):
    model = studio_models["sd"]
    assert model.truncated_text("short") == ""
    cut = model.truncated_text("one two three four five six seven")  # 16 tokens of characters
    assert cut and cut.replace(" ", "") in "onetwothreefourfivesixseven"


def test_info_describes_pipeline(studio_models):
    info = studio_models["sdxl"].info
    text = info.describe()
    assert info.pipeline == "StableDiffusionXLPipeline" and info.image_size == SIZE and info.vae_scale_factor == 2
    assert "CLIPTextModelWithProjection" in text and "4x8x8" in text


def test_text_model_refuses_labels_and_classifier_guidance(studio_models):
    model = studio_models["sd"]
    with pytest.raises(ValueError, match="no class label"):
        list(engine.sample(model, "ddim", 2, label=1, prompt="x"))
    with pytest.raises(ValueError, match="classifier guidance is not possible"):
        list(engine.sample(model, "ddim", 2, guidance=Guidance("classifier", 2.0), prompt="x"))
    with pytest.raises(ValueError, match="multiple of 2"):
        list(engine.sample(model, "ddim", 2, prompt="x", size=(15, 16)))


def test_non_square_size(studio_models):
    recs = list(engine.sample(studio_models["sd"], "euler", 2, prompt="x", size=(16, 24), batch=1))
    assert tuple(recs[-1].x.shape) == (1, 4, 8, 12)


def test_linear_preview_fits_a_linear_decoder():
    """On a decoder that is exactly linear per pixel (then nearest-upsampled), the fit recovers it."""
    from studio.core.text_model import apply_linear_preview, fit_linear_preview

    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    b = torch.tensor([0.1, -0.2, 0.3])

    def decode(z):
        rgb = torch.einsum("bchw,cd->bdhw", z, w) + b.view(1, 3, 1, 1)
        return torch.nn.functional.interpolate(rgb, scale_factor=4, mode="nearest")

    fitted = fit_linear_preview(decode, 4, 4)
    assert torch.allclose(fitted[:-1], w, atol=1e-4) and torch.allclose(fitted[-1], b, atol=1e-4)
    z = torch.randn(2, 4, 5, 5)
    assert torch.allclose(apply_linear_preview(fitted, z), torch.einsum("bchw,cd->bdhw", z, w) + b.view(1, 3, 1, 1),
                          atol=1e-4)


def test_preview_is_cached_outside_the_model_folder(studio_models, folders, tmp_path, monkeypatch):
    """In the studio's one cache folder, $STUDIO_CACHE_DIR (as the README says), not the model folder."""
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path))
    model = load_pipeline_folder(folders["sd"], torch.device("cpu"), torch.float32)
    w = model.preview_weights()
    cached = list((tmp_path / "previews").glob("*.json"))
    assert len(cached) == 1 and not list(folders["sd"].rglob("*preview*"))
    again = load_pipeline_folder(folders["sd"], torch.device("cpu"), torch.float32)
    assert torch.equal(again.preview_weights(), w)
    rgb = model.preview(x_T())
    assert rgb.shape == (BATCH, 3, SIZE // 2, SIZE // 2) and rgb.abs().max() <= 1


# -- malformed folders: one line naming the component and the problem ----------------------------------
def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage,pattern", [
    (lambda f: __import__("shutil").rmtree(f / "vae"), r"component vae/ is missing"),
    (lambda f: [p.unlink() for p in (f / "tokenizer").glob("*")], r"tokenizer files missing"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), r"no diffusion_pytorch_model.safetensors"),
    (lambda f: (f / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}'), r"not supported"),
])
def test_malformed_folder_one_line(folders, tmp_path, damage, pattern):
    f = _copy(folders["sd"], tmp_path / "bad")
    damage(f)
    with pytest.raises(ModelLoadError, match=pattern) as e:
        load_pipeline_folder(f, torch.device("cpu"), torch.float32)
    assert "\n" not in str(e.value)


def test_pickled_component_refused_unless_allowed(folders, tmp_path):
    from safetensors.torch import load_file

    f = _copy(folders["sd"], tmp_path / "pickled")
    st = f / "text_encoder" / "model.safetensors"
    torch.save(load_file(str(st)), f / "text_encoder" / "pytorch_model.bin")
    st.unlink()
    with pytest.raises(ModelLoadError, match="pickled weights are refused"):
        load_pipeline_folder(f, torch.device("cpu"), torch.float32)
    model = load_pipeline_folder(f, torch.device("cpu"), torch.float32, allow_pickle=True)
    assert model.info.pipeline == "StableDiffusionPipeline"


def test_mismatched_components_refused(folders, tmp_path):
    import shutil

    other = make_sd_pipeline(tmp_path / "wide", cross_attention_dim=48)
    f = _copy(folders["sd"], tmp_path / "mixed")
    shutil.rmtree(f / "unet")
    shutil.copytree(other / "unet", f / "unet")
    with pytest.raises(ModelLoadError, match="does not match the UNet's cross_attention_dim"):
        load_pipeline_folder(f, torch.device("cpu"), torch.float32)
    odd = make_sd_pipeline(tmp_path / "lat8", latent_channels=8)
    g = _copy(folders["sd"], tmp_path / "mixed_vae")
    shutil.rmtree(g / "vae")
    shutil.copytree(odd / "vae", g / "vae")
    with pytest.raises(ModelLoadError, match="latent_channels 8 does not match"):
        load_pipeline_folder(g, torch.device("cpu"), torch.float32)
