"""Defaults come from the model's scheduler config, and every one can be overridden."""
import numpy as np

from studio.core import engine
from studio.core.gmm import GaussianMixtureModel
from studio.core.samplers import get_sampler
from studio.session.recipe import Recipe
from studio.session.runner import Run


def gmm_with(**config):
    m = GaussianMixtureModel()
    m.info.scheduler_config = {**m.info.scheduler_config, **config}
    return m


def test_spacing_and_karras_come_from_the_config_unless_overridden():
    m = gmm_with(timestep_spacing="trailing", use_karras_sigmas=True)
    ddim = engine.model_plan(m, get_sampler("ddim"), 10)
    assert ddim.timesteps[0] == 999 and not ddim.karras  # trailing; Karras never applies to ddim
    euler = engine.model_plan(m, get_sampler("euler"), 10)
    assert euler.karras
    plain = engine.model_plan(m, get_sampler("euler"), 10, spacing="leading", karras=False)
    assert not plain.karras and plain.timesteps[0] == 900
    # no config: each sampler's own default (ddim leading, euler linspace)
    bare = GaussianMixtureModel()
    assert engine.model_plan(bare, get_sampler("ddim"), 10).timesteps[0] == 900
    assert engine.model_plan(bare, get_sampler("euler"), 10).timesteps[0] == 999


def test_clip_setting_of_the_config_is_the_default_and_can_be_turned_off():
    m = gmm_with(clip_sample=True, clip_sample_range=0.5)
    clipped = Run(Recipe(model="gmm", sampler="ddim", steps=5, batch=2), model=m).run_to_end()
    assert max(float(clipped.full_state(k)['x0'].abs().max()) for k in range(len(clipped))) <= 0.5 + 1e-3
    free = Run(Recipe(model="gmm", sampler="ddim", steps=5, batch=2, x0_mode="none"), model=m).run_to_end()
    assert max(float(free.full_state(k)['x0'].abs().max()) for k in range(len(free))) > 0.6


def test_schedule_override_changes_the_plan_sigmas():
    m = GaussianMixtureModel()
    a = engine.model_plan(m, get_sampler("ddim"), 10)
    b = engine.model_plan(m, get_sampler("ddim"), 10, schedule_overrides={"beta_schedule": "squaredcos_cap_v2"})
    assert not np.allclose(a.alpha_bars, b.alpha_bars)
