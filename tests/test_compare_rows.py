"""The compare dialog's configuration rows are made from the samplers' declarations, as the panel is: every
option of every registered sampler can be set in a row and reaches the recipe that row runs."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from studio.core.samplers import OPTION_SCHEMA, SAMPLERS  # noqa: E402
from studio.gui import option_widgets as ow  # noqa: E402
from studio.gui.compare import CompareDialog, label_for  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402

from test_sampler_contract import other_value  # noqa: E402


@pytest.fixture
def dialog(qtbot):
    dlg = CompareDialog(Recipe(model="gmm", sampler="ddim", steps=5, guidance="cfg", label=1), None)
    qtbot.addWidget(dlg)
    return dlg


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_option_of_every_sampler_is_a_field_of_a_row(dialog, name):
    row = dialog.rows[1]
    row.sampler.setCurrentIndex(row.sampler.findData(name))
    spec = SAMPLERS[name]
    for opt_name, w in row.options.items():
        assert w.isVisibleTo(dialog) == (opt_name in spec.options), opt_name  # only the sampler's own
    assert {opt_name: ow.value(row.options[opt_name]) for opt_name in spec.options} == spec.resolve()  # its defaults
    chosen = {opt_name: other_value(opt) for opt_name, opt in spec.options.items()}
    for opt_name, v in chosen.items():
        w = row.options[opt_name]
        assert w.isEnabled()
        ow.set_value(w, v)
    recipe = dialog.recipes()[1]
    assert recipe.sampler == name and recipe.sampler_options() == spec.resolve(chosen)
    assert {k for k in OPTION_SCHEMA if getattr(recipe, k) is not None} == set(spec.options)
    for opt_name, v in chosen.items():  # the canvas caption names them too
        opt = OPTION_SCHEMA[opt_name]
        assert (f"{opt.label}={v:g}" if opt.kind in ("float", "int") else opt.labelled(v)) in label_for(recipe)


def test_a_row_starts_from_its_recipes_options(qtbot):
    base = Recipe(model="gmm", sampler="langevin", steps=5, corrector_steps=4, snr=0.3)
    dlg = CompareDialog(base, None)
    qtbot.addWidget(dlg)
    dlg.remove_config(dlg.rows[-1])
    row = dlg.add_config(base)
    assert (row.options["corrector_steps"].value(), row.options["snr"].value()) == (4, 0.3)
    assert dlg.recipes()[-1] == base.validate().resolved()


# the preset as a web-UI user reads it: (sampler, Karras σ, its options), from the menu names' meaning in
# A1111 (UniPC: its defaults bh1 and order 3; DPM++ 2M SDE: midpoint; the ancestral and SDE η 1)
PRESET_SETTINGS = [("euler_a", False, {"eta": 1.0}), ("dpmpp_2m", True, {}),
                   ("dpmpp_2m_sde", True, {"eta": 1.0, "solver_type": "midpoint", "noise_type": "per-step"}),
                   ("unipc", False, {"order": 3, "variant": "bh1"})]


def test_a_fresh_dialog_compares_the_web_uis_four_popular_samplers(qtbot):
    """Opened fresh, the dialog shows the four rows of DEFAULT_PRESET with their settings on the widgets, all
    on the window's seed, steps and scale (the same noise), whatever sampler the window had."""
    from studio.gui.compare import DEFAULT_PRESET

    assert DEFAULT_PRESET == ("Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "UniPC")
    base = Recipe(model="gmm", sampler="langevin", steps=7, corrector_steps=4, guidance="cfg", scale=2.5, label=1,
                  seed=11)
    dlg = CompareDialog(base, None)
    qtbot.addWidget(dlg)
    dlg.show()
    assert len(dlg.rows) == 4 and not dlg.addButton.isEnabled()
    for row, (sampler, karras, options) in zip(dlg.rows, PRESET_SETTINGS):
        assert row.sampler.currentData() == sampler and row.isVisible()
        assert row.karras.isChecked() == karras and row.karras.isEnabled()
        assert {name: ow.value(row.options[name]) for name in SAMPLERS[sampler].options} == options
        assert all(w.isVisibleTo(dlg) == (name in options) for name, w in row.options.items())
        assert (row.steps.value(), row.scale.value()) == (7, 2.5)
    recipes = dlg.recipes()
    assert [(r.sampler, r.karras, r.sampler_options()) for r in recipes] == PRESET_SETTINGS
    assert {(r.seed, r.steps, r.scale, r.label) for r in recipes} == {(11, 7, 2.5, 1)}
    assert "Karras" in label_for(recipes[1]) and "Karras" not in label_for(recipes[0])


def test_a_rows_karras_box_is_its_own(dialog):
    row = dialog.rows[0]  # Euler a, uniform σ
    row.karras.setChecked(True)
    assert dialog.recipes()[0].karras is True
    row.sampler.setCurrentIndex(row.sampler.findData("ddim"))  # integer timesteps: no Karras σ
    assert not row.karras.isEnabled() and dialog.recipes()[0].karras is None
