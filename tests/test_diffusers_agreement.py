"""The studio's samplers against diffusers' own scheduler loops on real (tiny) diffusers UNets.

A random-init UNet is a terrible denoiser: its trajectories reach |x| ~ σ_max·|ε| ≈ 100–500, where float32
rounding alone exceeds 1e-4. So the session fixture first trains the UNet briefly to denoise a few fixed
8×8 patterns, on a short linear schedule (β_end = 0.006, see _models.TINY_SCHEDULE); final images are then
O(1) (|x| ≲ 3) and a 1e-4 max-abs agreement is a real test. Schedules and plans of the standard
configurations are checked against diffusers separately (test_schedule.py).

Conventions: the studio's x_T is in variance-preserving scale. diffusers' Euler, Heun, LMS and KDPM2
schedulers work on x_σ = x_t·√(σ²+1), so they start from x_T·√(σ_max² + 1) with σ_max the plan's first σ (their
``init_noise_sigma`` uses σ_max alone for linspace/trailing, a documented approximation); DDIM and
DPM-Solver start from x_T itself.
"""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       KDPM2DiscreteScheduler, LMSDiscreteScheduler)

from _models import TINY_SCHEDULE, final_x, make_unet, save_model_folder, train_tiny_unet
from studio.core import engine
from studio.core.guidance import Guidance
from studio.core.loading import load_model

# slow: every test needs the trained UNet (test_text_pipelines compares with diffusers in the fast lane)
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"), pytest.mark.slow]

BATCH = 4
STD = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
TOL = 1e-4
BASE = TINY_SCHEDULE  # see _models: a schedule on which a briefly trained UNet is a usable denoiser


@pytest.fixture(scope="session")
def trained_unet():
    unet, loss = train_tiny_unet(make_unet(), steps=200)
    assert loss < 0.2, loss  # it learned to denoise (ε-MSE starts at ≈ 1)
    return unet


@pytest.fixture(scope="session")
def model_dirs(trained_unet, tmp_path_factory):
    """Folders (saved with save_pretrained, safetensors) for each scheduler setting, opened by the studio."""
    root = tmp_path_factory.mktemp("agree")
    dirs = {}
    for key, cfg in {
        "eps": dict(clip_sample=False, prediction_type="epsilon"),
        "eps_clip": dict(clip_sample=True, prediction_type="epsilon"),
        "v": dict(clip_sample=False, prediction_type="v_prediction"),
    }.items():
        dirs[key] = save_model_folder(trained_unet, root / key, {**BASE, **cfg})
    for key, cfg in {
        "clip_half": dict(clip_sample=True, clip_sample_range=0.5),
        "threshold": dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
    }.items():
        dirs[key] = save_model_folder(trained_unet, root / key, {**BASE, "prediction_type": "epsilon", **cfg})
    dirs["std"] = save_model_folder(trained_unet, root / "std", {**STD, "clip_sample": False})
    # class-conditional: the trained weights plus a small class embedding (2 classes + a null class)
    cond = make_unet(num_class_embeds=3)
    sd = trained_unet.state_dict()
    g = torch.Generator().manual_seed(1)
    sd["class_embedding.weight"] = 0.3 * torch.randn(cond.class_embedding.weight.shape, generator=g)
    cond.load_state_dict(sd)
    dirs["cond"] = save_model_folder(cond.eval(), root / "cond", {**BASE, "clip_sample": False},
                                     class_names=["first", "second"])
    return dirs


@pytest.fixture(scope="session")
def studio_models(model_dirs):
    """The studio's model for each folder of ``model_dirs`` (``studio_models["eps"]``), opened on first use."""

    class Opened(dict):
        def __missing__(self, key):
            self[key] = load_model(str(model_dirs[key]), device="cpu")
            return self[key]

    return Opened()


def _x_T(seed=0):
    return torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _diffusers_run(unet, sched, x_T, kind, labels=None, cfg_scale=None, null=None, step_kw=None):
    """The plain diffusers denoising loop (what a diffusers pipeline does), optionally with CFG."""
    if kind in SIGMA_SPACE:
        lat = x_T * math.sqrt(float(sched.sigmas[0]) ** 2 + 1)
    else:
        lat = x_T.clone()
    for t in sched.timesteps:
        inp = sched.scale_model_input(lat, t)
        if cfg_scale is None:
            out = unet(inp, t, class_labels=labels).sample
        else:
            both = unet(torch.cat([inp, inp]), t, class_labels=torch.cat([labels, torch.full_like(labels, null)])).sample
            c, u = both.chunk(2)
            out = u + cfg_scale * (c - u)
        kw = {"eta": 0.0, **(step_kw or {})} if kind == "ddim" else {}
        lat = sched.step(out, t, lat, **kw).prev_sample
    return lat


SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler,
              "dpmpp_2m": DPMSolverMultistepScheduler, "lms": LMSDiscreteScheduler, "dpm2": KDPM2DiscreteScheduler}
SIGMA_SPACE = ("euler", "heun", "lms", "dpm2", "dpm2_a")  # diffusers' schedulers on x_σ = x_t √(σ² + 1)


def _scheduler(kind, spacing, karras=False, base=None, **cfg):
    extra = {}
    if kind == "ddim":
        cfg = {"clip_sample": False, **cfg}  # DDIMScheduler clips by default; the folders say otherwise
    if kind == "dpmpp_2m":
        extra = dict(solver_order=2, algorithm_type="dpmsolver++")
    if karras:
        extra["use_karras_sigmas"] = True
    return SCHEDULERS[kind](**(base or BASE), timestep_spacing=spacing, **extra, **cfg)


def _compare(studio_models, trained_unet, key, kind, steps, spacing, karras=False, sched_cfg=None, seed=0,
             eps_from_x0=True, step_kw=None):
    model = studio_models[key]
    x_T = _x_T(seed)
    ours = final_x(model, kind, steps, batch=BATCH, init_noise=x_T, spacing=spacing, karras=karras,
                   eps_from_x0=eps_from_x0)
    sched = _scheduler(kind, spacing, karras, **(sched_cfg or {}))
    sched.set_timesteps(steps)
    ref = _diffusers_run(trained_unet, sched, x_T, kind, step_kw=step_kw)
    assert ref.abs().max() < 6, "the reference run is not O(1); the UNet fixture is not a denoiser"
    err = (ours - ref).abs().max().item()
    assert err <= TOL, f"{kind} {spacing} karras={karras}: max |studio − diffusers| = {err:.2e}"
    return ours, ref


# DDIM in diffusers steps from t to t − T//N rather than to the next planned timestep. For leading and
# trailing spacing with N dividing T these are the same point; for linspace they are not (diffusers'
# own DDIM+linspace is inconsistent with its plan), and the studio steps to the next planned timestep,
# so DDIM is compared on leading and trailing only.
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers(studio_models, trained_unet, spacing, clip):
    """The studio's default (ε̂ re-derived from the clipped x̂₀) is diffusers' use_clipped_model_output=True."""
    ours, _ = _compare(studio_models, trained_unet, "eps_clip" if clip else "eps", "ddim", 20, spacing,
                       sched_cfg=dict(clip_sample=clip, set_alpha_to_one=True),
                       step_kw=dict(use_clipped_model_output=True))
    if clip:  # clipping did something on this model (so the clip setting was really read and applied)
        plain = final_x(studio_models["eps"], "ddim", 20, batch=BATCH, init_noise=_x_T(), spacing=spacing)
        assert (plain - ours).abs().max() > 1e-3


def test_ddim_raw_eps_matches_diffusers_default(studio_models, trained_unet):
    """eps_from_x0=False keeps the guided but unclipped ε̂: diffusers' DDIM default (use_clipped_model_output=False),
    and a different chain from the consistent form on a model whose x̂₀ gets clipped."""
    raw, _ = _compare(studio_models, trained_unet, "eps_clip", "ddim", 20, "leading",
                      sched_cfg=dict(clip_sample=True, set_alpha_to_one=True), eps_from_x0=False)
    consistent = final_x(studio_models["eps_clip"], "ddim", 20, batch=BATCH, init_noise=_x_T(), spacing="leading")
    assert (raw - consistent).abs().max() > 1e-3


@pytest.mark.parametrize("spacing,karras", [("leading", False), ("trailing", False), ("linspace", False),
                                            ("linspace", True)])
def test_euler_matches_diffusers(studio_models, trained_unet, spacing, karras):
    _compare(studio_models, trained_unet, "eps", "euler", 12, spacing, karras)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_heun_matches_diffusers(studio_models, trained_unet, spacing):
    _compare(studio_models, trained_unet, "eps", "heun", 8, spacing)


@pytest.mark.parametrize("spacing,karras", [("leading", False), ("trailing", False), ("linspace", False),
                                            ("linspace", True)])
def test_dpmpp_2m_matches_diffusers(studio_models, trained_unet, spacing, karras):
    _compare(studio_models, trained_unet, "eps", "dpmpp_2m", 15, spacing, karras)


