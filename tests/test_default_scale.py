"""One fallback guidance scale per mode, in core (``default_scale``): a recipe that names no scale runs at the
same scale in the window, in ``studio sample`` and in a sweep."""
from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from studio.cli import main  # noqa: E402
from studio.core.gmm import GaussianMixtureModel  # noqa: E402
from studio.core.guidance import FALLBACK_SCALES, GuidanceError, default_scale, fallback_text  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402
from studio.sweep.spec import parse_spec  # noqa: E402


def test_the_models_recommendation_else_the_fallback():
    assert default_scale("classifier", {"classifier": 100.0, "cfg": 2.0}) == 100.0
    assert default_scale("cfg", {"classifier": 100.0}) == FALLBACK_SCALES["cfg"]
    assert default_scale("classifier") == FALLBACK_SCALES["classifier"]
    with pytest.raises(GuidanceError, match="takes no scale"):
        default_scale("none")
    assert fallback_text() in Recipe.schema()["scale"].help  # the help says what the fallback is


@pytest.mark.parametrize("mode", ["cfg", "classifier"])
def test_gmm_without_a_scale_runs_at_one_scale_in_the_window_the_cli_and_a_sweep(qtbot, tmp_path, mode):
    from studio.gui.panel import SamplerPanel

    info = GaussianMixtureModel().info
    assert mode not in info.recommended_scales  # gmm recommends none: the fallback decides
    want = default_scale(mode)

    panel = SamplerPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(info)
    panel.guidanceModeCombo.setCurrentIndex(panel.guidanceModeCombo.findData(mode))
    window = panel.recipe(model="gmm").scale

    out = tmp_path / "run"
    assert main(["sample", "--model", "gmm", "--guidance", mode, "--label", "1", "--steps", "2", "--batch", "1",
                 "--quiet", "--out", str(out)]) == 0
    cli = json.loads((out / "recipe.json").read_text())["scale"]

    spec = parse_spec(f'model = "gmm"\n[fixed]\nguidance = "{mode}"\nlabel = 1\nsteps = 2\n', "s.toml")
    sweep = spec.cells[0].recipe.scale

    assert window == cli == sweep == want
