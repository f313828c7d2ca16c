"""Every sampler's accuracy against the exact Gaussian mixture ``gmm`` (docs/maths.md, "The exact Gaussian
mixture").

Truth used here is independent of the samplers: the mixture's own parameters (π_k, μ_k, s_k), and, for
the deterministic samplers, a very fine solve of the same probability-flow ODE from the same noise. The
groups come from the registry; what every sampler must do whatever its accuracy (shapes, NFE, resuming,
seeds, refusing bad options) is tests/test_sampler_contract.py. The statistical runs are marked slow.
"""
from __future__ import annotations

import math

import pytest
import torch

from _models import final_x
from studio.core import engine
from studio.core.samplers import SAMPLERS
from studio.core.schedule import dpm_plan, sigma_plan

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# a sampler for consistency-distilled models (lcm) does not sample a diffusion model's distribution: no truth here
ALL = tuple(n for n, s in SAMPLERS.items() if not s.for_consistency_models)
DETERMINISTIC = tuple(n for n, s in SAMPLERS.items() if s.is_deterministic())  # with their default options
STOCHASTIC = tuple(n for n in ALL if n not in DETERMINISTIC)
slow = pytest.mark.slow

# Steps for the n = 2000 accuracy runs: the fewest at which each sampler's discretisation bias in the
# component weights is well below the tolerance (measured: at half these counts langevin and heun are biased).
ACCURACY_STEPS = {"ddpm": 30, "ddim": 20, "euler": 20, "euler_a": 30, "heun": 15, "dpmpp_2m": 15, "langevin": 20,
                  "lms": 20, "dpm2": 15, "dpm2_a": 15, "dpmpp_2s_a": 15, "dpmpp_sde": 15, "dpmpp_2m_sde": 20,
                  "dpmpp_3m_sde": 20, "unipc": 15, "deis": 15, "restart": 15}
N = 2000
# Binomial std of a weight estimate is √(π(1−π)/n) ≤ √(.4·.6/2000) = 0.011, so ±0.04 is ≥ 3.6 σ for every
# component (a false alarm about once in 3000 per component), while a sampler that loses or invents mass
# (e.g. a wrong ᾱ at one step) moves the weights by far more.
WEIGHT_TOL = 0.04