@pytest.mark.parametrize("kind,spacing", [("ddim", "trailing"), ("euler", "linspace"), ("dpmpp_2m", "linspace")])
def test_v_prediction_matches_diffusers(studio_models, trained_unet, kind, spacing):
    assert studio_models["v"].info.prediction_type == "v_prediction"
    ours, _ = _compare(studio_models, trained_unet, "v", kind, 10, spacing, sched_cfg=dict(prediction_type="v_prediction"))
    eps = final_x(studio_models["eps"], kind, 10, batch=BATCH, init_noise=_x_T(), spacing=spacing)
    assert (ours - eps).abs().max() > 1e-2  # the output really was read as v


def test_class_conditional_matches_diffusers(studio_models):
    model = studio_models["cond"]
    info = model.info
    assert info.num_classes == 2 and info.null_label == 2 and info.class_names == ["first", "second"]
    unet = model.unet
    x_T = _x_T(3)
    lab = torch.full((BATCH,), 1)
    results = {}
    for name, guidance, cfg_scale in [("cond", Guidance(), None), ("cfg", Guidance("cfg", 3.0), 3.0)]:
        ours = final_x(model, "ddim", 10, batch=BATCH, init_noise=x_T, label=1, guidance=guidance, spacing="leading")
        sched = _scheduler("ddim", "leading", clip_sample=False)
        sched.set_timesteps(10)
        ref = _diffusers_run(unet, sched, x_T, "ddim", labels=lab, cfg_scale=cfg_scale, null=2)
        assert ref.abs().max() < 6
        err = (ours - ref).abs().max().item()
        assert err <= TOL, (name, err)
        results[name] = ours
    # unconditional = the null label
    unc = final_x(model, "ddim", 10, batch=BATCH, init_noise=x_T, spacing="leading")
    sched = _scheduler("ddim", "leading", clip_sample=False)
    sched.set_timesteps(10)
    ref = _diffusers_run(unet, sched, x_T, "ddim", labels=torch.full((BATCH,), 2))
    assert (unc - ref).abs().max() <= TOL
    # the label and the guidance change the image
    assert (results["cond"] - unc).abs().max() > 1e-3 and (results["cfg"] - results["cond"]).abs().max() > 1e-3


@pytest.mark.parametrize("kind,spacing,karras", [("ddim", "leading", False), ("heun", "linspace", False),
                                                 ("dpmpp_2m", "trailing", True)])
def test_standard_schedule_matches_diffusers_relatively(studio_models, trained_unet, kind, spacing, karras):
    """The usual β_end = 0.02 schedule. The tiny UNet is no denoiser there and runs end at |x| ≈ 30–80, where
    only relative agreement is meaningful: max |studio − diffusers| ≤ 1e-5 · max |diffusers| (float32 rounding;
    measured ≤ 2.2e-6 over three UNet inits)."""
    model = studio_models["std"]
    x_T = _x_T(1)
    ours = final_x(model, kind, 10, batch=BATCH, init_noise=x_T, spacing=spacing, karras=karras)
    sched = _scheduler(kind, spacing, karras, base=STD)
    sched.set_timesteps(10)
    ref = _diffusers_run(trained_unet, sched, x_T, kind)
    scale = ref.abs().max().item()
    assert scale > 5  # really the large-magnitude regime this test is for
    assert (ours - ref).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("key,cfg", [
    ("clip_half", dict(clip_sample=True, clip_sample_range=0.5)),
    ("threshold", dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)),
], ids=["clip_sample_range=0.5", "thresholding(0.9, max 3)"])
def test_x0_processing_settings_from_scheduler_config(studio_models, trained_unet, key, cfg):
    """x̂₀ clipping / dynamic thresholding are applied "as the model's scheduler config says" (docs/maths.md, "Prediction conversions"),
    including their parameters (clip_sample_range, dynamic_thresholding_ratio, sample_max_value), as diffusers'
    DDIMScheduler does with the same config."""
    _compare(studio_models, trained_unet, key, "ddim", 20, "leading", sched_cfg=cfg,
             step_kw=dict(use_clipped_model_output=True))


