"""The window's attention view: the panel's Attention maps toggle, the token strip under the canvases, the
overlay that follows the scrubber, the grid of every token's map, and the export of the maps.

Real widgets offscreen and a real tiny Stable Diffusion pipeline folder. The truth for every overlay is the
run's own store, ``traj.attention.map(step, token, sample)`` (itself checked against diffusers' attention
scores in test_attention_maps.py): the canvas keeps the array it blends (``canvas.overlay``), and that
array is compared, not a screenshot."""
import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from studio.core.attention import StepAttention  # noqa: E402
from studio.gui.attention_view import NO_MAPS, token_label  # noqa: E402
from studio.gui.export_dialog import ExportDialog  # noqa: E402
from studio.gui.panel import SamplerPanel  # noqa: E402
from studio.session.attention_maps import AttentionMaps  # noqa: E402
from text_pipelines import make_sd_pipeline  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

STEPS, BATCH = 5, 2
PROMPT = "a (red:1.5) 7"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("gui-attention") / "sd")


@pytest.fixture
def win(qtbot, pipeline):
    w = open_window(qtbot, STEPS, BATCH, model=str(pipeline), timeout=30000)
    w.panel.promptEdit.setText(PROMPT)
    return w


def run(qtbot, w):
    with qtbot.waitSignal(w.runFinished, timeout=30000) as blocker:
        w.run()
    qtbot.waitUntil(lambda: not w.busy)
    return blocker.args[0]


def truth(traj, step: int, token: int) -> np.ndarray:
    return np.stack([traj.attention.map(step, token, b) for b in range(traj.recipe.batch)])


def test_a_token_overlays_its_map_and_follows_the_scrubber(qtbot, win):
    view, strip = win.mainView, win.mainView.attentionStrip
    assert win.panel.attentionCheck.isVisible()  # a text-to-image model: the toggle is offered
    win.panel.attentionCheck.setChecked(True)
    assert win.current_recipe().attention is True
    traj = run(qtbot, win)
    maps = traj.attention
    assert traj.recipe.attention and maps is not None and len(maps) == STEPS
    # one toggle per prompt token, the start and end tokens named, the weighted token showing its weight
    assert strip.isVisible() and not strip.hint.isVisible()
    labels = [b.text() for b in strip.buttons]
    assert len(labels) == len(maps.tokens) and labels[0] == "<start>" and labels[-1] == "<end>"
    weighted = [i for i, w in enumerate(maps.token_weights) if w != 1.0]
    assert weighted and all(labels[i].endswith("×1.5") for i in weighted)
    # clicking a token overlays its map at the scrubbed step on x̂₀ and x_t
    token = weighted[0]
    assert view.position == STEPS and view.x0Canvas.overlay is None
    plain = view.x0Canvas.image().copy()
    qtbot.mouseClick(strip.buttons[token], Qt.MouseButton.LeftButton)
    assert strip.selected == token
    for canvas in (view.x0Canvas, view.xtCanvas):
        np.testing.assert_array_equal(canvas.overlay, truth(traj, STEPS - 1, token))
    assert not np.array_equal(view.x0Canvas.image(), plain)  # the heat map is drawn over the image
    view.x0Canvas.set_solo(1)  # one sample alone: its own map over it
    assert view.x0Canvas.image().shape[:2] == tuple(n + 2 for n in view.x0Canvas.frames.shape[1:3])
    view.x0Canvas.set_solo(None)
    # scrubbing moves the overlay to that step's map
    view.scrubber.setValue(2)
    np.testing.assert_array_equal(view.x0Canvas.overlay, truth(traj, 1, token))
    assert not np.array_equal(truth(traj, 1, token), truth(traj, STEPS - 1, token))
    assert "step 2" in strip.status.text()
    view.scrubber.setValue(0)  # the initial noise: no attention yet
    assert view.x0Canvas.overlay is None and view.xtCanvas.overlay is None
    assert "initial noise" in strip.status.text()
    view.scrubber.setValue(3)
    # another token replaces it; clicking that one again removes the overlay
    qtbot.mouseClick(strip.buttons[0], Qt.MouseButton.LeftButton)
    assert [b.isChecked() for b in strip.buttons].count(True) == 1
    np.testing.assert_array_equal(view.x0Canvas.overlay, truth(traj, 2, 0))
    qtbot.mouseClick(strip.buttons[0], Qt.MouseButton.LeftButton)
    assert strip.selected is None and view.x0Canvas.overlay is None and view.xtCanvas.overlay is None


