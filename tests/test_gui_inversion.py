"""The window's inversion (gui/inversion_view.py) with real widgets offscreen on the exact gmm model.

- Invert streams the inversion into the main view like a run: steps + 1 positions, position 0 the image's x₀
  (the forward view's image as the model sees it), the last x_T; its caption says it is an inversion and
  "Continue from here" is not offered on it.
- Regenerate is an ordinary run from x_T with the panel's settings; with the inversion's own settings its
  round trip's PSNR is the one `studio invert` reports for the same image and settings (to 1e-6), and the
  side-by-side dialog shows it.
- A stochastic sampler in the panel is the recipe's one-line error, and the window keeps its run.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("pytestqt")
from _gui import open_window, run, temp_settings  # noqa: E402,F401

from studio.gui import option_widgets as ow  # noqa: E402
from studio.session.frames import to_uint8  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 10


@pytest.fixture
def image(gmm, tmp_path):
    """One of the mixture's means as a 16×16 PNG: an image the model knows."""
    x = gmm.means[1].float()
    arr = ((x.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
    path = tmp_path / "mean.png"
    Image.fromarray(arr).save(path)
    return str(path)


def window(qtbot, image):
    """A window on gmm, unguided DDIM with ``STEPS`` steps, the image open in the forward view."""
    w = open_window(qtbot, steps=STEPS, batch=2)
    ow.set_value(w.panel.guidanceModeCombo, "none")
    ow.set_value(w.panel.samplerCombo, "ddim")
    with qtbot.waitSignal(w.forwardPanel.viewOpened, timeout=15000):
        w.open_image(image)
    return w


def invert(qtbot, w, method="plain", iters=None):
    tool = w.inversionTool
    ow.set_value(tool.bar.methodCombo, method)
    if iters is not None:
        ow.set_value(tool.bar.itersSpin, iters)
    with qtbot.waitSignal(tool.inverted, timeout=15000) as done:
        tool.bar.invertButton.click()
    qtbot.waitUntil(lambda: not w.busy)
    return done.args[0]


def test_invert_walks_the_main_view_from_the_image_to_x_T(qtbot, image):
    w = window(qtbot, image)
    inv = invert(qtbot, w)
    traj = w.trajectory
    assert inv is not None and traj is inv.trajectory and traj.finished
    assert w.mainView.scrubberBar.slider.maximum() == STEPS  # positions 0 … STEPS
    assert torch.equal(traj.full_state(-1)["x"], inv.x0)  # position 0 is the image
    w.mainView.scrubberBar.set_position(0)
    assert np.array_equal(w.mainView.xtCanvas.frames, to_uint8(inv.x0))
    assert torch.equal(traj.final(), inv.x_T)
    header = w.mainView.header.text()
    assert header.startswith("Inversion, ") and "unclipped" in header and "mean.png" in header
    # not a sampling run: "Continue from here" is off, says why, and the action refuses in one line
    assert not w.branchButton.isEnabled() and "inversion" in w.branchButton.toolTip()
    with qtbot.waitSignal(w.errorShown) as err:
        w.branch()
    assert "inversion" in err.args[0] and "\n" not in err.args[0] and w.branchTabs.count() == 0
    assert w.inversionTool.bar.regenerateButton.isEnabled()
    w.close()


@pytest.mark.slow
def test_regenerating_gives_the_clis_round_trip(qtbot, image, tmp_path):
    from studio.cli import main

    w = window(qtbot, image)
    inv = invert(qtbot, w, "fixed-point", 2)
    assert inv.recipe.inversion["iters"] == 2
    tool = w.inversionTool
    with qtbot.waitSignal(tool.roundTripShown, timeout=15000) as shown:
        tool.bar.regenerateButton.click()
    qtbot.waitUntil(lambda: not w.busy)
    trip = shown.args[0]
    regen = w.trajectory
    assert regen.recipe.init_noise is not None and regen.recipe.x0_mode == "none" and len(regen) == STEPS
    assert torch.equal(regen.full_state(-1)["x"], inv.x_T)  # an ordinary run from the inverted noise
    assert "regenerated from the fixed-point DDIM inversion (K = 2) of mean.png; x̂₀ unclipped" in w.mainView.header.text()
    assert w.branchButton.isEnabled()  # an ordinary trajectory: it can be continued
    # the same image and settings on the command line
    out = tmp_path / "cli"
    assert main(["invert", image, "--model", "gmm", "--guidance", "none", "--steps", str(STEPS), "--sampler", "ddim",
                 "--inversion", "fixed-point", "--inversion-iters", "2", "--out", str(out), "--quiet"]) == 0
    cli = json.loads((out / "round_trip.json").read_text())["psnr_db"]
    assert trip.psnr == pytest.approx(cli, abs=1e-6) and trip.psnr > 50  # fixed-point, K = 2 on the exact gmm
    dlg = tool.dialog
    assert dlg.isVisible() and f"{trip.psnr:.2f} dB" in dlg.psnrLabel.text()
    assert np.array_equal(dlg.originalCanvas.frames, to_uint8(inv.pixels))
    assert np.array_equal(dlg.regeneratedCanvas.frames, to_uint8(regen.final()))
    w.close()


@pytest.mark.slow
def test_a_stochastic_sampler_is_one_line_and_the_run_stays(qtbot, image):
    w = window(qtbot, image)
    traj = run(qtbot, w)
    ow.set_value(w.panel.samplerCombo, "euler_a")
    with qtbot.waitSignal(w.errorShown) as err:
        w.inversionTool.bar.invertButton.click()
    assert "deterministic sampler" in err.args[0] and "\n" not in err.args[0]
    assert w.trajectory is traj and w.mainView.traj is traj and not w.busy
    assert not w.inversionTool.bar.regenerateButton.isEnabled()
    w.close()


@pytest.mark.slow
def test_a_latent_model_inverts_edits_and_reports_the_vae_bound(qtbot, tmp_path):
    """A tiny Stable Diffusion pipeline: the inversion runs on the VAE's latents; an edit (another prompt) runs
    from its x_T, and the dialog gives the pixel PSNR with the latent RMS error and the VAE's own round trip."""
    from studio.gui import MainWindow
    from text_pipelines import PROMPT, SIZE, make_sd_pipeline

    folder = make_sd_pipeline(tmp_path / "sd")
    w = MainWindow(model=str(folder))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.summary is not None and not w.busy, timeout=30000)
    w.panel.previewCombo.setCurrentIndex(w.panel.previewCombo.findData("linear"))
    w.panel.stepsSpin.setValue(5)
    w.panel.promptEdit.setText(PROMPT)
    ow.set_value(w.panel.guidanceModeCombo, "none")
    ow.set_value(w.panel.samplerCombo, "ddim")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    path = tmp_path / "pic.png"
    Image.fromarray((np.stack([xx, yy, 1 - xx], -1) * 255).astype(np.uint8)).save(path)
    with qtbot.waitSignal(w.forwardPanel.viewOpened, timeout=30000):
        w.open_image(str(path))
    inv = invert(qtbot, w)
    assert w.mainView.scrubberBar.slider.maximum() == 5 and torch.equal(w.trajectory.full_state(-1)["x"], inv.x0)
    w.panel.promptEdit.setText("a blue square")
    with qtbot.waitSignal(w.inversionTool.roundTripShown, timeout=30000) as shown:
        w.inversionTool.regenerate()
    qtbot.waitUntil(lambda: not w.busy)
    trip, regen = shown.args[0], w.trajectory
    assert regen.recipe.prompt == "a blue square" and regen.recipe.inversion["recipe"]["prompt"] == PROMPT
    assert trip.latent_rms is not None and np.isfinite(trip.vae_psnr)
    text = w.inversionTool.dialog.psnrLabel.text()
    assert text.startswith("An edit") and "latent RMS error" in text and "VAE" in text
    assert np.array_equal(w.inversionTool.dialog.regeneratedCanvas.frames, regen.decodes.final())
    w.close()


@pytest.mark.slow
def test_esc_stops_an_inversion_and_nothing_is_offered_from_it(qtbot, image):
    w = window(qtbot, image)
    tool = w.inversionTool
    assert tool.invert()
    w.worker.yielded.connect(lambda item: w.stop())  # Esc as soon as the inversion streams
    with qtbot.waitSignal(tool.inverted, timeout=15000) as done:
        pass
    qtbot.waitUntil(lambda: not w.busy)
    assert done.args[0] is None and not w.trajectory.finished and len(w.trajectory) < STEPS
    assert not tool.bar.regenerateButton.isEnabled()
    with qtbot.waitSignal(w.errorShown) as err:
        tool.regenerate()
    assert "invert an image first" in err.args[0]
    w.close()


@pytest.mark.slow
def test_the_menus_path_opens_the_image_then_inverts_it(qtbot, image):
    w = open_window(qtbot, steps=STEPS, batch=1)
    ow.set_value(w.panel.guidanceModeCombo, "none")
    tool = w.inversionTool
    with qtbot.waitSignal(w.errorShown) as err:
        tool.invert()  # no image open yet
    assert "open an image first" in err.args[0]
    with qtbot.waitSignal(tool.inverted, timeout=15000) as done:
        tool.invert_path(image)  # Run → Invert image… once its file dialog has given the path
    qtbot.waitUntil(lambda: not w.busy)
    assert w.forwardDock.isVisible() and done.args[0].recipe.inversion["image"] == image
    assert any(a.text() == "Invert image…" for a in w.menuBar().actions()[1].menu().actions())
    w.close()
