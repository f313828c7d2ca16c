"""LCM and Restart against independent implementations, on the exact mixture ``gmm`` and with the same noise.

- ``lcm`` against diffusers' ``LCMScheduler`` (its timesteps, boundary conditions and re-noising), the network's
  ε being the mixture's exact ε* in float64 and the scheduler's step noise the draw the studio makes for that step;
- ``restart`` against AUTOMATIC1111's ``restart_sampler`` (tests/_kdiffusion.py, written by the Restart paper's
  authors) driven by the exact denoiser x̂₀(x_σ, σ), its forward-noise jumps answered with the studio's draws.

Agreement is required to 1e-4 of max |x|. What every sampler must do (NFE, resuming, seeds, options) is
tests/test_sampler_contract.py; these two join it through the registry.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import _kdiffusion as kd
from _models import final_x
from studio.core import engine
from studio.core.noise import NoiseSource
from studio.core.samplers import SAMPLERS
from studio.core.samplers.lcm import lcm_plan
from studio.core.samplers.restart import restart_index
from studio.core.schedule import ScheduleError

pytestmark = [pytest.mark.usefixtures("one_thread")]

BATCH, SEED, TOL = 4, 7, 1e-4


def x_T(batch: int = BATCH, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert 0.3 < scale < 5, scale  # a finished O(1) result, not a blown-up chain
    assert err <= TOL * scale, f"{what}: max |studio − reference| = {err:.2e} (max |x| {scale:.2f})"


# -- LCM ------------------------------------------------------------------------------------------------
def lcm_scheduler(gmm, **kw):
    from diffusers import LCMScheduler

    cfg = {k: v for k, v in gmm.info.scheduler_config.items() if k in ("beta_schedule", "beta_start", "beta_end",
                                                                      "num_train_timesteps", "prediction_type")}
    return LCMScheduler(**cfg, clip_sample=False, **kw)


@pytest.mark.parametrize("original", [50, 25, 1000])
@pytest.mark.parametrize("steps", [1, 2, 4, 7, 25])
def test_lcm_plan_is_lcmschedulers(gmm, steps, original):
    """The plan's timesteps are LCMScheduler.set_timesteps(steps, original_inference_steps) exactly, its ᾱ those
    of the model's schedule, and the chain ends at ᾱ = 1 (the last step returns the consistency function)."""
    sched = lcm_scheduler(gmm)
    sched.set_timesteps(steps, original_inference_steps=original)
    plan = lcm_plan(engine.schedule_for(gmm), steps, {"original_inference_steps": original})
    assert plan.timesteps.tolist() == sched.timesteps.tolist()
    ac = sched.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(plan.alpha_bars[:-1], ac[sched.timesteps.numpy()], rtol=1e-6)
    assert plan.alpha_bars[-1] == 1.0 and plan.sigmas[-1] == 0.0


def test_lcm_plan_refuses_what_lcmscheduler_refuses(gmm):
    """More steps than the distillation schedule has, or a schedule longer than the training timesteps: one line."""
    spec = SAMPLERS["lcm"]
    with pytest.raises(ScheduleError, match=r"LCM takes at most original_inference_steps = 50 steps; use fewer") as e:
        engine.sample(gmm, "lcm", 51)
    assert "\n" not in str(e.value)
    with pytest.raises(ScheduleError, match=r"original_inference_steps \(1001\) cannot exceed the model's 1000"):
        engine.sample(gmm, "lcm", 4, options={"original_inference_steps": 1001})
    with pytest.raises(ValueError, match="Karras sigmas apply to the samplers on σ plans"):
        engine.make_plan(spec, engine.schedule_for(gmm), 4, karras=True)
    assert not spec.takes_karras and spec.for_consistency_models


def test_lcm_plan_follows_the_option_through_the_engine(gmm):
    """original_inference_steps reaches the plan the engine makes: 25 origin steps skip by 40 (t = 999, 599, …)."""
    *_, last = engine.sample(gmm, "lcm", 4, options={"original_inference_steps": 25})
    recs = list(engine.sample(gmm, "lcm", 4, options={"original_inference_steps": 25}))
    assert [r.t for r in recs] == [999.0, 759.0, 519.0, 279.0] and torch.equal(recs[-1].x, last.x)


