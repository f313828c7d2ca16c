"""The studio window on the exact gmm model: run, scrub, stop, branch, compare, export, recipes, errors."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox, QWidget  # noqa: E402

from studio.gui import MainWindow  # noqa: E402

from _gui import open_window, run, temp_settings  # noqa: E402,F401
from studio.session import export as ex  # noqa: E402

NAMES = ["modelPicker", "samplerCombo", "stepsSpin", "etaSpin", "seedSpin", "labelCombo", "guidanceModeCombo",
         "guidanceSlider", "runButton", "stopButton", "scrubber", "xtCanvas", "x0Canvas", "compareButton",
         "exportButton"]


@pytest.fixture
def win(qtbot):
    return open_window(qtbot, steps=8)


def shown(canvas):
    return canvas.frames


def test_contract_names(win):
    for name in NAMES:
        assert win.findChild(QWidget, name) is not None, name
    assert win.panel.labelCombo.itemText(1).endswith("disc")
    assert [win.panel.guidanceModeCombo.itemData(i) for i in range(3)] == ["none", "cfg", "classifier"]


def test_settings_panel_needs_no_horizontal_scrolling(qtbot, win):
    from PySide6.QtWidgets import QScrollArea

    scroll = win.findChild(QScrollArea, "panelScroll")
    qtbot.waitUntil(lambda: scroll.isVisible())
    assert scroll.viewport().width() >= win.panel.minimumSizeHint().width()
    assert scroll.horizontalScrollBar().maximum() == 0


def test_run_to_end_and_scrub(qtbot, win):
    traj = run(qtbot, win)
    assert traj.finished and len(traj) == 8
    assert win.scrubber.maximum() == 8 and win.scrubber.value() == 8
    assert np.array_equal(shown(win.xtCanvas), traj.frame_xt(8))
    assert np.array_equal(shown(win.x0Canvas), traj.frame_x0(7))
    for pos in (0, 3, 5, 8):
        win.scrubber.setValue(pos)
        assert np.array_equal(shown(win.xtCanvas), traj.frame_xt(pos))
        if pos:
            assert np.array_equal(shown(win.x0Canvas), traj.frame_x0(pos - 1))
            assert f"step {pos}" in win.xtCanvas.caption and "σ=" in win.xtCanvas.caption
        else:
            assert shown(win.x0Canvas) is None
    win.mainView.scrubberBar.step(-1)
    assert win.scrubber.value() == 7
    assert win.exportButton.isEnabled()


def test_pause_step_once_and_stop(qtbot, win):
    win.panel.stepsSpin.setValue(200)
    win.runButton.click()
    win.pauseButton.click()
    worker = win.worker
    qtbot.waitUntil(lambda: win._live_traj is not None and worker.held.is_set())  # paused between two steps
    traj = win._live_traj
    n = len(traj)
    assert n < 200 and win.pauseButton.isChecked()
    win.stepOnceButton.click()
    win.stepOnceButton.click()
    qtbot.waitUntil(lambda: len(traj) == n + 2 and worker.held.is_set())  # two steps, then held again
    assert len(traj) == n + 2 and win.pauseButton.isChecked()  # stays paused
    with qtbot.waitSignal(win.runFinished, timeout=5000):
        win.stopButton.click()
    assert len(traj) == n + 2 and not traj.finished
    qtbot.waitUntil(lambda: not win.busy)
    assert win.runButton.isEnabled()


def test_stop_mid_run(qtbot, win):
    set_combo(win.panel.samplerCombo, "ddpm")
    win.panel.batchSpin.setValue(16)
    win.panel.stepsSpin.setValue(1000)
    win.runButton.click()
    qtbot.waitUntil(lambda: win._live_traj is not None and len(win._live_traj) >= 3, timeout=10000)
    with qtbot.waitSignal(win.runFinished, timeout=5000) as blocker:
        win.stop()
    traj = blocker.args[0]
    assert not traj.finished and 3 <= len(traj) < 1000
    assert "Stopped" in win.statusBar().currentMessage()


def test_branch(qtbot, win):
    parent = run(qtbot, win)
    win.scrubber.setValue(4)
    # same settings from step 4: an exact continuation reproduces the original run
    with qtbot.waitSignal(win.branchFinished, timeout=10000) as blocker:
        win.branchButton.click()
    same = blocker.args[0]
    assert same.recipe.branch["from_step"] == 3
    assert np.array_equal(same.frame_xt(len(same.xt) - 1), parent.frame_xt(8))
    # changed settings: euler for the rest
    win.panel.samplerCombo.setCurrentIndex(win.panel.samplerCombo.findData("euler"))
    win.panel.stepsSpin.setValue(5)
    qtbot.waitUntil(lambda: not win.busy)
    with qtbot.waitSignal(win.branchFinished, timeout=10000) as blocker:
        win.branchButton.click()
    other = blocker.args[0]
    assert other.recipe.sampler == "euler" and len(other) == 5 and other.finished
    views = win.branch_views()
    assert len(views) == 2 and win.branchTabs.isVisible()
    view = views[-1]
    assert np.array_equal(view.xtCanvas.frames, other.frame_xt(5))
    view.scrubber.setValue(0)  # the branch starts from the parent's state after step 4
    assert np.array_equal(view.xtCanvas.frames, parent.frame_xt(4))
    assert win.scrubber.value() == 4  # the original keeps its own scrubber
    # branch of a branch: the source is the view the user scrubbed last
    view.scrubberBar.step(+2)
    set_combo(win.panel.samplerCombo, "ddim")
    win.panel.stepsSpin.setValue(3)
    with qtbot.waitSignal(win.branchFinished, timeout=10000) as blocker:
        win.branchButton.click()
    nested = blocker.args[0]
    assert nested.recipe.branch["parent"]["sampler"] == "euler" and nested.recipe.branch["from_step"] == 1
    assert np.array_equal(nested.frame_xt(0), other.frame_xt(2))
    assert "of #2" in win.branchTabs.tabText(2)
    win.branchTabs.tabCloseRequested.emit(2)
    assert len(win.branch_views()) == 2


def test_compare(qtbot, win, tmp_path):
    win.compareButton.click()
    dlg = win.compareDialog
    qtbot.addWidget(dlg)
    dlg.rows[0].steps.setValue(4)
    dlg.rows[1].steps.setValue(6)
    for extra in dlg.rows[2:]:  # the default preset's other two rows
        dlg.remove_config(extra)
    row = dlg.add_config()
    row.sampler.setCurrentIndex(row.sampler.findData("dpmpp_2m"))
    row.steps.setValue(3)
    with qtbot.waitSignal(dlg.compareFinished, timeout=15000) as blocker:
        dlg.runButton.click()
    trajs = blocker.args[0]
    assert [len(t) for t in trajs] == [4, 6, 3]
    for t in trajs[1:]:  # same seed, same initial noise
        assert np.array_equal(t.frame_xt(0), trajs[0].frame_xt(0))
    dlg.slider.setValue(500)
    assert dlg.positions() == [2, 3, 2]
    assert np.array_equal(dlg.canvases[1].frames, trajs[1].frame_x0(2))
    grid = dlg.export_grid(tmp_path / "cmp.png")
    gif = dlg.export_gif(tmp_path / "cmp.gif")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 6
    with Image.open(grid) as im:
        assert "recipe" in im.text
    dlg.close()


def test_export_dialog_asks_before_overwrite(qtbot, win, tmp_path, monkeypatch):
    traj = run(qtbot, win)
    from studio.gui.export_dialog import ExportDialog

    dlg = ExportDialog(traj, win)
    qtbot.addWidget(dlg)
    dlg.folder.setText(str(tmp_path))
    dlg.kind.setCurrentIndex(dlg.kind.findData("gif"))
    dlg._save()
    gif = tmp_path / "run.gif"
    assert gif.exists() and (tmp_path / "run.gif.recipe.json").exists()
    before = gif.read_bytes()
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    dlg.which.setCurrentIndex(dlg.which.findData("xt"))
    dlg._save()
    assert asked and gif.read_bytes() == before
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dlg._save()
    assert gif.read_bytes() != before
    for kind in ("frames", "apng", "contact", "final"):
        dlg.kind.setCurrentIndex(dlg.kind.findData(kind))
        dlg._save()
        assert (tmp_path / dlg.name.text()).exists()
    mp4 = dlg.kind.model().item(dlg.kind.findData("mp4"))
    assert mp4.isEnabled() == ex.mp4_available()


def set_combo(combo, data):
    i = combo.findData(data)
    assert i >= 0, data
    combo.setCurrentIndex(i)


def test_recipe_round_trip(qtbot, win, tmp_path):
    p = win.panel
    set_combo(p.samplerCombo, "euler_a")
    p.stepsSpin.setValue(7)
    p.etaSpin.setValue(0.5)
    p.seedSpin.setValue(1234)
    p.batchSpin.setValue(3)
    set_combo(p.labelCombo, 2)
    set_combo(p.guidanceModeCombo, "cfg")
    p.guidanceSpin.setValue(4.5)
    assert p.guidanceSlider.value() == 45
    p.intervalStart.setValue(0.1)
    p.intervalEnd.setValue(0.8)
    p.karrasCheck.setChecked(True)
    set_combo(p.spacingCombo, "trailing")
    set_combo(p.x0Combo, "clip")
    p.epsCheck.setChecked(False)
    original = win.current_recipe()
    assert original.eps_from_x0 is False
    path = ex.export_recipe(original, tmp_path / "r.json")
    set_combo(p.samplerCombo, "ddpm")
    p.stepsSpin.setValue(3)
    p.seedSpin.setValue(1)
    set_combo(p.guidanceModeCombo, "none")
    set_combo(p.labelCombo, None)
    p.karrasCheck.setChecked(False)
    set_combo(p.x0Combo, None)
    p.epsCheck.setChecked(True)
    assert win.current_recipe() != original
    win.open_recipe(str(path))
    assert win.current_recipe() == original
    assert p.samplerCombo.currentData() == "euler_a" and p.seedSpin.value() == 1234
    assert not p.epsCheck.isChecked()
    assert p.labelCombo.currentData() == 2 and p.guidanceSlider.value() == 45
    # an exported PNG carries the recipe too
    traj = run(qtbot, win)
    png = ex.export_final(traj, tmp_path / "final.png")
    p.stepsSpin.setValue(20)
    win.open_path(str(png))
    assert win.current_recipe() == traj.recipe.replace(branch=None)


def test_bad_recipe_and_bad_model_folder(qtbot, win, tmp_path):
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with qtbot.waitSignal(win.modelFailed, timeout=10000) as blocker:
        win.open_path(str(bad))
    assert "config.json" in blocker.args[0]
    assert win.errorLabel.isVisible() and "broken-model" in win.errorLabel.text()
    assert "Traceback" not in win.errorLabel.text()
    assert win.model_spec == "gmm" and win.panel.modelPicker.currentData() == "gmm"
    (tmp_path / "junk.json").write_text("[1, 2]")
    win.open_recipe(str(tmp_path / "junk.json"))
    assert "recipe" in win.errorLabel.text()
    traj = run(qtbot, win)  # still usable
    assert traj.finished


def test_run_error_is_a_message(qtbot, win, monkeypatch):
    from studio.core.records import SamplingError
    from studio.gui import jobs

    def failing(*a, **k):
        raise SamplingError("the chain produced NaN or inf in x_t at step 3; lower the guidance scale")
        yield  # pragma: no cover

    monkeypatch.setattr(jobs, "run_job", failing)
    with qtbot.waitSignal(win.runFinished, timeout=5000):
        win.runButton.click()
    assert "NaN" in win.errorLabel.text() and win.errorLabel.isVisible()
    qtbot.waitUntil(lambda: not win.busy)
    monkeypatch.undo()
    assert run(qtbot, win).finished


def test_guidance_needs_label_and_eta_enabled(win):
    p = win.panel
    set_combo(p.samplerCombo, "ddpm")
    assert not p.etaSpin.isEnabled()
    set_combo(p.samplerCombo, "euler_a")
    assert p.etaSpin.isEnabled()
    set_combo(p.guidanceModeCombo, "classifier")
    assert p.labelCombo.currentData() == 0  # guidance picks a class
    p.guidanceSlider.setValue(70)
    assert p.guidanceSpin.value() == pytest.approx(7.0)


def test_settings_persist(qtbot, tmp_path):
    w = MainWindow(model="gmm")
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.summary is not None and not w.busy, timeout=15000)
    w.panel.stepsSpin.setValue(13)
    set_combo(w.panel.samplerCombo, "heun")
    w.close()
    w2 = MainWindow()
    qtbot.addWidget(w2)
    qtbot.waitUntil(lambda: w2.summary is not None, timeout=15000)
    assert w2.model_spec == "gmm"
    assert w2.panel.stepsSpin.value() == 13 and w2.panel.samplerCombo.currentData() == "heun"
    w2.close()


def test_keyboard_run_and_stop(qtbot, win):
    win.activateWindow()
    with qtbot.waitSignal(win.runFinished, timeout=10000):
        qtbot.keyClick(win, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not win.busy)
    qtbot.keyClick(win, Qt.Key.Key_Left)
    assert win.scrubber.value() == 7


CLOSE_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QSettings, QTimer
    from studio.gui.app import make_app
    app = make_app()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, sys.argv[1])
    from studio.gui import MainWindow
    w = MainWindow(model="gmm")
    w.show()
    def loaded(_):
        p = w.panel
        p.samplerCombo.setCurrentIndex(p.samplerCombo.findData("ddpm"))
        p.batchSpin.setValue(16)
        p.stepsSpin.setValue(1000)
        w.run()
        poll()
    def poll():
        if w._live_traj is not None and len(w._live_traj) >= 3:
            w.close()
        else:
            QTimer.singleShot(5, poll)
    w.modelLoaded.connect(loaded)
    QTimer.singleShot(30000, lambda: os._exit(3))
    app.exec()
    print("steps done:", len(w.trajectory) if w.trajectory is not None else 0)
""")


