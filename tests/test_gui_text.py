"""The window on a text-to-image pipeline: prompt boxes, Enter runs, previews then full decodes, a branch with a
new prompt, the latent-channel view. Real widgets (offscreen), a real tiny pipeline folder on disk."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402

from studio.gui import MainWindow  # noqa: E402
from studio.gui.full_decode import shared_decoder  # noqa: E402
from text_pipelines import make_sd_pipeline  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("gui") / "sd")


@pytest.fixture
def win(qtbot, pipeline):
    return open_window(qtbot, 5, 2, model=str(pipeline), timeout=30000)


def test_text_model_shows_prompt_boxes_and_hides_class(win):
    p = win.panel
    assert p.is_text and p.promptEdit.isVisible() and p.negativeEdit.isVisible() and not p.labelCombo.isVisible()
    assert p.widthSpin.value() == 16 and p.widthSpin.singleStep() == 2
    assert p.guidanceModeCombo.currentData() == "cfg"  # text-to-image starts guided
    assert not p.guidanceModeCombo.model().item(2).isEnabled()  # no classifier for latents
    assert "text-to-image" in p.modelInfo.text()


def test_enter_in_prompt_runs_and_final_is_decoded(qtbot, win):
    p = win.panel
    p.promptEdit.setText("a red 7")
    p.negativeEdit.setText("blue")
    with qtbot.waitSignal(win.runFinished, timeout=30000) as blocker:
        qtbot.keyClick(p.promptEdit, Qt.Key.Key_Return)
    traj = blocker.args[0]
    assert traj.recipe.prompt == "a red 7" and traj.recipe.negative_prompt == "blue" and len(traj) == 5
    view = win.mainView
    # the final position settles and gets its full decode: image size, not latent size
    qtbot.waitUntil(lambda: traj.decodes.peek(5, "xt") is not None, timeout=15000)
    shared_decoder().idle()
    qtbot.waitUntil(lambda: "full VAE decode" in view.xtCanvas.caption, timeout=5000)
    assert view.xtCanvas.image().shape[:2] != traj.frame_xt(5).shape[1:3]
    full = traj.decodes.peek(5, "xt")
    assert full.shape == (2, 16, 16, 3)
    # scrubbing back shows the preview at once, named as such, then that step's decode once it settles
    view.scrubber.setValue(2)
    assert view.xtCanvas.caption.endswith("· linear preview") or traj.decodes.peek(2, "xt") is not None
    qtbot.waitUntil(lambda: traj.decodes.peek(2, "xt") is not None and "full VAE decode" in view.xtCanvas.caption,
                    timeout=15000)
    # the latent-channel view of x_t
    view.channelsCheck.setChecked(True)
    assert "latent channels" in view.xtCanvas.caption
    view.channelsCheck.setChecked(False)


def test_branch_with_new_prompt(qtbot, win):
    p = win.panel
    p.promptEdit.setText("a cat")
    with qtbot.waitSignal(win.runFinished, timeout=30000) as blocker:
        win.run()
    parent = blocker.args[0]
    win.mainView.scrubber.setValue(2)
    p.promptEdit.setText("a dog")
    qtbot.waitUntil(lambda: not win.busy)
    with qtbot.waitSignal(win.branchFinished, timeout=30000) as blocker:
        win.branchButton.click()
    child = blocker.args[0]
    assert child.recipe.prompt == "a dog" and child.recipe.branch["parent"]["prompt"] == "a cat"
    assert len(win.branch_views()) == 1
    assert not np.array_equal(child.final().numpy(), parent.final().numpy())


def test_compare_prompts_on_the_same_latents(qtbot, win, tmp_path):
    from PIL import Image

    from studio.gui.compare import CompareDialog

    win.panel.promptEdit.setText("a red 7")
    dlg = CompareDialog(win.current_recipe(), win.summary, win)
    qtbot.addWidget(dlg)
    assert dlg.rows[0].prompt.isVisibleTo(dlg) and dlg.rows[0].prompt.text() == "a red 7"
    for extra in dlg.rows[2:]:  # the default preset's other two rows
        dlg.remove_config(extra)
    dlg.rows[1].sampler.setCurrentIndex(dlg.rows[1].sampler.findData(dlg.rows[0].sampler.currentData()))
    dlg.rows[1].karras.setChecked(dlg.rows[0].karras.isChecked())
    dlg.rows[1].prompt.setText("a blue 3")
    dlg.rows[1].rescale.setValue(0.7)
    recipes = dlg.recipes()
    assert [r.prompt for r in recipes] == ["a red 7", "a blue 3"] and recipes[1].guidance_rescale == 0.7
    with qtbot.waitSignal(dlg.compareFinished, timeout=30000) as blocker:
        dlg.run()
    a, b = blocker.args[0]
    assert np.array_equal(a.full_state(-1)["x"].numpy(), b.full_state(-1)["x"].numpy())  # the same initial latents
    assert not np.array_equal(a.final().numpy(), b.final().numpy())
    # as in the main view, the previews give way to full decodes, and the captions say which is shown
    assert all(c.caption.endswith(("(linear preview)", "(full VAE decode)")) for c in dlg.canvases)
    qtbot.waitUntil(lambda: all(c.caption.endswith("(full VAE decode)") for c in dlg.canvases), timeout=20000)
    assert all(c.frames.shape[1:3] == (16, 16) for c in dlg.canvases)  # image size, not the 8×8 latents
    path = dlg.export_grid(tmp_path / "cmp.png")
    img = Image.open(path)
    assert img.height > 3 * 16  # full decodes (16 px images, enlarged), not 8 px previews


def test_a_webui_png_opens_with_its_prompt_and_settings(qtbot, win, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    WEBUI_TEXT = ("a red 7, bold\nNegative prompt: blue\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, "
                  "CFG scale: 4.5, Seed: 1234, Size: 16x16, Model hash: 0123abcd, Model: v1-5")

    info = PngInfo()
    info.add_text("parameters", WEBUI_TEXT)
    Image.new("RGB", (16, 16)).save(tmp_path / "webui.png", pnginfo=info)
    recipe = win.open_recipe(str(tmp_path / "webui.png"))
    assert recipe is not None and recipe.model == win.model_spec
    r = win.current_recipe()
    assert (r.prompt, r.negative_prompt, r.steps, r.sampler, r.karras, r.scale, r.seed) == (
        "a red 7, bold", "blue", 12, "dpmpp_2m", True, 4.5, 1234)
    # a PNG with neither chunk: one line, nothing changed
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert win.open_recipe(str(tmp_path / "plain.png")) is None
    assert "carries no recipe" in win.errorLabel.text()
    assert win.current_recipe().prompt == "a red 7, bold"


def test_preview_setting_full_decodes_every_step(qtbot, win):
    win.panel.previewCombo.setCurrentIndex(win.panel.previewCombo.findData("full"))
    with qtbot.waitSignal(win.runFinished, timeout=30000) as blocker:
        win.run()
    traj = blocker.args[0]
    assert traj.frame_x0(0).shape[1:3] == (16, 16)  # frames at image size: every step decoded
    win.panel.previewCombo.setCurrentIndex(win.panel.previewCombo.findData("linear"))
    with qtbot.waitSignal(win.runFinished, timeout=30000) as blocker:
        win.run()
    assert blocker.args[0].frame_x0(0).shape[1:3] == (8, 8)


def test_opening_a_text_model_measures_its_default_preview(qtbot, pipeline):
    """The window times a full decode against a UNet evaluation as the model opens; the preview it streams
    by default follows the declared share, and the tooltip says what was measured."""
    from studio.session.decodes import FULL_DECODE_SHARE

    w = MainWindow(model=str(pipeline))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.modelLoaded, timeout=30000) as blocker:
        w.show()
    summary = blocker.args[0]
    assert summary.decode_share is not None and summary.decode_share > 0
    assert summary.preview == ("full" if summary.decode_share <= FULL_DECODE_SHARE else "linear")
    assert w.panel.previewCombo.currentData() == summary.preview
    assert "UNet evaluation" in w.panel.previewCombo.toolTip()
    # a preview the user picked outlasts the next model's default
    other = "linear" if summary.preview == "full" else "full"
    w.panel.previewCombo.setCurrentIndex(w.panel.previewCombo.findData(other))
    w.panel._preview_chosen()
    w.panel.set_default_preview(summary.preview, summary.decode_share)
    assert w.panel.previewCombo.currentData() == other
    qtbot.waitUntil(lambda: not w.busy)
