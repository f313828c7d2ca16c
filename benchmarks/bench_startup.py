"""Figure 7: start-up time of the studio window, and time to the first frame of a run.

Each measurement is a fresh subprocess (``sys.executable -c …``, ``QT_QPA_PLATFORM=offscreen``, settings
redirected to a temp folder). The parent passes its ``time.time()`` just before starting the child; the
child prints wall-clock marks (``time.time()``) relative to it, so the figures include interpreter
start-up and every import:

* ``shown``: the main window's first ``Show`` event (``MainWindow(model=...)`` + ``show()``; the
  model still loads on the worker thread, as in the real app).
* ``loaded``: ``modelLoaded`` fired (the Run button is usable).
* ``first_frame``: Run pressed as soon as the model is loaded; the first paint of ``xtCanvas`` that
  shows a frame of the run (``frames`` not None).

Baseline (interleaved, baseline then studio, per repeat): ``QApplication([])`` + ``QWidget().show()``
in a fresh interpreter, up to its first ``Show`` event. Reported: medians and the median per-pair ratio.
The default model is ``default`` (the shipped digits UNet when present, else the exact gmm).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BASELINE = r"""
import sys, time
T0 = float(sys.argv[1])
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication([])
w = QWidget()
class F(QObject):
    def eventFilter(self, o, e):
        if e.type() == QEvent.Type.Show:
            print("MARK shown", time.time() - T0, flush=True)
            QTimer.singleShot(0, app.quit)
        return False
f = F(); w.installEventFilter(f)
w.show()
app.exec()
"""

STUDIO = r"""
import sys, time
T0 = float(sys.argv[1]); MODEL = sys.argv[2]; SETTINGS = sys.argv[3]; FIRST_FRAME = sys.argv[4] == "1"
def mark(name):
    print("MARK", name, time.time() - T0, flush=True)
from PySide6.QtCore import QEvent, QObject, QSettings, QStandardPaths, QTimer
QStandardPaths.setTestModeEnabled(True)
QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, SETTINGS)
from studio.gui.app import make_app
app = make_app(["studio"])
from studio.gui.main_window import MainWindow
w = MainWindow(model=MODEL)
state = {"shown": False, "running": False}
class F(QObject):
    def eventFilter(self, o, e):
        t = e.type()
        if o is w and t == QEvent.Type.Show and not state["shown"]:
            state["shown"] = True
            mark("shown")
            if not FIRST_FRAME:
                QTimer.singleShot(0, app.quit)
        return False
f = F(); w.installEventFilter(f)
orig = w.xtCanvas.paintEvent
def paint(ev):
    orig(ev)
    if state["running"] and w.xtCanvas.frames is not None:
        mark("first_frame")
        state["running"] = False
        w.shutdown()
        QTimer.singleShot(0, app.quit)
w.xtCanvas.paintEvent = paint
def loaded(summary):
    mark("loaded")
    print("MODEL", summary.info.name, summary.info.sample_size, flush=True)
    if FIRST_FRAME:
        state["running"] = True
        w.runButton.click()
w.modelLoaded.connect(loaded)
w.modelFailed.connect(lambda msg: (print("FAILED", msg, flush=True), app.exit(2)))
w.show()
QTimer.singleShot(300000, lambda: app.exit(3))
rc = app.exec()
sys.exit(rc)
"""


def _child(code: str, *args: str, timeout: float = 300.0) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", code, repr(t0), *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    wall = time.time() - t0
    marks, info = {}, {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["MARK"]:
            marks[parts[1]] = float(parts[2])
        elif parts[:1] == ["MODEL"]:
            info = {"model": parts[1], "size": int(parts[2])}
    if p.returncode != 0 or not marks:
        raise RuntimeError(f"child failed (rc {p.returncode}): {p.stdout[-500:]} {p.stderr[-1500:]}")
    return {"marks": marks, "wall_s": wall, **info}


def run(quick: bool = False, model: str = "default") -> dict:
    from .common import machine

    repeats = 2 if quick else 5
    base, shown, first = [], [], []
    info = {}
    with tempfile.TemporaryDirectory(prefix="studio-bench-startup-") as settings:
        _child(BASELINE)  # warm the OS file cache for both
        _child(STUDIO, model, settings, "1")
        for _ in range(repeats):
            base.append(_child(BASELINE)["marks"]["shown"])
            r = _child(STUDIO, model, settings, "0")
            shown.append(r["marks"]["shown"])
            r = _child(STUDIO, model, settings, "1")
            first.append(r["marks"])
            info = {"model": r.get("model"), "sample_size": r.get("size")}
    b = statistics.median(base)
    s = statistics.median(shown)
    ff = statistics.median(m["first_frame"] for m in first)
    return {
        "machine": machine(), "repeats": repeats, "model_spec": model, **info,
        "baseline_shown_s": b,
        "studio_shown_s": s,
        "shown_ratio": statistics.median(x / y for x, y in zip(shown, base)),
        "studio_loaded_s": statistics.median(m["loaded"] for m in first),
        "studio_first_frame_s": ff,
        "first_frame_ratio": statistics.median(m["first_frame"] / y for m, y in zip(first, base)),
        "first_frame_after_loaded_s": statistics.median(m["first_frame"] - m["loaded"] for m in first),
        "raw": {"baseline_shown_s": base, "studio_shown_s": shown, "first_frame_marks": first},
    }


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(run(quick="--quick" in sys.argv, model=args[0] if args else "default"), indent=2))
