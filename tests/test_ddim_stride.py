"""DDIM's two rules for where a step lands, against diffusers' own DDIMScheduler on the exact mixture ``gmm``.

``prev_timestep="stride"`` must reproduce diffusers' DDIMScheduler.step exactly: it steps from t to t − T//N
(diffusers issues #12633, #11347, #9261) and, once that is negative, to the final ᾱ (``set_alpha_to_one``).
``prev_timestep="plan"`` (the default) steps to the plan's next timestep; its reference is Song et al. 2021,
eq. 12 written out in float64 on diffusers' own timesteps and ᾱ table. Both are driven by the mixture's exact ε*
(``GaussianMixtureModel.predict``), so the only difference between the runs is the rule. N = 7, 12 and 30 do
not divide T = 1000, where the rules part on trailing and linspace spacing.
"""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from _models import final_x
from studio.core import engine
from studio.core.samplers import SAMPLERS

pytestmark = [pytest.mark.usefixtures("one_thread")]

BATCH, TOL = 3, 1e-4
STEPS = (7, 12, 30)
SPACINGS = ("trailing", "linspace")


def diffusers_scheduler(gmm, spacing, steps, set_alpha_to_one=True):
    sched = DDIMScheduler(**{**gmm.info.scheduler_config, "timestep_spacing": spacing,
                             "set_alpha_to_one": set_alpha_to_one})
    sched.set_timesteps(steps)
    return sched


def exact_eps(gmm, x, alpha_bar):
    return gmm.predict(x, None, None, math.sqrt((1 - alpha_bar) / alpha_bar))


@torch.no_grad()
def diffusers_run(gmm, sched, x_T):
    """diffusers' DDIM loop (η = 0) with the mixture's exact ε* at the timestep it evaluates."""
    x = x_T.clone()
    for t in sched.timesteps:
        eps = exact_eps(gmm, x, float(sched.alphas_cumprod[t]))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def next_planned_run(gmm, sched, x_T):
    """Song et al. 2021, eq. 12 with η = 0, from each planned timestep to the next (the last to the final ᾱ)."""
    ts = [int(t) for t in sched.timesteps]
    abs_ = [float(sched.alphas_cumprod[t]) for t in ts] + [float(sched.final_alpha_cumprod)]
    x = x_T.double()
    for i in range(len(ts)):
        ab, ab_next = abs_[i], abs_[i + 1]
        eps = exact_eps(gmm, x.float(), ab).double()
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps
    return x.float()


def x_T(gmm, seed=5):
    c, h, w = gmm.means.shape[1:]
    return torch.randn(BATCH, c, h, w, generator=torch.Generator().manual_seed(seed))


def studio_run(gmm, steps, spacing, rule, **kw):
    return final_x(gmm, "ddim", steps, batch=BATCH, init_noise=x_T(gmm), spacing=spacing,
                   options={"prev_timestep": rule}, **kw)


def close(a, b):
    scale = b.abs().max().item()
    assert 0.3 < scale < 5, scale  # a finished O(1) sample
    return (a - b).abs().max().item() <= TOL * scale


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_stride_is_diffusers_ddim_and_plan_steps_to_the_next_planned_timestep(gmm, steps, spacing):
    sched = diffusers_scheduler(gmm, spacing, steps)
    assert engine.make_plan(SAMPLERS["ddim"], engine.schedule_for(gmm), steps, spacing).timesteps.tolist() == \
        sched.timesteps.tolist()  # the same timesteps: the rules differ only in where a step lands
    stride, plan = studio_run(gmm, steps, spacing, "stride"), studio_run(gmm, steps, spacing, "plan")
    reference, planned = diffusers_run(gmm, sched, x_T(gmm)), next_planned_run(gmm, sched, x_T(gmm))
    assert close(stride, reference), f"stride vs diffusers: {(stride - reference).abs().max():.2e}"
    assert close(plan, planned), f"plan vs eq. 12 on the plan: {(plan - planned).abs().max():.2e}"
    assert not close(plan, reference)  # N does not divide T: diffusers' rule really is another chain


@pytest.mark.parametrize("steps", STEPS)
def test_the_rules_agree_on_leading_spacing(gmm, steps):
    """Leading timesteps are k·(T//N) + offset, so t − T//N is the next planned one and the last goes below 0."""
    stride, plan = studio_run(gmm, steps, "leading", "stride"), studio_run(gmm, steps, "leading", "plan")
    assert torch.equal(stride, plan)
    assert close(plan, diffusers_run(gmm, diffusers_scheduler(gmm, "leading", steps), x_T(gmm)))


