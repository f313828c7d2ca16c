"""The Qt binding must not leak or steal references: PySide6 6.12.0 on Python 3.11 drops a reference to
None on every call of a method returning void, which aborts the studio after a minute of streaming."""
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402


def test_void_qt_calls_keep_the_reference_count_of_none():
    app = QApplication.instance() or QApplication([])
    w = QWidget()
    before = sys.getrefcount(None)
    for _ in range(1000):
        w.setToolTip("x")
    lost = before - sys.getrefcount(None)
    assert abs(lost) < 50, f"{lost} references to None lost in 1000 calls"
    assert app is not None
