"""Image-to-image (SDEdit, Meng et al. 2022): the studio's run from a noised image against independent truths.

- On a tiny Stable Diffusion pipeline built from configs (tests/text_pipelines.py), the studio's final latents
  equal diffusers' ``StableDiffusionImg2ImgPipeline``'s to 1e-4 relative, for the same image latents, strength,
  prompt, guidance and noise. diffusers draws its ε with the generator inside ``prepare_latents``; the same ε is
  drawn here with the same generator and given to the studio's forward process (``core.forward.noised``) at the
  start of its tail plan (``core.forward.tail_plan``), the pieces a ``Run`` composes. The latents are handed to
  diffusers as the image (4 channels: used as they are), since its own encoding *samples* the latent
  distribution, while the studio takes its mean; that mean is checked separately against diffusers'
  ``retrieve_latents(..., sample_mode="argmax")``.
- On the exact gmm model: a run that starts at the plan's last step returns the image (to the noise that step
  leaves), strength 1 is the ordinary run from the seed's noise (to the √ᾱ_T x₀ the schedule leaves), and the
  forward-process draw matches its closed form q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I).
- Recipes replay exactly, branch and refuse bad settings with one line.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from studio.core import engine, images
from studio.core.forward import noised, start_index, tail_plan
from studio.core.gmm import GaussianMixtureModel
from studio.core.guidance import Guidance
from studio.core.pipeline import load_pipeline_folder
from studio.session.recipe import Recipe, RecipeError
from studio.session.runner import Run, execute
from _models import one_fast_case
from text_pipelines import BATCH, NEGATIVE, PROMPT, SIZE, TOL, make_sd_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}


def picture(size=(SIZE, SIZE), seed: int = 0) -> np.ndarray:
    """A smooth colour image (H, W, 3) uint8: gradients and a disc, so the VAE's latents are not noise."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    r = np.random.RandomState(seed).rand(3)
    img = np.stack([xx * r[0], yy * r[1], ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1) * r[2]], -1)
    return (img / img.max() * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = make_sd_pipeline(tmp_path_factory.mktemp("img2img") / "sd")
    studio = load_pipeline_folder(folder, torch.device("cpu"), torch.float32)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return studio, pipe


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "start.png"
    Image.fromarray(picture()).save(path)
    return path


def diffusers_img2img(pipe, kind, steps, strength, latents, scale, seed):
    import diffusers

    extra = dict(solver_order=2, algorithm_type="dpmsolver++") if kind == "dpmpp_2m" else {}
    pipe.scheduler = getattr(diffusers, SCHEDULERS[kind]).from_config(pipe.scheduler.config, **extra)
    with torch.no_grad():
        out = pipe(prompt=[PROMPT] * BATCH, negative_prompt=[NEGATIVE] * BATCH if scale > 1 else None,
                   image=latents.expand(BATCH, -1, -1, -1).clone(), strength=strength, num_inference_steps=steps,
                   guidance_scale=scale, generator=torch.Generator().manual_seed(seed), output_type="latent")
    return out.images


def studio_img2img(model, kind, steps, strength, x0, eps, scale):
    spec_plan = engine.model_plan(model, engine.get_sampler(kind), steps)
    plan = tail_plan(spec_plan, start_index(steps, strength))
    guidance = Guidance("cfg", scale) if scale > 1 else Guidance("none")
    last = None
    for rec in engine.sample(model, kind, steps, batch=BATCH, plan=plan, init_noise=noised(x0, eps, plan.alpha_bars[0]),
                             guidance=guidance, prompt=PROMPT, negative_prompt=NEGATIVE if scale > 1 else None):
        last = rec
    return last.x, plan.steps


CASES = [("ddim", 0.6, 7.5), ("ddim", 0.3, 7.5), ("ddim", 1.0, 7.5), ("ddim", 0.3, 1.0), ("ddim", 0.6, 1.0),
         ("ddim", 1.0, 1.0), ("euler", 0.3, 7.5), ("euler", 0.8, 7.5), ("dpmpp_2m", 0.3, 7.5), ("dpmpp_2m", 0.8, 7.5)]


@pytest.mark.parametrize("kind,strength,scale", one_fast_case(CASES))
def test_final_latents_match_diffusers_img2img(sd, image_file, kind, strength, scale):
    model, pipe = sd
    steps = 15 if kind == "dpmpp_2m" else 10
    fitted = images.open_image(image_file, (SIZE, SIZE))
    x0 = images.encode(model, fitted.pixels)  # (1, 4, 8, 8): the VAE's mean, scaled
    eps = torch.randn((BATCH, *x0.shape[1:]), generator=torch.Generator().manual_seed(3))  # diffusers' draw
    ours, taken = studio_img2img(model, kind, steps, strength, x0.expand(BATCH, -1, -1, -1), eps, scale)
    ref = torch.as_tensor(np.asarray(diffusers_img2img(pipe, kind, steps, strength, x0, scale, seed=3)))
    assert taken == int(steps * strength)  # as many steps as diffusers' img2img takes
    assert float((ours - ref).abs().max() / ref.abs().max()) < TOL


def test_image_latents_are_the_vae_mean_as_diffusers_computes_it(sd, image_file):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    model, pipe = sd
    ours = images.encode(model, images.open_image(image_file, (SIZE, SIZE)).pixels)
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(Image.open(image_file))
        ref = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax") * pipe.vae.config.scaling_factor
    assert torch.allclose(ours, ref, atol=1e-5)


def test_a_text_model_run_starts_at_the_noised_image(sd, image_file):
    model, _ = sd
    r = Recipe(model="sd", sampler="euler", steps=10, strength=0.5, init_image=str(image_file), prompt=PROMPT, batch=2)
    run = Run(r, model=model)
    traj = run.run_to_end()
    assert len(traj) == 5 and traj.finished and run.recipe.init_image_sha256
    assert traj.full_state(-1)["x"].shape == (2, 4, 8, 8)


# -- gmm: the exact model -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmm():
    return GaussianMixtureModel()


def gmm_image(path, gmm, component: int = 1):
    """A gmm component's mean, saved as an 8-bit PNG; returns x₀ as the studio reads it back."""
    x = gmm.means[component].float()
    arr = ((x.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)


def test_starting_at_the_last_step_returns_the_image(gmm, tmp_path):
    x0 = gmm_image(tmp_path / "mean.png", gmm)
    r = Recipe(model="gmm", sampler="ddim", steps=20, start_step=19, init_image=str(tmp_path / "mean.png"),
               batch=2, guidance="none")
    run = Run(r, model=gmm)
    traj = run.run_to_end()
    noise_left = math.sqrt(1 - float(run.plan.alpha_bars[0]))  # the noise the last step starts with
    assert len(traj) == 1 and noise_left < 0.1
    start_error = float((traj.full_state(-1)["x"] - x0).abs().max())
    assert 0 < start_error < 5 * noise_left
    assert float((traj.full_state(0)["x"] - x0).abs().max()) < start_error  # the step removes noise: nearer the image


def test_strength_one_is_the_ordinary_run_from_the_seeds_noise(gmm, tmp_path):
    gmm_image(tmp_path / "mean.png", gmm)
    base = Recipe(model="gmm", sampler="ddim", steps=20, batch=2, seed=5, guidance="none")
    plain = Run(base, model=gmm).run_to_end()
    img = Run(base.replace(init_image=str(tmp_path / "mean.png"), strength=1.0), model=gmm).run_to_end()
    assert len(img) == len(plain) == 20
    ab_T = float(engine.model_plan(gmm, engine.get_sampler("ddim"), 20).alpha_bars[0])
    start_gap = float((img.full_state(-1)["x"] - plain.full_state(-1)["x"]).abs().max())
    assert start_gap <= 3 * math.sqrt(ab_T) + 1e-6  # only the √ᾱ_T x₀ the schedule leaves differs
    assert torch.allclose(img.full_state(19)["x"], plain.full_state(19)["x"], atol=0.05)


def test_forward_process_matches_its_closed_form(gmm, tmp_path):
    """x_t = √ᾱ x₀ + √(1 − ᾱ) ε: over many draws, mean √ᾱ x₀ and variance 1 − ᾱ (q(x_t | x₀), Ho et al. eq. 4)."""
    from studio.core.schedule import NoiseSchedule

    sched = NoiseSchedule.from_config(gmm.info.scheduler_config)
    x0 = torch.linspace(-1, 1, 16)
    eps = torch.randn(200_000, 16, generator=torch.Generator().manual_seed(0))
    for t in (0, 250, 999):
        ab = sched.alpha_bar(t)
        xt = noised(x0, eps, ab)
        assert torch.allclose(xt.mean(0), math.sqrt(ab) * x0, atol=0.01)
        assert torch.allclose(xt.var(0), torch.full((16,), 1 - ab), atol=0.01)
    a = torch.tensor([[0.5, -0.25]])
    assert torch.allclose(noised(a, torch.tensor([[1.0, 2.0]]), 0.64), 0.8 * a + 0.6 * torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("steps,strength,expected", [(10, 0.3, 7), (10, 1.0, 0), (50, 0.58, 22), (4, 0.25, 3)])
def test_start_index_is_diffusers_rule(steps, strength, expected):
    assert start_index(steps, strength) == expected == steps - int(steps * strength)


def test_the_first_step_is_where_the_run_starts(gmm, tmp_path):
    gmm_image(tmp_path / "mean.png", gmm)
    r = Recipe(model="gmm", sampler="ddim", steps=10, start_step=4, init_image=str(tmp_path / "mean.png"),
               guidance="none", batch=1)
    run = Run(r, model=gmm)
    full = engine.model_plan(gmm, engine.get_sampler("ddim"), 10)
    assert run.plan.steps == 6 and np.array_equal(run.plan.timesteps, full.timesteps[4:])


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "heun", "ddpm", "euler_a", "unipc"])
def test_every_sampler_and_guidance_runs_from_an_image(gmm, tmp_path, sampler):
    gmm_image(tmp_path / "mean.png", gmm)
    r = Recipe(model="gmm", sampler=sampler, steps=8, strength=0.5, init_image=str(tmp_path / "mean.png"), label=1,
               guidance="cfg", scale=2.0, batch=2)
    traj = Run(r, model=gmm).run_to_end()
    assert len(traj) == 4 and torch.isfinite(traj.full_state(3)["x"]).all()


def test_a_recipe_replays_exactly_and_refuses_another_image(gmm, tmp_path):
    path = tmp_path / "mean.png"
    gmm_image(path, gmm)
    r = Recipe(model="gmm", sampler="euler_a", steps=10, strength=0.6, init_image=str(path), batch=2, seed=9,
               guidance="none")
    first = Run(r, model=gmm).run_to_end()
    again = Recipe.from_json(first.recipe.to_json())
    assert again.init_image_sha256 == first.recipe.init_image_sha256
    replay = Run(again, model=gmm).run_to_end()
    assert torch.equal(replay.full_state(len(replay) - 1)["x"], first.full_state(len(first) - 1)["x"])
    gmm_image(path, gmm, component=2)  # the file changes under the recipe
    with pytest.raises(RecipeError, match="not the image this recipe was made with"):
        Run(again, model=gmm)


def test_an_image_to_image_run_branches(gmm, tmp_path):
    gmm_image(tmp_path / "mean.png", gmm)
    r = Recipe(model="gmm", sampler="ddim", steps=10, strength=0.6, init_image=str(tmp_path / "mean.png"), batch=1,
               guidance="none")
    parent = Run(r, model=gmm).run_to_end()
    same = Run(r, model=gmm, parent=parent, from_step=2).run_to_end()  # exact continuation
    assert torch.allclose(same.full_state(len(same) - 1)["x"], parent.full_state(len(parent) - 1)["x"])
    other = Run(r.replace(sampler="euler", steps=5), model=gmm, parent=parent, from_step=2)
    assert len(other.run_to_end()) == 5
    replayed = execute(other.recipe, cache=_cache_with(gmm))
    assert torch.equal(replayed.full_state(4)["x"], other.trajectory.full_state(4)["x"])


def _cache_with(model):
    from studio.session.runner import ModelCache

    cache = ModelCache()
    cache.put(Recipe(model="gmm").validate(), model)
    return cache


# -- bad settings: one line each ------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,pattern", [
    (dict(strength=0.0), r"strength must be a number > 0 and ≤ 1"),
    (dict(strength=1.5), r"strength must be a number > 0 and ≤ 1"),
    (dict(strength=0.05, steps=10), r"leaves no step"),
    (dict(strength=0.3, start_step=2), r"not both"),
    (dict(start_step=10, steps=10), r"beyond the plan"),
    (dict(init_noise="/tmp/x_T.npy"), r"exclude each other"),
    (dict(init_image=None, strength=0.5), r"strength applies to image-to-image runs"),
    (dict(init_image_sha256="beef"), r"64 hexadecimal digits"),
])
def test_bad_image_to_image_settings_are_one_line(changes, pattern):
    r = Recipe(model="gmm", init_image="/images/cat.png", guidance="none").replace(**changes)
    with pytest.raises(RecipeError, match=pattern) as e:
        r.validate()
    assert "\n" not in str(e.value)