@pytest.mark.parametrize("steps,original", [(4, 50), (8, 50), (1, 50), (6, 20)])
def test_lcm_equals_lcmscheduler_given_the_same_noise(gmm, monkeypatch, steps, original):
    """diffusers' LCMScheduler.step loop, fed the mixture's exact ε* and, as its step noise, the draw the studio
    makes for step i (``NoiseSource(seed).step(i)``), gives the studio's samples and x̂₀ (the boundary-conditioned
    ``denoised``) at every step."""
    import diffusers.schedulers.scheduling_lcm as lcm_mod

    init = x_T()
    opts = {"original_inference_steps": original}
    recs = list(engine.sample(gmm, "lcm", steps, batch=BATCH, seed=SEED, init_noise=init, options=opts))
    source = NoiseSource(SEED)
    sched = lcm_scheduler(gmm)
    sched.set_timesteps(steps, original_inference_steps=original)
    drawn = []

    def studio_noise(shape, *a, **k):
        drawn.append(sched.step_index)
        return source.step(sched.step_index, tuple(shape))

    monkeypatch.setattr(lcm_mod, "randn_tensor", studio_noise)
    lat = init.clone()
    for i, t in enumerate(sched.timesteps):
        ab = float(sched.alphas_cumprod[t])
        eps = gmm.predict(lat, t, None, math.sqrt((1 - ab) / ab))
        out = sched.step(eps, t, lat)
        lat = out.prev_sample
        close(recs[i].x0, out.denoised, f"x̂₀ of step {i}")
        if i < steps - 1:
            assert (recs[i].x - lat).abs().max().item() <= TOL * lat.abs().max().item() * 4, i  # a noised state
    assert drawn == list(range(steps - 1))  # the injected noise was used, on every step but the last
    close(recs[-1].x, lat, f"lcm {steps} steps")
    if steps > 1:  # the noise matters: another seed, another sample
        other = final_x(gmm, "lcm", steps, batch=BATCH, seed=SEED + 1, init_noise=init, options=opts)
        assert (other - recs[-1].x).abs().max() > 1e-2


def test_lcm_boundary_condition_holds_at_t_zero(gmm):
    """f(x, 0) = x (Song et al. 2023, eq. 8): with original_inference_steps = T the origin schedule reaches t = 0,
    where c_skip = 1 and c_out = 0, so the last step returns its input unchanged."""
    from studio.core.samplers.lcm import boundary_scalings

    assert boundary_scalings(0.0) == (1.0, 0.0)
    c_skip, c_out = boundary_scalings(999.0)
    assert c_skip < 1e-8 and c_out == pytest.approx(1.0, abs=1e-8)
    recs = list(engine.sample(gmm, "lcm", 1000, batch=1, seed=1, options={"original_inference_steps": 1000}))
    assert recs[-1].t == 0.0 and torch.equal(recs[-1].x, recs[-2].x)


# -- Restart --------------------------------------------------------------------------------------------
def exact_denoiser(gmm):
    """k-diffusion's model(x_σ, σ) → x̂₀ for the mixture: E[x₀ | x_t] at x_t = x_σ/√(1+σ²), in float64."""
    def model(x, sigma):
        s = float(sigma[0])
        return gmm.x0(x / math.sqrt(s * s + 1.0), s)
    return model


class RestartNoise:
    """A1111's forward-noise jump from σ_r back up to t_max, answered with the studio's draw for it: the draws of
    step r − 1 (the step that reaches plan point r), in order. A1111 also "jumps" from the last restart's end,
    σ_r recomputed in float32, to the plan's σ_r when rounding left the former an ulp below: that is no restart
    (noise of std ~1e-5), so it is answered with zeros."""

    def __init__(self, seed: int, plan_sigmas: np.ndarray, shape: tuple):
        self.source, self.shape = NoiseSource(seed), shape
        self.sigmas = np.asarray(plan_sigmas, dtype=np.float64)
        self.calls: dict[int, int] = {}

    def __call__(self, sigma_from, sigma_to):
        if float(sigma_to) < float(sigma_from) * (1 + 1e-5):
            return torch.zeros(self.shape)
        r = int(np.argmin(np.abs(self.sigmas - float(sigma_from))))
        draw = self.calls.get(r, 0)
        self.calls[r] = draw + 1
        return self.source.step(r - 1, self.shape, draw)


