"""The studio window with a real diffusers model folder, loading state, drag and drop, keyboard, device errors."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from studio.gui import MainWindow  # noqa: E402

from _gui import open_window, run, temp_settings  # noqa: E402,F401


@pytest.fixture
def win(qtbot):
    return open_window(qtbot, steps=6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    folder = tmp_path_factory.mktemp("models") / "tiny-unet"
    unet.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_window_shows_before_the_model_loads(qtbot):
    w = MainWindow(model="gmm")
    qtbot.addWidget(w)
    w.show()
    assert w.summary is None and w.loadBar.isVisibleTo(w)
    w.panel.stepsSpin.setValue(3)
    with qtbot.waitSignal(w.runFinished, timeout=15000) as blocker:
        w.runButton.click()  # queued until the model is open
    assert w.summary is not None and not w.loadBar.isVisibleTo(w)
    assert blocker.args[0].finished and len(blocker.args[0]) == 3


def test_open_model_folder_by_drop(qtbot, win, tiny_model):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_model))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(win.modelLoaded, timeout=30000) as blocker:
        win.dropEvent(event)
    assert blocker.args[0].info.sample_size == 8
    assert win.panel.modelPicker.currentData() == str(tiny_model)
    assert not win.panel.labelCombo.isEnabled()  # unconditional model
    assert str(tiny_model) in win._recent()
    with qtbot.waitSignal(win.runFinished, timeout=20000) as blocker:
        win.runButton.click()
    traj = blocker.args[0]
    assert traj.finished and traj.recipe.model == str(tiny_model)
    assert win.xtCanvas.frames.shape == (2, 8, 8, 3)
    qtbot.waitUntil(lambda: not win.busy)
    # the recent list survives a restart and the picker switches back to a built-in
    win.close()
    w2 = MainWindow(model="gmm")
    qtbot.addWidget(w2)
    qtbot.waitUntil(lambda: w2.summary is not None, timeout=15000)
    picker = w2.panel.modelPicker
    assert picker.findData(str(tiny_model)) >= 0
    w2.close()


def test_space_plays_the_trajectory(qtbot, win):
    run(qtbot, win, timeout=10000)
    win.scrubber.setValue(0)
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_Space)
    assert win.mainView.scrubberBar.playing
    qtbot.waitUntil(lambda: win.scrubber.value() == 6, timeout=5000)
    qtbot.waitUntil(lambda: not win.mainView.scrubberBar.playing, timeout=2000)


def test_scrubber_follows_until_grabbed(qtbot, win):
    win.panel.stepsSpin.setValue(300)
    win.runButton.click()
    win.pauseButton.click()
    worker = win.worker
    qtbot.waitUntil(lambda: win._live_traj is not None and worker.held.is_set())  # paused between two steps
    traj = win._live_traj
    n = len(traj)
    win.stepOnceButton.click()
    qtbot.waitUntil(lambda: len(traj) == n + 1 and worker.held.is_set())  # one step, then held again
    qtbot.waitUntil(lambda: win.scrubber.value() == len(traj))  # following the newest step
    win.mainView.scrubberBar.step(-1)  # the user takes over
    held = win.scrubber.value()
    for _ in range(5):
        win.stepOnceButton.click()
    qtbot.waitUntil(lambda: len(traj) == held + 6 and worker.held.is_set()
                    and win.mainView.scrubberBar.available == len(traj))  # made, paused, and shown
    # the slider spans the planned 300 steps; the handle can reach only what has been computed
    assert win.scrubber.value() == held and win.scrubber.maximum() == 300
    assert win.mainView.scrubberBar.available == len(traj)
    assert np.array_equal(win.xtCanvas.frames, traj.frame_xt(held))
    win.scrubber.setValue(250)
    assert win.scrubber.value() == len(traj)
    with qtbot.waitSignal(win.runFinished, timeout=5000):
        win.stop()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_keeps_the_model(qtbot, win):
    p = win.panel
    p.deviceCombo.setCurrentIndex(p.deviceCombo.findData("cuda"))
    with qtbot.waitSignal(win.modelFailed, timeout=10000) as blocker:
        win._device_changed()
    assert "cuda" in blocker.args[0].lower()
    assert p.deviceCombo.currentData() == "auto" and win.model_spec == "gmm"
    with qtbot.waitSignal(win.runFinished, timeout=10000):
        win.runButton.click()


def test_gui_modules_do_no_torch_maths():
    """The window only shows uint8 frames; torch stays in studio.core / studio.session (and the worker's jobs)."""
    from pathlib import Path

    import studio.gui

    for path in Path(studio.gui.__file__).parent.glob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert "import torch" not in src, path.name


def test_canvas_zoom_is_an_integer_factor(qtbot):
    from studio.gui.canvas import ImageCanvas, fit_scale

    assert fit_scale(35, 35, 300, 200) == 5.0
    assert fit_scale(300, 300, 200, 200) == 0.5
    c = ImageCanvas("x")
    qtbot.addWidget(c)
    c.resize(400, 300)
    c.set_frames(np.zeros((4, 16, 16, 3), np.uint8))
    c.show()
    qtbot.waitExposed(c)
    c.grab()
    assert c.scale == int(c.scale) and c.scale >= 1
    assert c.image().shape == (35, 35, 3)


def test_canvas_hover_and_solo(qtbot):
    from PySide6.QtCore import QPoint

    from studio.gui.view import TrajectoryView

    v = TrajectoryView()
    qtbot.addWidget(v)
    v.resize(800, 500)
    v.show()
    qtbot.waitExposed(v)
    frames = np.arange(4 * 16 * 16 * 3, dtype=np.uint32).reshape(4, 16, 16, 3).astype(np.uint8)
    c = v.xtCanvas
    c.set_frames(frames)
    c.grab()
    r = c._drawn
    cell = r.width() / c.image().shape[1]
    # the middle of sample 3 (bottom right of a 2x2 grid), pixel (5, 7)
    x = r.x() + (1 + 16 + 1 + 5 + 0.5) * cell
    y = r.y() + (1 + 16 + 1 + 7 + 0.5) * cell
    assert c.sample_at(x, y) == (3, 7, 5)
    qtbot.mouseDClick(c, Qt.MouseButton.LeftButton, pos=QPoint(int(x), int(y)))
    assert c.solo == 3 and v.x0Canvas.solo == 3
    assert c.image().shape == (18, 18, 3) and np.array_equal(c.image()[1:17, 1:17], frames[3])
    assert np.array_equal(c.frames, frames)  # the data stays the whole batch
    qtbot.mouseDClick(c, Qt.MouseButton.LeftButton, pos=QPoint(int(x), int(y)))
    assert c.solo is None and v.x0Canvas.solo is None
