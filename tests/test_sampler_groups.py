"""Every sampler declares its family (``SamplerSpec.group``): the window's sampler picker and `studio samplers`
show each registered sampler exactly once, under that group, with its one-line description."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402

from studio.cli import main  # noqa: E402
from studio.core.samplers import SAMPLER_GROUPS, SAMPLERS, SamplerSpec  # noqa: E402
from studio.gui.panel import SamplerPanel  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402


def declared() -> dict[str, list[str]]:
    """{group: its samplers in registry order}, straight from the declarations, for the groups that have any."""
    out: dict[str, list[str]] = {g: [] for g in SAMPLER_GROUPS}
    for name, spec in SAMPLERS.items():
        out[spec.group].append(name)
    return {g: names for g, names in out.items() if names}


def combo_groups(combo) -> dict[str, list[str]]:
    """{header text: the sampler names under it}, as the combo lists its items."""
    out: dict[str, list[str]] = {}
    for i in range(combo.count()):
        name = combo.itemData(i)
        if name is None:
            out[combo.itemText(i)] = []
        else:
            out[list(out)[-1]].append(name)
    return out


@pytest.fixture
def panel(qtbot):
    p = SamplerPanel()
    qtbot.addWidget(p)
    return p


def test_every_sampler_declares_a_known_group():
    assert all(spec.group in SAMPLER_GROUPS for spec in SAMPLERS.values())
    assert {SAMPLERS[n].group for n in ("euler", "heun")} == {"ODE"} and SAMPLERS["euler_a"].group == "ancestral"
    assert SAMPLERS["dpmpp_2m_sde"].group == "SDE" and SAMPLERS["unipc"].group == "multistep"
    spec = SAMPLERS["euler"]
    with pytest.raises(ValueError, match="group 'fast' is not one of ODE, multistep"):
        SamplerSpec("x", spec.fn, "d", "sigma", True, group="fast")


def test_the_picker_groups_every_sampler_once_with_a_description(panel):
    combo = panel.samplerCombo
    assert combo_groups(combo) == declared()
    names = [combo.itemData(i) for i in range(combo.count()) if combo.itemData(i) is not None]
    assert sorted(names) == sorted(SAMPLERS)  # each exactly once
    model = combo.model()
    for i in range(combo.count()):
        name, tip = combo.itemData(i), combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
        if name is None:  # a header: its group's line, and it cannot be chosen
            assert tip == SAMPLER_GROUPS[combo.itemText(i)]
            assert not model.item(i).isEnabled() and not model.item(i).isSelectable()
        else:
            assert tip == SAMPLERS[name].description and name in combo.itemText(i)
    assert "DPM++ 2M SDE" in combo.itemText(combo.findData("dpmpp_2m_sde"))  # the web UIs' name beside it


def test_the_picker_reads_and_shows_the_recipes_sampler_and_skips_headers(panel, qtbot):
    combo = panel.samplerCombo
    for name in SAMPLERS:
        panel.set_recipe(Recipe(model="gmm", sampler=name))
        assert panel.recipe().sampler == name and combo.currentData() == name
        assert panel.samplerInfo.text() == SAMPLERS[name].description
    # the arrow keys go from the last sampler of a group to the first of the next, past the header
    last_ode, first_multistep = declared()["ODE"][-1], declared()["multistep"][0]
    panel.set_recipe(Recipe(model="gmm", sampler=last_ode))
    qtbot.keyClick(combo, Qt.Key.Key_Down)
    assert combo.currentData() == first_multistep


def test_studio_samplers_lists_them_grouped(capsys):
    assert main(["samplers"]) == 0
    groups: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  "):
            groups[list(groups)[-1]].append(line.split()[0])
        elif line:
            group, line_text = line.split(": ", 1)
            assert line_text == SAMPLER_GROUPS[group]
            groups[group] = []
    assert groups == declared()
