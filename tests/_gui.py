"""Shared set-up of the window tests: temporary settings, a window opened on gmm, a run to its end."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, QStandardPaths  # noqa: E402


@pytest.fixture(autouse=True)
def temp_settings(tmp_path):
    QStandardPaths.setTestModeEnabled(True)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield


def open_window(qtbot, steps: int, batch: int = 2, model: str = "gmm", timeout: int = 15000):
    """A MainWindow on ``model`` (gmm), shown, model loaded, with few steps so runs are quick. A text model
    previews linearly, whatever this machine's timing chose by default (test_the_default_preview_*)."""
    from studio.gui import MainWindow

    w = MainWindow(model=model)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.summary is not None and not w.busy, timeout=timeout)
    if w.panel.is_text:
        w.panel.previewCombo.setCurrentIndex(w.panel.previewCombo.findData("linear"))
    w.panel.stepsSpin.setValue(steps)
    w.panel.batchSpin.setValue(batch)
    return w


def run(qtbot, w, timeout=15000):
    """Click Run and wait for the run to finish and the window to be idle again; the trajectory."""
    with qtbot.waitSignal(w.runFinished, timeout=timeout) as blocker:
        w.runButton.click()
    qtbot.waitUntil(lambda: not w.busy)
    return blocker.args[0]
