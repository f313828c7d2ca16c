"""Shared set-up of the window tests: temporary settings and a window opened on gmm."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, QStandardPaths  # noqa: E402


@pytest.fixture(autouse=True)
def temp_settings(tmp_path):
    QStandardPaths.setTestModeEnabled(True)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield


def open_window(qtbot, steps: int, batch: int = 2):
    """A MainWindow on gmm, shown, model loaded, with few steps so runs are quick."""
    from studio.gui import MainWindow

    w = MainWindow(model="gmm")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.summary is not None and not w.busy, timeout=15000)
    w.panel.stepsSpin.setValue(steps)
    w.panel.batchSpin.setValue(batch)
    return w