# -- stochastic samplers, driven by the studio's own step noise ------------------------------------------
@pytest.mark.parametrize("kind", ["ddpm", "ddim_eta1", "euler_a"])
def test_stochastic_samplers_match_diffusers_given_the_same_noise(studio_models, trained_unet, monkeypatch, kind):
    """diffusers' DDPM / DDIM(η=1) / Euler-ancestral loops, fed the step noise the studio draws for step i
    (``NoiseSource(seed).step(i)``), give the studio's result: same posterior mean, variance and noise use."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea_mod
    from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler

    from studio.core.noise import NoiseSource

    steps, seed, x_T = 12, 5, _x_T(2)
    model = studio_models["eps"]
    name = "ddim" if kind == "ddim_eta1" else kind
    opts = {"options": {"eta": 1.0}} if kind == "ddim_eta1" else {}
    spacing = "linspace" if kind == "euler_a" else "leading"
    ours = final_x(model, name, steps, batch=BATCH, seed=seed, init_noise=x_T, spacing=spacing, **opts)

    noise = [NoiseSource(seed).step(i, tuple(x_T.shape)) for i in range(steps)]
    calls = []

    def fake_randn(shape, *a, **k):
        calls.append(len(calls))
        return noise[len(calls) - 1].clone()

    if kind == "ddpm":
        sched = DDPMScheduler(**BASE, clip_sample=False, timestep_spacing="leading", variance_type="fixed_small")
        monkeypatch.setattr(ddpm_mod, "randn_tensor", fake_randn)
    elif kind == "euler_a":
        sched = EulerAncestralDiscreteScheduler(**BASE, timestep_spacing="linspace")
        monkeypatch.setattr(ea_mod, "randn_tensor", fake_randn)
    else:
        sched = _scheduler("ddim", "leading")
    sched.set_timesteps(steps)
    lat = x_T * math.sqrt(float(sched.sigmas[0]) ** 2 + 1) if kind == "euler_a" else x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = trained_unet(sched.scale_model_input(lat, t), t).sample
            kw = {"eta": 1.0, "variance_noise": noise[i]} if kind == "ddim_eta1" else {}
            lat = sched.step(out, t, lat, **kw).prev_sample
    if kind != "ddim_eta1":
        assert len(calls) >= steps - 1  # the patched noise was really used
    assert lat.abs().max() < 6
    err = (ours - lat).abs().max().item()
    assert err <= TOL, f"{kind}: max |studio − diffusers| = {err:.2e}"
    # and the noise mattered: another seed gives another image
    other = final_x(model, name, steps, batch=BATCH, seed=seed + 1, init_noise=x_T, spacing=spacing, **opts)
    assert (other - ours).abs().max() > 1e-2


# -- the samplers added from the web UIs' menu -----------------------------------------------------------
@pytest.mark.parametrize("spacing,karras", [("leading", False), ("trailing", False), ("linspace", False),
                                            ("linspace", True)])
def test_lms_matches_diffusers(studio_models, trained_unet, spacing, karras):
    """Order 4 (diffusers' and k-diffusion's default). diffusers integrates the Lagrange basis numerically
    (scipy quad, epsrel 1e-4), the studio exactly."""
    _compare(studio_models, trained_unet, "eps", "lms", 12, spacing, karras)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpm2_matches_diffusers(studio_models, trained_unet, spacing):
    """KDPM2DiscreteScheduler evaluates the midpoint at the timestep interpolated in log σ, as the studio."""
    _compare(studio_models, trained_unet, "eps", "dpm2", 8, spacing)


def _kdpm2_plan(model, name, steps, sched):
    """The studio's Karras plan with diffusers' KDPM2 timesteps, which it rounds to integers (its Euler does not)."""
    import dataclasses

    from studio.core.samplers import SAMPLERS

    plan = engine.model_plan(model, SAMPLERS[name], steps, "linspace", True)
    ts = sched.timesteps[0::2].numpy().astype("float64")
    assert (ts == plan.timesteps.round()).all()
    return dataclasses.replace(plan, timesteps=ts)


def test_dpm2_karras_matches_diffusers(studio_models, trained_unet):
    model, x_T, steps = studio_models["eps"], _x_T(), 8
    sched = _scheduler("dpm2", "linspace", True)
    sched.set_timesteps(steps)
    ours = final_x(model, "dpm2", steps, batch=BATCH, init_noise=x_T, plan=_kdpm2_plan(model, "dpm2", steps, sched))
    ref = _diffusers_run(trained_unet, sched, x_T, "dpm2")
    assert ref.abs().max() < 6
    err = (ours - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), f"dpm2 karras: max |studio − diffusers| = {err:.2e}"


def _step_noise(seed, shape, steps):
    from studio.core.noise import NoiseSource

    return [NoiseSource(seed).step(i, shape) for i in range(steps)]


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_dpm2_ancestral_matches_diffusers_given_the_same_noise(studio_models, trained_unet, monkeypatch, spacing):
    """KDPM2AncestralDiscreteScheduler (η = 1), its noise replaced by the studio's draw for each step."""
    import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as mod
    from diffusers import KDPM2AncestralDiscreteScheduler

    steps, seed, x_T = 8, 5, _x_T(2)
    ours = final_x(studio_models["eps"], "dpm2_a", steps, batch=BATCH, seed=seed, init_noise=x_T, spacing=spacing)
    noise, drawn = _step_noise(seed, tuple(x_T.shape), steps), []

    def studio_draw(*a, **k):
        drawn.append(noise[len(drawn)])
        return drawn[-1].clone()

    monkeypatch.setattr(mod, "randn_tensor", studio_draw)
    sched = KDPM2AncestralDiscreteScheduler(**BASE, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ref = _diffusers_run(trained_unet, sched, x_T, "dpm2_a")
    assert len(drawn) == steps - 1  # one draw per step, none on the last (to σ = 0), as the studio
    assert ref.abs().max() < 6
    err = (ours - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), f"dpm2_a: max |studio − diffusers| = {err:.2e}"
    other = final_x(studio_models["eps"], "dpm2_a", steps, batch=BATCH, seed=seed + 1, init_noise=x_T, spacing=spacing)
    assert (other - ours).abs().max() > 1e-2


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("spacing,karras", [("linspace", False), ("leading", False), ("trailing", True)])
def test_dpmpp_2m_sde_matches_diffusers_given_the_same_noise(studio_models, trained_unet, solver_type, spacing, karras):
    """DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2) is the η = 1 form; its
    ``variance_noise`` is the studio's draw for each step."""
    steps, seed, x_T = 12, 5, _x_T(2)
    model = studio_models["eps"]
    ours = final_x(model, "dpmpp_2m_sde", steps, batch=BATCH, seed=seed, init_noise=x_T, spacing=spacing,
                   karras=karras, options={"solver_type": solver_type})
    sched = DPMSolverMultistepScheduler(**BASE, timestep_spacing=spacing, use_karras_sigmas=karras, solver_order=2,
                                        algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    sched.set_timesteps(steps)
    noise = _step_noise(seed, tuple(x_T.shape), steps)
    lat = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = trained_unet(sched.scale_model_input(lat, t), t).sample
            lat = sched.step(out, t, lat, variance_noise=noise[i]).prev_sample
    assert lat.abs().max() < 6
    err = (ours - lat).abs().max().item()
    assert err <= TOL * lat.abs().max().item(), f"dpmpp_2m_sde {solver_type}: max |studio − diffusers| = {err:.2e}"


# The samplers diffusers has no scheduler for (or not in k-diffusion's form: its third-order sde-dpmsolver++ step
# differs from k-diffusion's DPM++ 3M SDE), and EDM churn, whose network evaluation at the raised σ̂ diffusers'
# EulerDiscreteScheduler cannot make (its caller evaluates before the step adds the churn noise): k-diffusion's
# functions (tests/_kdiffusion.py) on this network, with the studio's noise. What the midpoints and σ̂ are given
# as the network's timestep is what these check beyond tests/test_new_samplers_oracle.py.
KD_CASES = [
    ("dpmpp_2s_a", {}, "sample_dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", {}, "sample_dpmpp_sde", {}),
    ("dpmpp_3m_sde", {}, "sample_dpmpp_3m_sde", {}),
    ("euler", {"s_churn": 10.0}, "sample_euler", {"s_churn": 10.0}),
    ("heun", {"s_churn": 10.0, "s_tmin": 0.2}, "sample_heun", {"s_churn": 10.0, "s_tmin": 0.2}),
    ("dpm2", {"s_churn": 10.0}, "sample_dpm_2", {"s_churn": 10.0}),
]


@pytest.mark.parametrize("name,options,fn,kwargs", KD_CASES, ids=[c[0] for c in KD_CASES])
def test_kdiffusion_samplers_match_on_a_real_network(studio_models, trained_unet, name, options, fn, kwargs):
    import numpy as np
    from diffusers import DDPMScheduler

    import _kdiffusion as kd
    from studio.core.samplers import SAMPLERS

    steps, seed, x_T, model = 10, 5, _x_T(2), studio_models["eps"]
    plan = engine.model_plan(model, SAMPLERS[name], steps, "linspace")
    ours = final_x(model, name, steps, batch=BATCH, seed=seed, init_noise=x_T, plan=plan, options=options)
    denoiser = kd.DiscreteEpsDDPMDenoiser(trained_unet, DDPMScheduler(**BASE).alphas_cumprod,
                                          {float(s): float(t) for s, t in zip(plan.sigmas, plan.timesteps)})
    sigmas = kd.kdiffusion_sigmas(plan)
    x = x_T * math.sqrt(float(sigmas[0]) ** 2 + 1.0)
    ref = getattr(kd, fn)(denoiser, x, sigmas, kd.StudioNoise(seed, np.asarray(plan.sigmas), tuple(x.shape)),
                          **kwargs)
    assert ref.abs().max() < 6
    err = (ours - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), f"{name}: max |studio − k-diffusion| = {err:.2e}"


@pytest.mark.parametrize("order,variant", [(2, "bh2"), (3, "bh2"), (2, "bh1"), (3, "bh1"), (1, "bh2")])
@pytest.mark.parametrize("spacing,karras", [("linspace", False), ("leading", False), ("trailing", False),
                                            ("linspace", True)])
def test_unipc_matches_diffusers(studio_models, trained_unet, order, variant, spacing, karras):
    """UniPCMultistepScheduler(solver_order, solver_type) with its defaults otherwise (corrector on every step,
    lower_order_final). Its bh1 step to σ = 0 computes 0 · ∞ (B(h) = −h with h = ∞) and returns NaN; that step is
    first order, so its value is the x̂₀ diffusers converts from the last output, taken here as the step's result."""
    from diffusers import UniPCMultistepScheduler

    steps, x_T, model = 10, _x_T(1), studio_models["eps"]
    ours = final_x(model, "unipc", steps, batch=BATCH, init_noise=x_T, spacing=spacing, karras=karras,
                   options={"order": order, "variant": variant})
    sched = UniPCMultistepScheduler(**BASE, timestep_spacing=spacing, use_karras_sigmas=karras, solver_order=order,
                                    solver_type=variant)
    sched.set_timesteps(steps)
    lat = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = trained_unet(sched.scale_model_input(lat, t), t).sample
            if i == steps - 1 and variant == "bh1":
                lat = sched.convert_model_output(out, sample=lat)
                break
            lat = sched.step(out, t, lat).prev_sample
    assert lat.abs().max() < 6
    err = (ours - lat).abs().max().item()
    assert err <= TOL * lat.abs().max().item(), f"unipc {variant} order {order}: max |studio − diffusers| = {err:.2e}"


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("leading", 10), ("trailing", 16)])
def test_deis_matches_diffusers_on_its_plan(studio_models, trained_unet, order, spacing, steps):
    """DEISMultistepScheduler ends at σ(t = 0) > 0, not at σ = 0 as the studio's plans do, so the studio runs on that
    plan here (its own plan to σ = 0 differs in the last step only, checked against the truth on the gmm). 16
    steps: past diffusers' lower_order_final (under 15 steps), the last steps are full order too."""
    import dataclasses

    import numpy as np
    from diffusers import DEISMultistepScheduler

    from studio.core.samplers import SAMPLERS

    x_T, model = _x_T(1), studio_models["eps"]
    sched = DEISMultistepScheduler(**BASE, timestep_spacing=spacing, solver_order=order)
    sched.set_timesteps(steps)
    plan = engine.model_plan(model, SAMPLERS["deis"], steps, spacing)
    assert (plan.timesteps == sched.timesteps.numpy()).all() and plan.sigmas[-1] == 0
    sig = np.concatenate([plan.sigmas[:-1], sched.sigmas[-1:].numpy()]).astype(np.float32)
    assert sig[-1] > 0 and np.allclose(sig, sched.sigmas.numpy())
    plan = dataclasses.replace(plan, sigmas=sig, alpha_bars=1.0 / (1.0 + sig.astype(np.float64) ** 2))
    ours = final_x(model, "deis", steps, batch=BATCH, init_noise=x_T, plan=plan, options={"order": order})
    # diffusers evaluates its closed-form coefficients in the dtype of its σ; in float32 their terms cancel to
    # ~1e-5 at the first third-order step. Given float64 σ it computes the same formulas exactly (the studio
    # computes them in float64 too); the updates themselves stay in float32.
    sched.sigmas = sched.sigmas.double()
    ref = _diffusers_run(trained_unet, sched, x_T, "deis")
    assert ref.abs().max() < 6
    err = (ours - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), f"deis order {order}: max |studio − diffusers| = {err:.2e}"
