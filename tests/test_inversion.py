"""DDIM inversion (core/inversion.py, session/inversion.py, `studio invert`) against independent truths.

- Plain inversion equals a loop written with diffusers' ``DDIMInverseScheduler`` (clip_sample off: the studio
  never clips while inverting) to 1e-4 relative to max |x|: on a tiny UNet2DModel pixel model whose config
  asks for clipping (leading spacing; trailing spacing with diffusers' t − T//N step rule) and on a tiny
  Stable Diffusion pipeline, unguided and with classifier-free guidance and a negative prompt.
- Fixed-point inversion solves the implicit equation of the DDIM step: a forward DDIM step from each inverted
  state returns the state it came from, more closely with more iterations, and the round trip's PSNR rises
  with K on the exact gmm model. On the shipped digits model (slow): ≥ 50 dB at 50 steps with K ≤ 4, while
  plain inversion stays far below.
- `studio invert` writes its folder atomically, prints the PSNR on one line, and `studio sample --recipe`
  regenerates the same image from it; bad input is refused in one line with nothing left behind.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from studio.core import engine
from studio.core.guidance import Guidance
from studio.core.inversion import InversionError, check_method, invert
from studio.core.loading import load_model
from studio.core.pipeline import load_pipeline_folder
from studio.session.inversion import (Inversion, caption, inversion_recipe, psnr, regenerate, round_trip)
from studio.session.recipe import Recipe, RecipeError
from _models import make_unet, one_fast_case, save_model_folder
from text_pipelines import NEGATIVE, PROMPT, SD_SCHEDULER, SIZE, TOL, make_sd_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

# the digits model's scheduler, clipping included: inversion must ignore clip_sample
PIXEL_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                       clip_sample=True, prediction_type="epsilon")


def smooth(shape, seed: int = 0) -> torch.Tensor:
    """A smooth O(1) field (sums of low-frequency sinusoids): image-like, not noise."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    f = torch.rand(b, c, 3, generator=g) * 3
    return 0.8 * torch.sin(f[..., 0, None, None] * xx * math.pi + f[..., 1, None, None] * yy * 2 + f[..., 2, None, None])


def last(records):
    rec = None
    for rec in records:
        pass
    return rec


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    """(a tiny UNet2DModel, the studio's model of its saved folder)."""
    unet = make_unet(sample_size=8).eval()
    folder = save_model_folder(unet, tmp_path_factory.mktemp("inv") / "unet", PIXEL_SCHEDULER)
    return unet, load_model(str(folder), "cpu")


