"""Schedules, timestep plans and prediction conversions, with diffusers' schedulers as the oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from studio.core import engine
from studio.core.prediction import dynamic_threshold, process_x0, score_from_eps, to_epsilon, to_x0
from studio.core.samplers import get_sampler
from studio.core.schedule import (
    NoiseSchedule,
    ScheduleError,
    discrete_plan,
    dpm_plan,
    integer_timesteps,
    sigma_plan,
)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

BETAS = {  # (beta_start, beta_end) as the common checkpoints use them
    "linear": (0.0001, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "squaredcos_cap_v2": (0.0001, 0.02),
}
SPACINGS = ("leading", "trailing", "linspace")
STEP_COUNTS = (1, 7, 10, 25, 50)


def _sched(beta_schedule="linear", T=1000, steps_offset=0):
    b0, b1 = BETAS[beta_schedule]
    return NoiseSchedule.create(beta_schedule, T, b0, b1, steps_offset=steps_offset)


def _dcfg(beta_schedule="linear", T=1000, steps_offset=0, **kw):
    b0, b1 = BETAS[beta_schedule]
    return dict(num_train_timesteps=T, beta_schedule=beta_schedule, beta_start=b0, beta_end=b1,
                steps_offset=steps_offset, **kw)


# -- training schedules -------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", list(BETAS))
@pytest.mark.parametrize("T", [1000, 200])
def test_alphas_cumprod_equal_diffusers(beta_schedule, T):
    ours = _sched(beta_schedule, T)
    ref = DDPMScheduler(**_dcfg(beta_schedule, T)).alphas_cumprod
    assert ours.alphas_cumprod.dtype == torch.float32
    assert torch.equal(ours.alphas_cumprod, ref)
    # σ_t = √((1−ᾱ)/ᾱ), float32 as diffusers' Euler scheduler computes it
    np.testing.assert_array_equal(ours.sigmas, np.array(((1 - ref) / ref) ** 0.5))


def test_from_config_reads_diffusers_scheduler_config():
    cfg = dict(DDIMScheduler(**_dcfg("scaled_linear", steps_offset=1), set_alpha_to_one=False).config)
    s = NoiseSchedule.from_config(cfg)
    ref = DDIMScheduler.from_config(cfg)
    assert torch.equal(s.alphas_cumprod, ref.alphas_cumprod)
    assert s.steps_offset == 1
    assert s.final_alpha_cumprod == pytest.approx(float(ref.final_alpha_cumprod))
    assert NoiseSchedule.from_config({}).final_alpha_cumprod == 1.0


# -- inference plans ------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("beta_schedule,steps_offset", [("linear", 0), ("scaled_linear", 1)])
def test_integer_timesteps_equal_ddim(spacing, beta_schedule, steps_offset):
    s = _sched(beta_schedule, steps_offset=steps_offset)
    for n in STEP_COUNTS:
        d = DDIMScheduler(**_dcfg(beta_schedule, steps_offset=steps_offset, timestep_spacing=spacing))
        d.set_timesteps(n)
        np.testing.assert_array_equal(integer_timesteps(s, n, spacing), d.timesteps.numpy(), err_msg=f"{n} steps")
        plan = discrete_plan(s, n, spacing)
        assert plan.steps == n
        # ᾱ at each planned timestep, then the final ᾱ (1 with set_alpha_to_one)
        want = np.append(d.alphas_cumprod[d.timesteps].numpy(), 1.0)
        np.testing.assert_allclose(plan.alpha_bars, want, rtol=0, atol=1e-7)
        np.testing.assert_allclose(plan.sigmas, np.sqrt((1 - want) / want), rtol=1e-6, atol=0)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_sigma_plan_equals_euler(spacing, karras, beta_schedule):
    s = _sched(beta_schedule)
    for n in STEP_COUNTS:
        if karras and n == 1:
            continue  # a 1-point Karras ramp is undefined (division by n − 1) in both
        e = EulerDiscreteScheduler(**_dcfg(beta_schedule, timestep_spacing=spacing), use_karras_sigmas=karras)
        e.set_timesteps(n)
        p = sigma_plan(s, n, spacing, karras)
        assert p.steps == n and len(p.sigmas) == n + 1 and p.sigmas[-1] == 0
        np.testing.assert_allclose(p.sigmas, e.sigmas.numpy(), rtol=1e-6, atol=0, err_msg=f"{n} steps")
        # diffusers keeps Euler timesteps in float32 (≈ 3e-5 rounding near t = 999)
        np.testing.assert_allclose(p.timesteps, e.timesteps.numpy().astype(np.float64), rtol=0, atol=1e-4)
        np.testing.assert_allclose(p.alpha_bars, 1 / (1 + p.sigmas.astype(np.float64) ** 2))


@pytest.mark.parametrize(
    "beta_schedule,spacing,karras",
    # the cosine schedule with Karras sigmas has its own test below
    [(b, sp, k) for b in BETAS for sp in SPACINGS for k in (False, True) if not (k and b == "squaredcos_cap_v2")],
)
def test_dpm_plan_equals_dpmsolver(beta_schedule, spacing, karras):
    _check_dpm_plan(beta_schedule, spacing, karras)


def test_dpm_karras_cosine_timesteps_equal_dpmsolver():
    """diffusers keeps the Karras timesteps of the cosine schedule unrounded and then casts them to int64
    (truncation: 998.9999 → 998); the studio keeps 998.9999, so a UNet sees a different timestep embedding
    at every step than diffusers' DPMSolverMultistepScheduler feeds it. Sigmas agree."""
    for spacing in SPACINGS:
        _check_dpm_plan("squaredcos_cap_v2", spacing, True)