@pytest.mark.slow
def test_resolution_scale_grid_and_export(qtbot, win, tmp_path, monkeypatch):
    view, strip = win.mainView, win.mainView.attentionStrip
    win.panel.attentionCheck.setChecked(True)
    traj = run(qtbot, win)
    maps = traj.attention
    strip.select(1)
    # each resolution's layers on their own grid
    res = maps.resolutions[-1]
    strip.resolutionCombo.setCurrentIndex(strip.resolutionCombo.findData(res))
    want = np.stack([maps.resolution_map(STEPS - 1, 1, res, b) for b in range(BATCH)])
    np.testing.assert_array_equal(view.x0Canvas.overlay, want)
    assert view.x0Canvas.overlay.shape[1:] == res
    strip.resolutionCombo.setCurrentIndex(0)
    # colours: to the token's maximum over the run, or to the step's own
    run_max = np.max([truth(traj, s, 1).reshape(BATCH, -1).max(axis=1) for s in maps.steps], axis=0)
    np.testing.assert_allclose(view.x0Canvas.overlay_top, run_max)
    strip.scaleCombo.setCurrentIndex(strip.scaleCombo.findData("step"))
    np.testing.assert_allclose(view.x0Canvas.overlay_top, truth(traj, STEPS - 1, 1).reshape(BATCH, -1).max(axis=1))

    # the grid: one cell per token, each with its map at the scrubbed step, following the scrubber
    grid = strip.open_grid()
    qtbot.addWidget(grid)
    assert len(grid.cells) == len(maps.tokens)
    assert [c.title for c in grid.cells] == [token_label(i, t, len(maps.tokens), w) for i, (t, w)
                                              in enumerate(zip(maps.tokens, maps.token_weights))]
    for i, cell in enumerate(grid.cells):
        np.testing.assert_array_equal(cell.overlay, truth(traj, STEPS - 1, i))
    view.scrubber.setValue(2)
    qtbot.waitUntil(lambda: np.array_equal(grid.cells[-1].overlay, truth(traj, 1, len(maps.tokens) - 1)), timeout=5000)
    assert all(np.array_equal(c.overlay, truth(traj, 1, i)) for i, c in enumerate(grid.cells))

    # export: the dialog offers the maps, written at the scrubbed step
    dlg = ExportDialog(traj, win, attention_step=view.position)
    qtbot.addWidget(dlg)
    dlg.kind.setCurrentIndex(dlg.kind.findData("attention"))
    assert not dlg.scale.isEnabled() and "step 2" in dlg.note.text()
    dlg.folder.setText(str(tmp_path))
    with qtbot.waitSignal(dlg.exported, timeout=30000):
        dlg._save()
    out = tmp_path / "attention"
    index = json.loads((out / "attention.json").read_text())
    assert index["tokens"] == maps.tokens and index["chosen_step"] == 2
    assert (out / "attention.gif").is_file() and (out / "grid_step_0002.png").is_file()
    np.testing.assert_array_equal(np.load(out / "maps.npz")["maps"], maps.arrays()["maps"])
    assert len(list((out / "step_0002").glob("*.png"))) == len(maps.tokens)
    # a failure is one line, and nothing half-made is left
    blocked = tmp_path / "file"
    blocked.write_text("x")
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warned.append(text))
    dlg2 = ExportDialog(traj, win)
    qtbot.addWidget(dlg2)
    dlg2.kind.setCurrentIndex(dlg2.kind.findData("attention"))
    dlg2.folder.setText(str(blocked))
    dlg2._save()
    assert len(warned) == 1 and "\n" not in warned[0] and not (blocked / "attention").exists()


@pytest.mark.slow
def test_a_weight_change_shows_in_that_tokens_map(qtbot, win):
    """Re-running with the token's weight changed keeps it selected: the overlay is the new run's map."""
    view, strip = win.mainView, win.mainView.attentionStrip
    win.panel.attentionCheck.setChecked(True)
    before = run(qtbot, win)
    token = next(i for i, w in enumerate(before.attention.token_weights) if w != 1.0)
    strip.select(token)
    win.panel.promptEdit.setText(PROMPT.replace(":1.5", ":3"))
    after = run(qtbot, win)
    assert after.attention.tokens == before.attention.tokens and strip.selected == token
    assert strip.buttons[token].isChecked() and strip.buttons[token].text().endswith("×3")
    np.testing.assert_array_equal(view.x0Canvas.overlay, truth(after, STEPS - 1, token))
    assert not np.allclose(truth(after, STEPS - 1, token), truth(before, STEPS - 1, token))


@pytest.mark.slow
def test_a_run_without_maps_says_how_to_get_them(qtbot, win):
    strip = win.mainView.attentionStrip
    traj = run(qtbot, win)
    assert traj.attention is None
    assert strip.isVisible() and strip.hint.isVisible() and strip.hint.text() == NO_MAPS
    assert not strip.tokenScroll.isVisible() and not strip.gridButton.isVisible()
    assert win.mainView.x0Canvas.overlay is None
    dlg = ExportDialog(traj, win)
    qtbot.addWidget(dlg)
    assert dlg.kind.findData("attention") < 0  # nothing to export


@pytest.mark.slow
def test_thinned_maps_show_the_note_and_the_kept_step(qtbot, win):
    """Maps kept one step in two (as the memory cap thins a long run): the strip says so, and a step not
    kept shows the last kept step before it."""
    view, strip = win.mainView, win.mainView.attentionStrip
    win.panel.attentionCheck.setChecked(True)
    traj = run(qtbot, win)
    full = traj.attention
    per_step = full.nbytes // len(full)
    thin = AttentionMaps(full.tokens, full.token_ids, full.total_steps, limit_bytes=per_step * 3,
                         weights=full.token_weights)
    for s in full.steps:
        per_res = {r: torch.from_numpy(np.stack([full.resolution_map(s, slice(None), r, b) for b in range(BATCH)]))
                   for r in full.resolutions}
        thin.append(s, StepAttention(torch.from_numpy(np.stack([full.token_maps(s, b) for b in range(BATCH)])),
                                     per_res, {r: n * full.evaluations[s] for r, n in full.layers.items()},
                                     full.evaluations[s]))
    assert thin.stride == 2 and thin.steps == [0, 2, 4] and thin.notes
    traj.attention = thin
    strip.show_run(traj)
    strip.select(1)
    view.scrubber.setValue(4)  # step 4 (1-based) was not kept: step 3's maps
    assert "maps of step 3" in strip.status.text() and "one step in 2 kept" in strip.status.text()
    assert thin.notes[0] in strip.status.toolTip()
    np.testing.assert_array_equal(view.x0Canvas.overlay, truth(traj, 2, 1))


def test_the_toggle_is_for_text_models_only(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.attentionCheck.isVisible()  # no model yet, and a class model has no prompt tokens
    panel.attentionCheck.setChecked(True)
    assert panel.recipe(model="gmm").attention is False
