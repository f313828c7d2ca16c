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
    first = dlg.rows[0]
    assert (first.options["corrector_steps"].value(), first.options["snr"].value()) == (4, 0.3)
    assert dlg.recipes()[0] == base.validate().resolved()