def _check_dpm_plan(beta_schedule, spacing, karras):
    s = _sched(beta_schedule)
    for n in STEP_COUNTS:
        if karras and n == 1:
            continue
        d = DPMSolverMultistepScheduler(**_dcfg(beta_schedule, timestep_spacing=spacing), use_karras_sigmas=karras)
        d.set_timesteps(n)
        p = dpm_plan(s, n, spacing, karras)
        assert p.steps == len(d.timesteps)
        np.testing.assert_allclose(p.sigmas, d.sigmas.numpy(), rtol=1e-6, atol=0, err_msg=f"{n} steps")
        # the network is evaluated at diffusers' int64 timesteps (truncated, for the cosine schedule)
        np.testing.assert_array_equal(p.timesteps, d.timesteps.numpy().astype(np.float64), err_msg=f"{n} steps")


def test_karras_sigmas_follow_eq5():
    p = sigma_plan(_sched(), 10, "linspace", karras=True)
    sig = p.sigmas[:-1].astype(np.float64)
    rho = 7.0
    # σ^{1/ρ} is an arithmetic progression from σ_max^{1/ρ} to σ_min^{1/ρ}
    np.testing.assert_allclose(np.diff(sig ** (1 / rho), 2), 0, atol=1e-5)
    all_sig = _sched().sigmas
    assert sig[0] == pytest.approx(all_sig[-1], rel=1e-6) and sig[-1] == pytest.approx(all_sig[0], rel=1e-5)


def test_karras_refused_for_discrete_samplers():
    with pytest.raises(ValueError, match="Karras"):
        engine.make_plan(get_sampler("ddim"), _sched(), 10, karras=True)


# -- prediction types -----------------------------------------------------------
@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_prediction_conversions_closed_form(abar):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    xt = a * x0 + b * eps
    v = a * eps - b * x0  # Salimans & Ho 2022
    outputs = {"epsilon": eps, "v_prediction": v, "sample": x0}
    for ptype, out in outputs.items():
        torch.testing.assert_close(to_epsilon(out, xt, a, b, ptype), eps, rtol=0, atol=1e-10)
        torch.testing.assert_close(to_x0(out, xt, a, b, ptype), x0, rtol=0, atol=1e-10)
    # score = −ε/b: for x_t = a x₀ + b ε with x₀ fixed, ∇ log N(x_t; a x₀, b²) = −(x_t − a x₀)/b² = −ε/b
    torch.testing.assert_close(score_from_eps(eps, b), -(xt - a * x0) / b**2)
    with pytest.raises(ValueError, match="prediction type"):
        to_epsilon(eps, xt, a, b, "flow")
    with pytest.raises(ValueError, match="prediction type"):
        to_x0(eps, xt, a, b, "flow")