def a1111_restart(gmm, plan, init, options, seed=SEED):
    """A1111's restart_sampler on the plan's σ with the restart_list these options are (its format
    {t_min: [restart_steps + 1, K, t_max]})."""
    sigmas = kd.kdiffusion_sigmas(plan)
    x = init * math.sqrt(float(sigmas[0]) ** 2 + 1.0)
    o = SAMPLERS["restart"].resolve(options)
    restart_list = {o["restart_sigma_min"]: [o["restart_steps"] + 1, o["restart_times"], o["restart_sigma_max"]]}
    noise = RestartNoise(seed, plan.sigmas, tuple(x.shape))
    out = kd.restart_sampler(exact_denoiser(gmm), x, sigmas, noise, s_noise=o["s_noise"], restart_list=restart_list)
    return out, sum(noise.calls.values())


def plan_sigma_near(plan, value: float) -> float:
    """The plan's σ nearest ``value``: a t_max A1111 (which moves t_max to the nearest σ of the plan) takes as is."""
    sig = np.asarray(plan.sigmas, dtype=np.float64)
    return float(sig[int(np.argmin(np.abs(sig - value)))])


RESTART_CASES = [({}, 12, False), ({}, 12, True), ({"restart_times": 2, "restart_steps": 3}, 12, True),
                 ({"restart_steps": 4, "s_noise": 0.5}, 10, False), ({"restart_sigma_min": 0.5}, 20, True),
                 ({"restart_times": 3, "restart_steps": 2}, 20, False)]


@pytest.mark.parametrize("options,steps,karras", RESTART_CASES,
                         ids=[f"{s}-{'karras' if k else 'plain'}" + "".join(f"-{a}={b}" for a, b in o.items())
                              for o, s, k in RESTART_CASES])
def test_restart_equals_a1111_given_the_same_noise(gmm, options, steps, karras):
    """On the same plan and noise the studio's restart is A1111's: Heun steps, the jump back up to t_max after
    the plan's σ nearest t_min, K re-solves on Karras σ. (A1111 moves t_max to the plan's nearest σ, the authors'
    code does not; the studio follows the authors, so t_max is chosen here on the plan, where the two agree.)"""
    plan = engine.make_plan(SAMPLERS["restart"], engine.schedule_for(gmm), steps, karras=karras)
    options = {**options, "restart_sigma_max": plan_sigma_near(plan, 2.0)}
    init = x_T()
    recs = list(engine.sample(gmm, "restart", steps, batch=BATCH, seed=SEED, init_noise=init, plan=plan,
                              options=options))
    ref, jumps = a1111_restart(gmm, plan, init, options)
    o = SAMPLERS["restart"].resolve(options)
    assert jumps == o["restart_times"]  # the restart really happened, K times
    close(recs[-1].x, ref, f"restart {options}")
    nfe = 2 * steps - 1 + 2 * jumps * o["restart_steps"]  # Heun's, and each restart's Heun steps
    assert recs[-1].nfe == SAMPLERS["restart"].evals(steps, options, plan) == nfe
    other, _ = a1111_restart(gmm, plan, init, options, seed=SEED + 1)
    assert (other - ref).abs().max() > 1e-2  # the injected noise mattered


def test_restart_jumps_to_t_max_itself(gmm):
    """t_max is the authors' exact σ, not the plan's nearest: moving it between two plan points (both nearest the
    same σ of the plan, so A1111 would run the same restart) changes the samples."""
    plan = engine.make_plan(SAMPLERS["restart"], engine.schedule_for(gmm), 12)
    kw = dict(batch=2, seed=1, init_noise=x_T(2), plan=plan)
    a = final_x(gmm, "restart", 12, options={"restart_sigma_max": 1.9}, **kw)
    b = final_x(gmm, "restart", 12, options={"restart_sigma_max": 2.1}, **kw)
    assert plan_sigma_near(plan, 1.9) == plan_sigma_near(plan, 2.1) and (a - b).abs().max() > 1e-3