def test_cli_runs_image_to_image_and_replays_it(tmp_path, capsys):
    from studio.cli import main

    path = tmp_path / "wide.png"
    Image.fromarray(picture((24, 40))).save(path)
    out = tmp_path / "run"
    assert main(["sample", "--model", "gmm", "--init-image", str(path), "--strength", "0.5", "--steps", "6",
                 "--batch", "1", "--guidance", "none", "--out", str(out), "--quiet"]) == 0
    assert "centre-cropped to 16×16" in capsys.readouterr().err
    saved = Recipe.load(out / "recipe.json")
    assert saved.init_image == "init_image.png" and (out / "init_image.png").read_bytes() == path.read_bytes()
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert (tmp_path / "again" / "final.png").read_bytes() == (out / "final.png").read_bytes()
    # a start step given on replay replaces the recorded strength (not "both")
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--start-step", "4", "--out", str(tmp_path / "late"),
                 "--quiet"]) == 0
    late = Recipe.load(tmp_path / "late" / "recipe.json")
    assert (late.start_step, late.strength) == (4, None) and late.init_image_sha256 == saved.init_image_sha256


@pytest.mark.parametrize("args,pattern", [
    (["--strength", "0.5", "--start-step", "2"], "not both"),
    (["--strength", "2"], "strength must be"),
    (["--start-step", "99"], "beyond the plan"),
])
def test_cli_bad_settings_are_one_line(tmp_path, capsys, args, pattern):
    from studio.cli import main

    path = tmp_path / "a.png"
    Image.fromarray(picture()).save(path)
    code = main(["sample", "--model", "gmm", "--init-image", str(path), "--steps", "10", "--guidance", "none",
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and pattern in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