# -- x̂₀ processing ------------------------------------------------------------
def test_dynamic_threshold_matches_diffusers_and_properties():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, 8, generator=g) * torch.tensor([0.2, 1.0, 3.0, 8.0]).view(-1, 1, 1, 1)
    for ratio, max_value in [(0.995, 1.0), (0.9, 2.5), (0.995, 100.0)]:
        out = dynamic_threshold(x, ratio, max_value)
        ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                            sample_max_value=max_value)._threshold_sample(x.clone())
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert out.abs().max() <= 1.0 + 1e-6
    # a sample already inside [−1, 1] is left unchanged (s is clamped to ≥ 1)
    inside = dynamic_threshold(x[:1], 0.995, 10.0)
    torch.testing.assert_close(inside, x[:1])
    # per sample: s = quantile(|x|, p), then clamp(x, −s, s)/s; with a large cap, sample 3's quantile pixel maps to ±1
    out = dynamic_threshold(x, 0.995, 100.0)
    s3 = np.quantile(x[3].abs().numpy().ravel(), 0.995)
    torch.testing.assert_close(out[3], (x[3].clamp(-s3, s3) / s3).float(), rtol=1e-5, atol=1e-6)
    # thresholding a batch equals thresholding each sample alone
    torch.testing.assert_close(out[2:3], dynamic_threshold(x[2:3], 0.995, 100.0))
    # max_value = 1 degenerates to clipping
    torch.testing.assert_close(dynamic_threshold(x, 0.995, 1.0), x.clamp(-1, 1))
    torch.testing.assert_close(process_x0(x, "clip", 1.5), x.clamp(-1.5, 1.5))
    assert process_x0(x, "none") is x
    with pytest.raises(ValueError):
        process_x0(x, "squash")


# -- bad inputs -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta_schedule="cosine"),
        dict(num_train_timesteps=1),
        dict(trained_betas=[0.1, 0.0, 0.2]),
        dict(trained_betas=[0.1, 1.0]),
        dict(trained_betas=[0.1, float("nan")]),
        dict(trained_betas=[0.1, float("inf")]),
        dict(trained_betas=[-0.1, 0.2]),
        dict(trained_betas=[0.1]),
    ],
)
def test_bad_schedule_raises(kwargs):
    with pytest.raises(ScheduleError):
        NoiseSchedule.create(**kwargs)


@pytest.mark.parametrize("fn", [integer_timesteps, sigma_plan, dpm_plan, discrete_plan])
def test_bad_plan_raises(fn):
    s = _sched()
    for steps, spacing in [(0, "leading"), (-3, "leading"), (2.5, "leading"), (1001, "leading"), (10, "karras"),
                           (10, "uniform")]:
        with pytest.raises(ScheduleError):
            fn(s, steps, spacing)
    assert fn(s, 1000, "trailing") is not None  # as many steps as training timesteps is fine


@pytest.mark.parametrize("fn", [integer_timesteps, sigma_plan, dpm_plan])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_plans_never_repeat_a_timestep(fn, spacing):
    """A plan either has strictly decreasing timesteps (and σ) or is refused: a repeated point makes
    DPM-Solver's step h = λ_t − λ_s zero (ZeroDivisionError in sample_dpmpp_2m at 1000 steps)."""
    s = _sched()
    for n in (999, 1000):
        try:
            out = fn(s, n, spacing)
        except ScheduleError:
            continue
        ts = np.asarray(out if isinstance(out, np.ndarray) else out.timesteps, dtype=np.float64)
        assert (np.diff(ts) < 0).all(), f"{fn.__name__}({n}, {spacing!r}) repeats timesteps"