def test_restart_without_restarts_is_heun(gmm):
    """K = 0, or an interval whose t_max is not above the restart point, is Heun's method exactly."""
    kw = dict(batch=2, seed=1, init_noise=x_T(2))
    heun = final_x(gmm, "heun", 10, **kw)
    assert torch.equal(final_x(gmm, "restart", 10, options={"restart_times": 0}, **kw), heun)
    assert torch.equal(final_x(gmm, "restart", 10, options={"restart_sigma_min": 1.5, "restart_sigma_max": 0.2}, **kw),
                       heun)
    assert not torch.equal(final_x(gmm, "restart", 10, **kw), heun)


def test_restart_index_is_the_positive_plan_sigma_nearest_t_min(gmm):
    plan = engine.make_plan(SAMPLERS["restart"], engine.schedule_for(gmm), 6)  # σ 157, 25.6, 6.15, 2.04, .723, .01, 0
    assert restart_index(plan, 0.1, 2.0) == 5  # 0.01, not the final 0
    assert restart_index(plan, 0.6, 2.0) == 4
    assert restart_index(plan, 1.9, 2.0) is None  # σ_r = 2.04 is not below t_max
    assert restart_index(plan, 0.6, 0.5) is None
    spec = SAMPLERS["restart"]
    opts = spec.resolve({})
    per_step = [spec.step_evals(i, 6, opts, plan) for i in range(6)]
    assert per_step == [2, 2, 2, 2, 2 + 18, 1]  # the restarts are the work of the step that reaches 0.01
    assert spec.evals(6) == sum(per_step)  # without a plan: the same total, the interval assumed inside it


# -- the Brownian tree --------------------------------------------------------------------------------------
def test_brownian_increments_are_one_path_per_sample():
    """Increments over [c, b] and [b, a] add up to the increment over [c, a] (√ scaling undone), for each sample:
    the draws are one Brownian path W_j(σ), not independent noise; sample j's path is the same in any batch and
    another seed's path is another."""
    src, shape, lo, hi = NoiseSource(5), (3, 2, 4, 4), 0.03, 14.6

    def w(a, b, source=src, shp=shape):  # W(b) − W(a)
        return source.brownian(a, b, shp, lo, hi) * math.sqrt(abs(b - a))

    total, parts = w(9.0, 0.5), w(9.0, 2.0) + w(2.0, 0.5)
    torch.testing.assert_close(total, parts, rtol=0, atol=1e-5)
    torch.testing.assert_close(w(2.0, 9.0), -w(9.0, 2.0), rtol=0, atol=0)
    assert torch.equal(w(9.0, 2.0, NoiseSource(5), (1, 2, 4, 4)), w(9.0, 2.0)[:1])
    assert (w(9.0, 2.0, NoiseSource(6)) - w(9.0, 2.0)).abs().max() > 0.1
    z = torch.cat([src.brownian(s, s * 0.8, (64, 2, 4, 4), lo, hi).flatten() for s in (10.0, 1.0, 0.1)])
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05  # N(0, 1) increments


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_brownian_noise_makes_step_counts_agree(gmm, name):
    """The point of the Brownian tree (why the web UIs use it): one noise path whatever the steps, so the same seed
    at 10 and at 20 steps gives nearly the same samples, far nearer than independent per-step draws give (the
    median over samples: a sample that lands in another component at one step count is no counter-example)."""
    init = x_T(4, seed=9)

    def gap(noise_type):
        a, b = (final_x(gmm, name, n, batch=4, seed=2, init_noise=init, options={"noise_type": noise_type})
                for n in (10, 20))
        return (a - b).pow(2).flatten(1).mean(1).sqrt().median().item()

    assert gap("brownian") < 0.25 * gap("per-step")
