"""The σ-space and SDE samplers against k-diffusion's own functions (tests/_kdiffusion.py, transcribed from
k-diffusion, the implementation the web UIs run) on the exact mixture ``gmm``, on the same plan and with the
same noise.

The reference is driven by the exact denoiser x̂₀(x_σ, σ) = E[x₀ | x_t] computed by the mixture in float64
(``GaussianMixtureModel.x0``), independent of the studio's Denoiser and its ε → x̂₀ conversion; its noise
sampler answers each request with the draw the studio makes for that step (``StudioNoise``), or, for the SDE
samplers with ``noise_type="brownian"``, is k-diffusion's own ``BrownianTreeNoiseSampler`` built as its samplers
build it, with one tree per sample seeded with the entropy the studio gives sample j's tree. Agreement is
required to 1e-4 of max |x|. The network-timestep side (what t a midpoint or churned σ̂ is given) is checked
on a real UNet against diffusers and the same references in tests/test_diffusers_agreement.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import _kdiffusion as kd
from _models import final_x
from studio.core import engine
from studio.core.noise import NoiseSource
from studio.core.samplers import SAMPLERS

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Should have t:UserWarning")]  # torchsde clamping k-diffusion's ends

BATCH, SEED, STEPS = 4, 7, 12
CHURN = {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}  # a window, as EDM's ImageNet settings

# (studio sampler, its options, k-diffusion function, its arguments)
CASES = [
    ("lms", {}, kd.sample_lms, {}),
    ("lms", {"order": 2}, kd.sample_lms, {"order": 2}),
    ("dpm2", {}, kd.sample_dpm_2, {}),
    ("dpm2", CHURN, kd.sample_dpm_2, CHURN),
    ("dpm2_a", {}, kd.sample_dpm_2_ancestral, {}),
    ("dpm2_a", {"eta": 0.5}, kd.sample_dpm_2_ancestral, {"eta": 0.5}),
    ("dpmpp_2s_a", {}, kd.sample_dpmpp_2s_ancestral, {}),
    ("dpmpp_2s_a", {"eta": 0.5}, kd.sample_dpmpp_2s_ancestral, {"eta": 0.5}),
    ("dpmpp_sde", {}, kd.sample_dpmpp_sde, {}),
    ("dpmpp_sde", {"eta": 0.5}, kd.sample_dpmpp_sde, {"eta": 0.5}),
    ("dpmpp_sde", {"eta": 0.0}, kd.sample_dpmpp_sde, {"eta": 0.0}),
    ("dpmpp_2m_sde", {}, kd.sample_dpmpp_2m_sde, {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, kd.sample_dpmpp_2m_sde, {"solver_type": "heun"}),
    ("dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun"}, kd.sample_dpmpp_2m_sde, {"eta": 0.5, "solver_type": "heun"}),
    ("dpmpp_3m_sde", {}, kd.sample_dpmpp_3m_sde, {}),
    ("dpmpp_3m_sde", {"eta": 0.5}, kd.sample_dpmpp_3m_sde, {"eta": 0.5}),
    ("dpmpp_sde", {"noise_type": "brownian"}, kd.sample_dpmpp_sde, {}),
    ("dpmpp_sde", {"noise_type": "brownian", "eta": 0.5}, kd.sample_dpmpp_sde, {"eta": 0.5}),
    ("dpmpp_2m_sde", {"noise_type": "brownian"}, kd.sample_dpmpp_2m_sde, {}),
    ("dpmpp_2m_sde", {"noise_type": "brownian", "solver_type": "heun"}, kd.sample_dpmpp_2m_sde,
     {"solver_type": "heun"}),
    ("dpmpp_3m_sde", {"noise_type": "brownian"}, kd.sample_dpmpp_3m_sde, {}),
    ("euler", CHURN, kd.sample_euler, CHURN),
    ("heun", CHURN, kd.sample_heun, CHURN),
    ("euler", {"s_churn": 5.0}, kd.sample_euler, {"s_churn": 5.0}),  # s_tmax 0: no upper limit (k-diffusion's ∞)
    ("heun", {"s_churn": 5.0}, kd.sample_heun, {"s_churn": 5.0}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts, *_ in CASES]


def exact_denoiser(gmm):
    """k-diffusion's model(x_σ, σ) → x̂₀ for the mixture: E[x₀ | x_t] at x_t = x_σ/√(1+σ²), in float64."""
    def model(x, sigma):
        s = float(sigma[0])
        return gmm.x0(x / math.sqrt(s * s + 1.0), s)
    return model


