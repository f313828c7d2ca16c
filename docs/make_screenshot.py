"""Make docs/screenshot.png: the window on the default model, a finished DDIM 30-step CFG run of the digit 3,

scrubbed back to step 14 (x_t still noisy, x̂₀ already a 3). Run under a real X server::

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py docs/screenshot.png

Settings go to a temporary file, so your own window settings are neither used nor changed.
"""
import sys, time, tempfile
from PySide6.QtCore import QSettings
from studio.gui.app import make_app
app = make_app(["studio"])
from studio.gui.main_window import MainWindow
s = QSettings(tempfile.mkdtemp() + "/s.ini", QSettings.Format.IniFormat)
if len(sys.argv) != 2:
    raise SystemExit("usage: make_screenshot.py OUT.png")
w = MainWindow(model="default", settings=s); w.resize(1280, 820); w.show()
def wait(cond, t=300):
    end = time.time() + t
    while not cond() and time.time() < end:
        app.processEvents(); time.sleep(0.01)
wait(lambda: w.summary is not None)
p = w.panel
p.stepsSpin.setValue(30); p.batchSpin.setValue(9); p.seedSpin.setValue(3)
p.labelCombo.setCurrentIndex(p.labelCombo.findData(3))
p.guidanceModeCombo.setCurrentIndex(p.guidanceModeCombo.findData("cfg")); p.guidanceSpin.setValue(3.0)
w.run()
wait(lambda: not w.busy)
w.mainView.scrubberBar.set_position(14)
for _ in range(60): app.processEvents(); time.sleep(0.01)
w.statusBar().clearMessage()
for _ in range(10): app.processEvents(); time.sleep(0.01)
w.grab().save(sys.argv[1]); print("saved")
w.shutdown()