def diffusers_inversion(eps_fn, config: dict, steps: int, x0: torch.Tensor, **overrides) -> torch.Tensor:
    """The inversion loop of diffusers' pipelines (e.g. StableDiffusionDiffEditPipeline.invert): for each t of
    DDIMInverseScheduler's ascending timesteps, ε̂ = network(x, t) and x = step(ε̂, t, x)."""
    from diffusers import DDIMInverseScheduler

    sched = DDIMInverseScheduler.from_config(config, clip_sample=False, **overrides)
    sched.set_timesteps(steps)
    x = x0.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(eps_fn(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("spacing,steps,rule", [("leading", 10, "plan"), ("trailing", 7, "stride")])
def test_plain_inversion_matches_diffusers_on_a_pixel_model(pixel, spacing, steps, rule):
    unet, model = pixel
    x0 = smooth((2, 3, 8, 8))
    ours = last(invert(model, x0, steps, spacing=spacing, prev_timestep=rule)).x
    ref = diffusers_inversion(lambda x, t: unet(x, t).sample, {**PIXEL_SCHEDULER, "timestep_spacing": spacing},
                              steps, x0)
    assert rel_err(ours, ref) < TOL
    assert float((ours - x0).abs().max()) > 0.5  # it went somewhere: x_T is not the image


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    folder = make_sd_pipeline(tmp_path_factory.mktemp("inv-sd") / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    return load_pipeline_folder(folder, torch.device("cpu"), torch.float32), pipe


@pytest.mark.parametrize("scale", one_fast_case([7.5, 1.0]))
def test_plain_inversion_matches_diffusers_on_a_tiny_sd_pipeline(sd, scale):
    model, pipe = sd
    guided = scale > 1
    x0 = smooth((2, 4, SIZE // 2, SIZE // 2), seed=1)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt([PROMPT] * 2, "cpu", 1, guided, [NEGATIVE] * 2 if guided else None)

    def eps(x, t):
        if not guided:
            return pipe.unet(x, t, encoder_hidden_states=cond).sample
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return u + scale * (c - u)

    guidance = Guidance("cfg", scale) if guided else Guidance("none")
    ours = last(invert(model, x0, 6, guidance=guidance, prompt=PROMPT,
                       negative_prompt=NEGATIVE if guided else None)).x
    ref = diffusers_inversion(eps, SD_SCHEDULER, 6, x0)
    assert rel_err(ours, ref) < TOL


def forward_ddim_step(model, x, t, ab, ab_to):
    """One unguided DDIM step (Song et al. eq. 12, η = 0) from x at ᾱ = ``ab`` (network timestep t) to ``ab_to``,
    written out here from the network's ε̂."""
    with torch.no_grad():
        eps = model.predict(x, torch.full((x.shape[0],), float(t)), None, math.sqrt((1 - ab) / ab))
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    return math.sqrt(ab_to) * x0 + math.sqrt(1 - ab_to) * eps


def test_fixed_point_solves_the_ddim_step_backwards(gmm):
    """Each inverted state x_i, stepped forwards by DDIM, lands on the state x_{i+1} it was inverted from; the
    miss shrinks with the number of fixed-point iterations (the exact gmm model: ε̂ is smooth in x)."""
    x0, _ = gmm.sample_exact(2, torch.Generator().manual_seed(0))
    misses = []
    for k in (0, 3, 20):
        prev, worst = x0, 0.0
        for rec in invert(gmm, x0, 10, iters=k):
            back = forward_ddim_step(gmm, rec.x, rec.t_next, rec.alpha_bar_next, rec.alpha_bar)
            worst = max(worst, float((back - prev).abs().max()))
            prev = rec.x
        misses.append(worst)
    assert misses[0] > 1e-3 and misses[2] < misses[1] < misses[0] and misses[2] < misses[0] / 10, misses


def test_records_walk_the_chain_forwards_and_count_evaluations(pixel):
    _, model = pixel
    recs = list(invert(model, smooth((1, 3, 8, 8)), 5, iters=2))
    assert [r.index for r in recs] == list(range(5))
    assert all(a.alpha_bar_next < a.alpha_bar for a in recs)  # noisier at every step
    assert all(b.alpha_bar == a.alpha_bar_next for a, b in zip(recs, recs[1:]))  # each starts where the last ended
    assert [r.nfe for r in recs] == [3, 6, 9, 12, 15]  # 1 + K evaluations a step
    # from the clean image (ᾱ = 1, t = −1 as after a run's last step) up to the plan's first timestep
    assert (recs[0].alpha_bar, recs[0].t) == (1.0, -1.0) and [r.t_next for r in recs] == [0, 200, 400, 600, 800]


@pytest.fixture
def gmm_image(gmm, tmp_path):
    x = gmm.means[1].float()
    arr = ((x.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
    path = tmp_path / "mean.png"
    Image.fromarray(arr).save(path)
    return path


def test_fixed_point_raises_the_round_trip_psnr_with_k(gmm, gmm_image, tmp_path):
    psnrs = []
    for k in (0, 1, 2, 3):
        r = inversion_recipe(Recipe(model="gmm", steps=20, guidance="none"), str(gmm_image),
                             "fixed-point" if k else "plain", k)
        inv = Inversion(r, model=gmm)
        inv.run_to_end()
        regen = regenerate(inv, tmp_path / f"x_T_{k}.safetensors").run_to_end()
        psnrs.append(round_trip(inv, regen.final()).psnr)
        assert regen.recipe.x0_mode == "none" and "unclipped" in caption(regen.recipe)
    assert all(b > a + 3 for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_an_edit_runs_from_the_inverted_noise(gmm, gmm_image, tmp_path):
    r = inversion_recipe(Recipe(model="gmm", steps=10, label=1), str(gmm_image), "fixed-point", 2)
    inv = Inversion(r, model=gmm)
    traj = inv.run_to_end()
    assert traj.finished and len(traj) == 10 and torch.equal(traj.full_state(-1)["x"], inv.x0)
    edit = regenerate(inv, tmp_path / "x_T.safetensors", sampler="euler", label=2, guidance="cfg", scale=3.0)
    out = edit.run_to_end()
    assert torch.equal(out.full_state(-1)["x"], inv.x_T)  # the edit starts at the inverted noise
    assert edit.recipe.inversion["recipe"]["label"] == 1 and edit.recipe.label == 2
    assert psnr(out.final().clamp(-1, 1), inv.x0).item() < 40  # another class: not the image
    with pytest.raises(RecipeError, match="deterministic sampler: euler_a draws fresh noise"):
        regenerate(inv, tmp_path / "x_T.safetensors", sampler="euler_a")  # its own η = 1, not DDIM's 0


@pytest.mark.parametrize("changes,pattern", [
    (dict(init_noise="/tmp/x_T.npy"), "cannot start from an initial noise file"),
    (dict(sampler="euler_a"), "deterministic sampler: euler_a draws fresh noise"),
    (dict(sampler="ddim", eta=0.3), "ddim with --eta 0.3 draws fresh noise"),
    (dict(init_image="/tmp/a.png"), "leave --init-image"),
])
def test_bad_inversions_are_one_line(gmm_image, changes, pattern):
    with pytest.raises(RecipeError, match=pattern) as e:
        inversion_recipe(Recipe(model="gmm", guidance="none").replace(**changes), str(gmm_image))
    assert "\n" not in str(e.value)


def test_bad_methods_are_one_line():
    with pytest.raises(InversionError, match="unknown inversion"):
        check_method("newton", 1)
    with pytest.raises(InversionError, match="inversion_iters must be"):
        check_method("fixed-point", -1)
    with pytest.raises(RecipeError, match="applies to fixed-point"):
        inversion_recipe(Recipe(model="gmm", guidance="none"), "a.png", "plain", 2)


@pytest.mark.slow
def test_a_latent_round_trip_reports_latents_and_the_vae_bound(sd, tmp_path):
    model, _ = sd
    path = tmp_path / "pic.png"
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    Image.fromarray((np.stack([xx, yy, 1 - xx], -1) * 255).astype(np.uint8)).save(path)
    r = inversion_recipe(Recipe(model="sd", steps=10, prompt=PROMPT, guidance="none"), str(path), "plain")
    inv = Inversion(r, model=model)
    inv.run_to_end()
    trip = round_trip(inv, regenerate(inv, tmp_path / "x_T.safetensors").run_to_end().final())
    assert trip.latent_rms is not None and trip.latent_rms >= 0 and math.isfinite(trip.vae_psnr)
    assert "latent RMS error" in trip.line()


# -- the command line -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_inverts_writes_the_folder_and_sample_regenerates_it(gmm_image, tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "inv"
    assert main(["invert", str(gmm_image), "--model", "gmm", "--guidance", "none", "--steps", "8",
                 "--inversion", "fixed-point", "--inversion-iters", "2", "--out", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("round trip: ") and "dB PSNR" in line and len(line.splitlines()) == 1
    names = {p.name for p in out.iterdir()}
    assert {"xt", "x0", "x_T.safetensors", "recipe.json", "regenerated.png", "original.png", "round_trip.json",
            "init_image.png"} <= names
    assert len(list((out / "xt").iterdir())) == 9 and len(list((out / "x0").iterdir())) == 8
    saved = Recipe.load(out / "recipe.json")
    assert saved.init_noise == "x_T.safetensors" and saved.x0_mode == "none"
    assert saved.inversion["method"] == "fixed-point" and saved.inversion["image"] == "init_image.png"
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = np.asarray(Image.open(tmp_path / "again" / "final.png"))
    assert np.array_equal(again, np.asarray(Image.open(out / "regenerated.png")))
    # and its own output folder replays too (its copy of x_T keeps the safetensors suffix)
    assert Recipe.load(tmp_path / "again" / "recipe.json").init_noise == "init_noise.safetensors"
    assert main(["sample", "--recipe", str(tmp_path / "again" / "recipe.json"), "--out", str(tmp_path / "third"),
                 "--quiet"]) == 0


@pytest.mark.parametrize("args,pattern", [
    (["--init-noise", "x.npy"], "cannot start from --init-noise"),
    (["--sampler", "euler_a"], "deterministic sampler"),
    (["--sampler", "ddim", "--eta", "1"], "deterministic sampler"),
    (["--strength", "0.5"], "applies to image-to-image runs"),
    (["--inversion-iters", "3"], "applies to fixed-point inversion"),
    (["--inversion", "fixed-point", "--inversion-iters", "-1"], "inversion_iters must be"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(gmm_image, tmp_path, capsys, args, pattern):
    from studio.cli import main

    code = main(["invert", str(gmm_image), "--model", "gmm", "--guidance", "none", "--steps", "4",
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and pattern in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_file_that_is_not_an_image(tmp_path, capsys):
    from studio.cli import main

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = main(["invert", str(bad), "--model", "gmm", "--guidance", "none", "--steps", "4", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not an image" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_regenerates_clipped_only_when_asked(gmm_image, tmp_path, capsys):
    from studio.cli import main

    for flags, mode in (([], "none"), (["--x0", "clip"], "clip")):
        out = tmp_path / mode
        assert main(["invert", str(gmm_image), "--model", "gmm", "--guidance", "none", "--steps", "4", "--out",
                     str(out), "--quiet", *flags]) == 0
        recipe = Recipe.load(out / "recipe.json")
        assert recipe.x0_mode == mode and recipe.inversion["recipe"]["x0_mode"] == "none"  # never while inverting


def test_sample_refuses_a_stochastic_regeneration(gmm_image, tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "inv"
    assert main(["invert", str(gmm_image), "--model", "gmm", "--guidance", "none", "--steps", "4", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["sample", "--recipe", str(out / "recipe.json"), "--sampler", "ddpm", "--out",
                 str(tmp_path / "edit")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "deterministic sampler" in err and len(err.splitlines()) == 1


# -- the shipped digits model ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fixed_point_reaches_50_db_on_the_digits_model():
    """Unconditional, 50 steps, four digits of the training distribution: the round trip's mean PSNR (pixels in
    [−1, 1], peak-to-peak 2) reaches 50 dB with K ≤ 4 fixed-point iterations; plain inversion stays below 35 dB."""
    from studio.data.digits import make_dataset, to_float

    model = load_model("default", "cpu")
    x0 = to_float(make_dataset(4, seed=1)[0])

    def round_trip_psnr(k):
        x_T = last(invert(model, x0, 50, iters=k)).x
        out = last(engine.sample(model, "ddim", 50, batch=4, init_noise=x_T, x0_mode="none")).x
        return float(psnr(out.clamp(-1, 1), x0).mean())

    plain = round_trip_psnr(0)
    best = round_trip_psnr(3)
    best = best if best >= 50 else max(best, round_trip_psnr(4))
    assert plain < 35 and best >= 50, (plain, best)


@pytest.mark.parametrize("content,pattern", [(b"", "empty"), (b"\x10\x00\x00\x00\x00\x00\x00\x00{", "safetensors"),
                                             ("two", "holds 2 tensors")])
def test_a_broken_x_T_file_is_one_line(tmp_path, capsys, content, pattern):
    from safetensors.torch import save_file

    from studio.cli import main

    p = tmp_path / "x_T.safetensors"
    if content == "two":
        save_file({"a": torch.zeros(1, 3, 16, 16), "b": torch.zeros(1, 3, 16, 16)}, str(p))
    else:
        p.write_bytes(content)
    code = main(["sample", "--model", "gmm", "--steps", "2", "--guidance", "none", "--init-noise", str(p),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and pattern in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