def kdiffusion_run(gmm, fn, kwargs, plan, x_T, seed, brownian=False):
    sigmas = kd.kdiffusion_sigmas(plan)
    x = x_T * math.sqrt(float(sigmas[0]) ** 2 + 1.0)
    if fn is kd.sample_lms:
        return fn(exact_denoiser(gmm), x, sigmas, **kwargs)
    if brownian:  # as k-diffusion's SDE samplers make their default noise sampler, with A1111's seed per sample
        entropy = [NoiseSource(seed).brownian_entropy(j) for j in range(x.shape[0])]
        noise = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=entropy)
    else:
        noise = kd.StudioNoise(seed, plan.sigmas, tuple(x.shape))
    return fn(exact_denoiser(gmm), x, sigmas, noise, **kwargs)


@pytest.mark.parametrize("karras", [False, True], ids=["plain", "karras"])
@pytest.mark.parametrize("name,options,fn,kwargs", CASES, ids=IDS)
def test_equals_kdiffusion_on_the_same_plan_and_noise(gmm, name, options, fn, kwargs, karras):
    spec = SAMPLERS[name]
    plan = engine.make_plan(spec, engine.schedule_for(gmm), STEPS, karras=karras)
    x_T = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = final_x(gmm, name, STEPS, batch=BATCH, seed=SEED, init_noise=x_T, plan=plan, options=options)
    brownian = options.get("noise_type") == "brownian"
    ref = kdiffusion_run(gmm, fn, kwargs, plan, x_T, SEED, brownian)
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert 0.5 < scale < 5, scale  # a finished O(1) sample, not a blown-up chain
    assert err <= 1e-4 * scale, f"{name} {options}: max |studio − k-diffusion| = {err:.2e} (max |x| {scale:.2f})"
    if not spec.is_deterministic(options):  # the injected noise mattered: another seed, another sample
        other = kdiffusion_run(gmm, fn, kwargs, plan, x_T, SEED + 1, brownian)
        assert (other - ref).abs().max() > 1e-2


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_coefficients_integrate_polynomials_exactly(order):
    """Σ_j c_j f(σ_{i−j}) = ∫_{σ_i}^{σ_{i+1}} f dσ for every polynomial f of degree < order: the defining property
    of the Lagrange-basis integrals, here on uneven σ like a Karras plan's."""
    from studio.core.samplers.lms import lms_coefficients

    sigmas = [14.6, 9.1, 5.2, 2.9, 1.4, 0.0]
    for i in range(order - 1, len(sigmas) - 1):
        c = lms_coefficients(sigmas, i, order)
        for m in range(order):
            exact = (sigmas[i + 1] ** (m + 1) - sigmas[i] ** (m + 1)) / (m + 1)
            got = sum(cj * sigmas[i - j] ** m for j, cj in enumerate(c))
            assert got == pytest.approx(exact, rel=1e-12, abs=1e-12), (i, m)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm2"])
def test_churn_off_is_the_deterministic_solver(gmm, name):
    """The churn options change nothing while γ = 0: at s_churn = 0 whatever the window and S_noise, and with
    s_churn > 0 outside its window (s_tmin above every σ of the plan); inside it, the noise is drawn."""
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))

    def run(**options):
        return final_x(gmm, name, 8, batch=2, seed=1, init_noise=x_T, options=options)

    plain = run()
    assert torch.equal(run(s_tmin=0.5, s_tmax=3.0, s_noise=0.5), plain)
    assert torch.equal(run(s_churn=30.0, s_tmin=9000.0), plain)
    assert (run(s_churn=30.0) - plain).abs().max() > 1e-2