def _nfe_after(name: str, i: int, steps: int, corrector_steps: int = 1) -> int:
    """Model evaluations after step i (0-based), from each algorithm's definition."""
    if name == "restart":  # Heun's and, by the end of the run, K = 1 restart of 9 Heun steps (in the plan)
        return _nfe_after("heun", i, steps) + (2 * 9 if i == steps - 1 else 0)
    if name in ("heun", "dpm2", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde"):
        # 2 per step (a second evaluation at σ_next or at a midpoint), 1 on the last (Euler) step to σ = 0
        return 2 * (i + 1) - (1 if i == steps - 1 else 0)
    if name == "langevin":  # corrector_steps Langevin evaluations + 1 predictor evaluation
        return (corrector_steps + 1) * (i + 1)
    return i + 1


def test_every_registered_sampler_has_accuracy_settings():
    """A new sampler joins these tests by naming its step count here (and its spread run if stochastic)."""
    assert set(ACCURACY_STEPS) == set(ALL)
    assert set(SPREAD_RUNS) == set(STOCHASTIC)


@pytest.fixture(scope="module")
def accuracy_run(gmm):
    """The final record of one n = 2000 unconditional run per sampler, made on first use."""
    runs = {}

    def get(name):
        if name not in runs:
            *_, runs[name] = engine.sample(gmm, name, ACCURACY_STEPS[name], batch=N, seed=0)
        return runs[name]

    return get


def _classify(gmm, x):
    comp = gmm.nearest_component(x)
    return comp, torch.bincount(comp, minlength=4).double() / len(x)


@pytest.mark.parametrize("name,corrector_steps", [(n, 1) for n in ALL] + [("langevin", 3)])
def test_registry_evaluations_match_each_algorithm(gmm, name, corrector_steps):
    """``SamplerSpec.evals`` (the cost a UI or benchmark shows before a run) and the NFE a run reports both
    equal each algorithm's own count: heun 2N − 1, langevin (corrector steps + 1) · N, the rest N."""
    options = {"corrector_steps": corrector_steps} if name == "langevin" else {}
    *_, last = engine.sample(gmm, name, 5, batch=1, options=options)
    assert SAMPLERS[name].evals(5, options) == last.nfe == _nfe_after(name, 4, 5, corrector_steps)


@slow
@pytest.mark.parametrize("name", ALL)
def test_component_weights(accuracy_run, gmm, name):
    last = accuracy_run(name)
    _, w = _classify(gmm, last.x)
    torch.testing.assert_close(w, gmm.weights.cpu(), rtol=0, atol=WEIGHT_TOL)


@slow
@pytest.mark.parametrize("name", ALL)
def test_component_means(accuracy_run, gmm, name):
    """Per component k, the RMS over pixels of (sample mean − μ_k). With n_k samples of per-pixel std ≤ s_k it is
    ≈ s_k/√n_k for an unbiased sampler; 3 s_k/√n_k allows for chance and a little discretisation bias
    (measured ≤ 0.6 s_k/√n_k at these step counts), while a mean off by 3 % of its size fails."""
    last = accuracy_run(name)
    comp, _ = _classify(gmm, last.x)
    for k in range(4):
        xk = last.x[comp == k].double()
        assert len(xk) > 100
        rms = ((xk.mean(0) - gmm.means[k]) ** 2).mean().sqrt().item()
        bound = 3 * float(gmm.stds[k]) / math.sqrt(len(xk))
        assert rms < bound, f"component {k}: rms mean error {rms:.4f} ≥ {bound:.4f}"


# Stochastic samplers, fine enough that the spread is right. DDPM-type ancestral steps with the posterior
# variance β̃ and x̂₀ = E[x₀|x_t] drop the Var[x₀|x_t] term each step, so narrow components come out slightly
# too narrow even at T = 1000 (measured 0.957 s_k for s_k = 0.1, 0.985 s_k for 0.2); Langevin's corrector makes
# up for it (measured 0.97–1.01 at 500 steps). dpmpp_sde's ancestral sub-steps lose spread the same way; the
# other second-order and multistep SDE samplers keep it at 500 steps. 32 samples × 768 pixels pin the spread
# to ~1 %.
SPREAD_RUNS = {"ddpm": (1000, 0.07), "euler_a": (1000, 0.07), "langevin": (500, 0.05), "dpmpp_sde": (1000, 0.07),
               "dpm2_a": (500, 0.05), "dpmpp_2s_a": (500, 0.05), "dpmpp_2m_sde": (500, 0.05),
               "dpmpp_3m_sde": (500, 0.05), "restart": (500, 0.05)}


@slow
@pytest.mark.parametrize("name", STOCHASTIC)
def test_component_spread_stochastic(gmm, name):
    steps, tol = SPREAD_RUNS[name]
    x = final_x(gmm, name, steps, batch=32, seed=5).double()
    comp = gmm.nearest_component(x)
    ratios = []
    for k in comp.unique().tolist():
        xk = x[comp == k]
        ratios.append(((xk - gmm.means[k]) ** 2).mean().sqrt().item() / float(gmm.stds[k]))
    ratios = torch.tensor(ratios)
    assert ((ratios - 1).abs() < tol).all(), f"spread / s_k = {ratios.tolist()}"


def test_ddpm_variance_choices_bracket_true_spread(gmm):
    """Ho et al. 2020 §3.2: β̃ (fixed_small) and β (fixed_large) are the two extreme reverse variances; at a
    coarse 100 steps the exact spread s_k lies between what the two produce from the same noise."""
    x_small = final_x(gmm, "ddpm", 100, batch=32, seed=6, options={"variance": "fixed_small"}).double()
    x_large = final_x(gmm, "ddpm", 100, batch=32, seed=6, options={"variance": "fixed_large"}).double()
    for x, side in ((x_small, -1), (x_large, 1)):
        comp = gmm.nearest_component(x)
        dev = (x - gmm.means[comp]) / gmm.stds[comp].view(-1, 1, 1, 1)
        ratio = dev.pow(2).mean().sqrt().item()
        assert side * (ratio - 1) > 0.02, (side, ratio)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddpm_and_euler_ancestral_are_the_same_chain_on_the_same_timesteps(gmm, spacing):
    """DDPM with β̃ (Ho et al. 2020 eq. 7) is DDIM with η = 1 (Song et al. 2021 eq. 16), and in
    σ = √((1−ᾱ)/ᾱ) coordinates that step is x̂₀ + σ_down ε̂ + σ_up z — Euler ancestral (Karras et al. 2022;
    k-diffusion's get_ancestral_step). Two separately written samplers, same timesteps, same noise draws:
    the same samples. (With the samplers' own default spacings or Karras σ they differ.)"""
    kw = dict(batch=8, seed=11, spacing=spacing, karras=False)
    a = final_x(gmm, "ddpm", 20, options={"variance": "fixed_small"}, **kw)
    b = final_x(gmm, "euler_a", 20, **kw)
    assert a.abs().max() > 0.5
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    c = final_x(gmm, "ddpm", 20, options={"variance": "fixed_large"}, **kw)
    assert (a - c).abs().max() > 1e-2  # β instead of β̃ is a different chain


# -- convergence of the ODE samplers ---------------------------------------------------
B_CONV = 16


@pytest.fixture(scope="module")
def ode_problem(gmm):
    """Initial noise and a fine reference solve of the probability-flow ODE from σ(t=999) to 0.

    All deterministic samplers are run with ``linspace`` spacing so that they all start at t = 999 from the same
    x_T; the reference is DPM-Solver++(2M) at 800 steps, cross-checked against Heun at 500 steps."""
    x_T = torch.randn(B_CONV, 3, 16, 16, generator=torch.Generator().manual_seed(42))
    ref = final_x(gmm, "dpmpp_2m", 800, batch=B_CONV, init_noise=x_T, spacing="linspace").double()
    check = final_x(gmm, "heun", 500, batch=B_CONV, init_noise=x_T, spacing="linspace").double()
    agree = (ref - check).pow(2).mean().sqrt().item()
    return x_T, ref, agree


def _err(gmm, x_T, ref, name, steps):
    x = final_x(gmm, name, steps, batch=B_CONV, init_noise=x_T, spacing="linspace").double()
    return (x - ref).pow(2).mean().sqrt().item()


@slow
def test_reference_solves_agree(ode_problem):
    _, ref, agree = ode_problem
    assert agree < 2e-3, agree  # two different high-order solvers at ≥ 500 steps agree closely
    assert ref.abs().max() < 3


@slow
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_error_falls_with_steps(gmm, ode_problem, name):
    x_T, ref, agree = ode_problem
    errs = [_err(gmm, x_T, ref, name, n) for n in (10, 20, 50, 100)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 3, errs  # at least first-order: 10× the steps, ≥ 3× smaller error
    assert errs[-1] < 0.05, errs


@slow
def test_dpmpp_2m_beats_ddim_at_20_steps(gmm, ode_problem):
    """DDIM is the first-order member of the DPM-Solver family; on the same 20 points the second-order
    multistep correction must bring the result closer to the reference. On Karras σ (dense near σ = 0, so the
    final first-order jump to σ = 0 is tiny) the gain is large (measured 0.0085 vs 0.027); on the linspace
    plan the last jump from t = 50 dominates both errors and the gain is small (0.0515 vs 0.0566)."""
    x_T, ref, _ = ode_problem
    sched = engine.schedule_for(gmm)
    for karras, factor in ((True, 2.0), (False, 1.05)):
        plan = dpm_plan(sched, 20, "linspace", karras)
        err = {}
        for name in ("dpmpp_2m", "ddim"):
            x = final_x(gmm, name, 20, batch=B_CONV, init_noise=x_T, plan=plan).double()
            err[name] = (x - ref).pow(2).mean().sqrt().item()
        assert err["dpmpp_2m"] * factor < err["ddim"], (karras, err)
    # and each on its own default-spacing plan, as a user would run them (both start at t = 999)
    assert _err(gmm, x_T, ref, "dpmpp_2m", 20) < _err(gmm, x_T, ref, "ddim", 20)


def test_ddim_equals_euler_on_the_same_plan(gmm):
    """Deterministic DDIM is exactly Euler's method on the probability-flow ODE in x/√ᾱ (Karras et al. 2022,
    §3 / Song et al. 2021, eq. 14): on the same σ points the two agree to float32 rounding."""
    x_T = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    plan = sigma_plan(engine.schedule_for(gmm), 12, "linspace")
    a = final_x(gmm, "ddim", 12, batch=4, init_noise=x_T, plan=plan)
    b = final_x(gmm, "euler", 12, batch=4, init_noise=x_T, plan=plan)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert (a - final_x(gmm, "dpmpp_2m", 12, batch=4, init_noise=x_T, plan=plan)).abs().max() > 1e-3
