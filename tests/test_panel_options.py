"""The sampler panel's option widgets are made from the registry's declarations: they allow what a recipe
allows, each sampler keeps its own values, and the recipe the panel describes carries exactly the chosen
sampler's options."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox  # noqa: E402

from studio.core.samplers import OPTION_SCHEMA, SAMPLERS  # noqa: E402
from studio.gui.panel import SamplerPanel  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402


@pytest.fixture
def panel(qtbot):
    p = SamplerPanel()
    qtbot.addWidget(p)
    return p


def choose(p, sampler):
    p.samplerCombo.setCurrentIndex(p.samplerCombo.findData(sampler))


def test_one_widget_per_declared_option_with_the_declared_range(panel):
    assert set(panel.optionWidgets) == set(OPTION_SCHEMA)
    for name, opt in OPTION_SCHEMA.items():
        w = panel.optionWidgets[name]
        if opt.kind == "choice":
            assert isinstance(w, QComboBox) and [w.itemData(i) for i in range(w.count())] == list(opt.choices)
        else:
            assert isinstance(w, QSpinBox if opt.kind == "int" else QDoubleSpinBox)
            assert w.maximum() == opt.high
            low = w.minimum()
            assert (low > opt.low) if opt.low_open else (low == opt.low)
            assert opt.check(low) is not None  # the smallest value the widget offers is allowed
    corrector = panel.optionWidgets["corrector_steps"]
    assert (corrector.minimum(), corrector.maximum()) == (0, 100)  # the sampler's range (the window had 1–50)
    schema = Recipe.schema()
    assert panel.stepsSpin.maximum() == schema["steps"].high and panel.guidanceSpin.maximum() == schema["scale"].high
    assert [panel.x0Combo.itemData(i) for i in range(panel.x0Combo.count())] == [None, *schema["x0_mode"].choices]


def test_each_sampler_shows_its_own_defaults_and_keeps_its_own_values(panel):
    eta = panel.optionWidgets["eta"]
    choose(panel, "ddim")
    assert eta.isEnabled() and eta.value() == 0.0
    eta.setValue(0.3)
    choose(panel, "euler_a")
    assert eta.value() == 1.0  # euler_a's default η, not DDIM's 0 (which would mean no noise)
    assert panel.recipe().sampler_options() == {"eta": 1.0}
    eta.setValue(0.5)
    choose(panel, "heun")
    assert not eta.isEnabled()
    choose(panel, "ddim")
    assert eta.value() == 0.3
    choose(panel, "euler_a")
    assert eta.value() == 0.5


def test_the_recipe_carries_only_the_chosen_samplers_options(panel):
    for name, spec in SAMPLERS.items():
        choose(panel, name)
        r = panel.recipe()
        assert r.validate() == r
        assert {k for k in OPTION_SCHEMA if getattr(r, k) is not None} == set(spec.options)
        assert r.sampler_options() == spec.resolve()
        for opt_name, w in panel.optionWidgets.items():
            assert w.isEnabled() == (opt_name in spec.options)


def test_a_recipe_round_trips_through_the_panel(panel):
    r = Recipe(model="gmm", sampler="langevin", steps=7, corrector_steps=3, snr=0.05, seed=9, batch=2)
    panel.set_recipe(r)
    assert panel.optionWidgets["corrector_steps"].value() == 3
    assert panel.recipe(model="gmm").sampler_options() == {"corrector_steps": 3, "snr": 0.05}
    assert panel.recipe(model="gmm") == r.resolved().replace(karras=False)


# recipes that between them set every field the panel shows to a value other than its default (Karras is
# set: the panel's check box has two states, unset reads as off)
TEXT_INFO = dict(name="t", sample_size=8, in_channels=4, pipeline="StableDiffusionPipeline", vae_scale_factor=8)
ROUND_TRIPS = [
    ("class", Recipe(model="gmm", sampler="euler_a", steps=17, eta=0.35, guidance="classifier", scale=2.5,
                     guidance_interval=(0.1, 0.8), classifier_form="mean", classifier="/models/clf", label=2,
                     seed=2**40, batch=3, spacing="trailing", karras=True, x0_mode="threshold", eps_from_x0=False,
                     schedule={"beta_schedule": "linear"}, device="cpu", dtype="bfloat16", init_noise="/tmp/x_T.npy")),
    ("class", Recipe(model="gmm", sampler="langevin", corrector_steps=3, snr=0.05, guidance="cfg", scale=4.0,
                     label=1, karras=False)),
    ("text", Recipe(model="/models/sd", sampler="ddpm", variance="fixed_large", guidance="cfg", scale=5.5,
                    prompt="a red 7", negative_prompt="blue", width=72, height=56, guidance_rescale=0.7,
                    karras=False, loras=["/loras/style.safetensors:0.6"], vae="/vae/sd15-mse.safetensors",
                    prediction_type="v_prediction", attention=True)),
    ("class", Recipe(model="gmm", sampler="heun", s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003,
                     karras=False)),
    ("class", Recipe(model="gmm", sampler="lms", order=2, karras=False, init_image="/images/cat.png",
                     init_image_fit="resize", strength=0.6, init_image_sha256="ab" * 32)),
    ("class", Recipe(model="gmm", sampler="unipc", order=3, variant="bh1", karras=False, init_image="/images/cat.png",
                     start_step=3)),
    ("class", Recipe(model="gmm", sampler="dpmpp_2m_sde", eta=0.5, solver_type="heun", noise_type="brownian",
                     karras=False)),
    ("class", Recipe(model="gmm", sampler="lcm", original_inference_steps=20, karras=False)),
    ("class", Recipe(model="gmm", sampler="restart", restart_times=2, restart_steps=4, restart_sigma_min=0.2,
                     restart_sigma_max=3.0, s_noise=0.9, karras=False)),
    ("class", Recipe(model="gmm", sampler="ddim", eta=0.2, prev_timestep="stride", spacing="linspace", karras=False)),
    ("class", Recipe(model="gmm", sampler="ddim", eta=0.0, prev_timestep="plan", init_noise="/tmp/x_T.safetensors",
                     x0_mode="none", karras=False,
                     inversion={"method": "fixed-point", "iters": 3, "image": "/images/cat.png"})),
]


def test_the_panel_shows_or_keeps_every_recipe_field(panel):
    from studio.gui.panel import NOT_SHOWN

    p = panel
    assert set(p.bindings) | set(NOT_SHOWN) == set(Recipe.schema()) and not set(p.bindings) & set(NOT_SHOWN)
    schema = Recipe.schema()
    changed = {name for _, r in ROUND_TRIPS for name, opt in schema.items() if getattr(r, name) != opt.default}
    assert changed == set(schema) - {"branch"}  # the round trips below cover every field


@pytest.mark.parametrize("kind,recipe", ROUND_TRIPS, ids=[r.sampler for _, r in ROUND_TRIPS])
def test_every_recipe_field_survives_set_recipe_then_recipe(panel, kind, recipe):
    from studio.core.gmm import GaussianMixtureModel
    from studio.core.model import ModelInfo

    panel.set_model_info(GaussianMixtureModel().info if kind == "class" else ModelInfo(**TEXT_INFO))
    r = recipe.validate()
    panel.set_recipe(r)
    assert panel.recipe(model=r.model) == r
    # the shown fields are read back from the widgets (the others, NOT_SHOWN, from the recipe set)
    assert {name: read() for name, (read, _) in panel.bindings.items()} == {name: getattr(r, name) for name in panel.bindings}
    branched = r.replace(branch={"parent": Recipe(model="gmm").to_dict(), "from_step": 2})
    panel.set_recipe(branched)
    assert panel.recipe(model=r.model) == r  # the panel describes a new run: the branch is dropped
