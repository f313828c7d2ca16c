"""Make the README's screenshots under a real X server::

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py docs/screenshot.png
    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py --text docs/screenshot_text.png

The first: the window on the default model after a DDIM 30-step CFG run of the digit 3, scrubbed back to
step 14 (x_t still noisy, x̂₀ already a 3). With ``--text``: the built-in text-to-image model after a DDIM
30-step run of "a red 7 on a blue background" with "green" as the negative prompt, CFG w = 3, scrubbed back
to step 12 and left there until its full VAE decode is shown.

Settings go to a temporary file, so your own window settings are neither used nor changed.
"""
from __future__ import annotations

import sys
import tempfile
import time


def main(out: str, text: bool = False) -> int:
    from PySide6.QtCore import QSettings

    from studio.gui.app import make_app

    app = make_app(["studio"])
    from studio.gui.full_decode import shared_decoder
    from studio.gui.main_window import MainWindow

    def pump(until=lambda: False, seconds: float = 0.6) -> None:
        end = time.time() + seconds
        while not until() and time.time() < end:
            app.processEvents()
            time.sleep(0.01)

    settings = QSettings(tempfile.mkdtemp() + "/settings.ini", QSettings.Format.IniFormat)
    w = MainWindow(model="digits-text" if text else "default", settings=settings)
    w.resize(1280, 820)
    w.show()
    pump(lambda: w.summary is not None, 300)
    p = w.panel
    p.stepsSpin.setValue(30)
    p.batchSpin.setValue(9)
    p.seedSpin.setValue(3)
    if text:
        p.promptEdit.setText("a red 7 on a blue background")
        p.negativeEdit.setText("green")
    else:
        p.labelCombo.setCurrentIndex(p.labelCombo.findData(3))
    p.guidanceModeCombo.setCurrentIndex(p.guidanceModeCombo.findData("cfg"))
    p.guidanceSpin.setValue(3.0)
    w.run()
    pump(lambda: not w.busy, 300)
    w.mainView.scrubberBar.set_position(12 if text else 14)
    if text:  # the settled position gets its full decode
        pump(seconds=1.0)
        shared_decoder().idle()
        pump(lambda: "full VAE decode" in w.mainView.x0Canvas.caption, 10)
    w.statusBar().clearMessage()  # its run time depends on the machine, not on the studio
    pump()
    w.grab().save(out)
    w.shutdown()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--text"]
    if len(args) != 1:
        raise SystemExit("usage: make_screenshot.py [--text] OUT.png")
    raise SystemExit(main(args[0], text="--text" in sys.argv))