def test_stride_lands_on_t0_on_its_last_trailing_step_and_records_it(gmm):
    """Trailing's last timestep is round(T/N) − 1; when T/N rounds up (N = 7: 142 = T//N) diffusers' last step
    lands on ᾱ_0, not on the final ᾱ (set_alpha_to_one=False makes ᾱ_0 the final ᾱ: the same chain again)."""
    sched = diffusers_scheduler(gmm, "trailing", 7)
    last = int(sched.timesteps[-1])
    assert last - 1000 // 7 == 0
    recs = list(engine.sample(gmm, "ddim", 7, batch=1, spacing="trailing", options={"prev_timestep": "stride"}))
    assert recs[-1].alpha_bar_next == pytest.approx(float(sched.alphas_cumprod[0]))
    assert recs[-1].sigma_next > 0  # the "sample" still holds ᾱ_0's noise level, as diffusers' output does
    planned = list(engine.sample(gmm, "ddim", 7, batch=1, spacing="trailing"))
    assert planned[-1].alpha_bar_next == 1.0 and planned[-1].sigma_next == 0.0
    for i, rec in enumerate(recs[:-1]):  # every other step lands at t − T//N
        assert rec.alpha_bar_next == pytest.approx(float(sched.alphas_cumprod[int(sched.timesteps[i]) - 142]))
    overrides = {"set_alpha_to_one": False}
    unity = diffusers_scheduler(gmm, "trailing", 7, set_alpha_to_one=False)
    assert close(studio_run(gmm, 7, "trailing", "stride", schedule_overrides=overrides),
                 diffusers_run(gmm, unity, x_T(gmm)))


def test_prev_timestep_is_declared_once_and_refused_where_unknown(gmm):
    from studio.core.options import OptionError
    from studio.session.recipe import Recipe

    opt = SAMPLERS["ddim"].options["prev_timestep"]
    assert (opt.default, opt.choices) == ("plan", ("plan", "stride"))
    assert opt.cli_flag == "--prev-timestep"
    assert "prev_timestep" in Recipe.schema()
    with pytest.raises(OptionError, match="prev_timestep"):
        SAMPLERS["ddim"].resolve({"prev_timestep": "next"})
    for name, spec in SAMPLERS.items():  # only DDIM has the choice: every other sampler steps along its plan
        assert ("prev_timestep" in spec.options) == (name == "ddim")


def step_noise(seed, shape, steps):
    from studio.core.noise import NoiseSource

    return [NoiseSource(seed).step(i, shape) for i in range(steps)]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_stride_with_eta_1_is_diffusers_ddim_given_the_same_noise(gmm, spacing):
    """η = 1: the variance σ² of eq. 16 is taken between t and diffusers' t − T//N too."""
    steps, seed = 12, 4
    ours = final_x(gmm, "ddim", steps, batch=BATCH, seed=seed, init_noise=x_T(gmm), spacing=spacing,
                   options={"prev_timestep": "stride", "eta": 1.0})
    sched, noise = diffusers_scheduler(gmm, spacing, steps), step_noise(seed, tuple(x_T(gmm).shape), steps)
    x = x_T(gmm)
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            eps = exact_eps(gmm, x, float(sched.alphas_cumprod[t]))
            x = sched.step(eps, t, x, eta=1.0, variance_noise=noise[i]).prev_sample
    assert close(ours, x), f"{(ours - x).abs().max():.2e}"


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_ddpm_steps_along_its_plan_as_diffusers_does(gmm, monkeypatch, steps, spacing):
    """The audit's other half: diffusers' DDPMScheduler steps to the plan's next timestep (``previous_timestep``),
    so the studio's ddpm, which has only that rule, is diffusers' on every spacing (same step noise)."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    from diffusers import DDPMScheduler

    seed = 6
    ours = final_x(gmm, "ddpm", steps, batch=BATCH, seed=seed, init_noise=x_T(gmm), spacing=spacing)
    noise = iter(step_noise(seed, tuple(x_T(gmm).shape), steps))
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda shape, *a, **k: next(noise).clone())
    sched = DDPMScheduler(**{**gmm.info.scheduler_config, "timestep_spacing": spacing,
                             "variance_type": "fixed_small"})
    sched.set_timesteps(steps)
    x = x_T(gmm)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(exact_eps(gmm, x, float(sched.alphas_cumprod[t])), t, x).prev_sample
    assert close(ours, x), f"{(ours - x).abs().max():.2e}"