@pytest.mark.slow
def test_close_mid_run_exits_cleanly(tmp_path):
    script = tmp_path / "close.py"
    script.write_text(CLOSE_SCRIPT)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "s")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "QThread" not in r.stderr and "Traceback" not in r.stderr
    done = int(r.stdout.split("steps done:")[1])
    assert 0 < done < 1000


def test_each_guidance_mode_keeps_its_scale_starting_from_the_models_recommendation(win):
    from studio.core.model import ModelInfo

    p = win.panel
    info = ModelInfo("m", 8, 3, num_classes=3, null_label=3, has_classifier=True,
                     recommended_scales={"classifier": 100.0})
    p.set_model_info(info)
    modes = p.guidanceModeCombo

    def mode(m):
        modes.setCurrentIndex(modes.findData(m))
        return p.guidanceSpin.value()

    assert mode("none") == mode("none")
    assert mode("cfg") == 3.0  # no recommendation for cfg: the default w = 3
    p.guidanceSpin.setValue(5.0)
    assert mode("classifier") == 100.0  # the model's recommendation
    assert p.recipe().scale == 100.0
    p.guidanceSpin.setValue(60.0)
    assert mode("cfg") == 5.0 and mode("none") == 5.0
    assert mode("classifier") == 60.0  # remembered per mode
    p.set_model_info(ModelInfo("other", 8, 3, num_classes=3, null_label=3, has_classifier=True))
    assert mode("cfg") == 3.0 and mode("classifier") == 1.0  # a new model: its own defaults
