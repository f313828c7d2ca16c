"""Make the README's screenshots under a real X server::

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py docs/screenshot.png
    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py --text docs/screenshot_text.png
    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshot.py --forward docs/screenshot_forward.png

The first: the window on the default model after a DDIM 30-step CFG run of the digit 3, scrubbed back to
step 14 (x_t still noisy, x̂₀ already a 3). With ``--text``: the built-in text-to-image model after a DDIM
30-step run of "a red 7 on a blue background" with "green" as the negative prompt, CFG w = 3, with attention
maps kept and the token "7"'s map over x_t and x̂₀, scrubbed back to step 12 and left there until its full
VAE decode is shown. With ``--forward``: the default model's forward view of a rendered 3 (CFG w = 3,
label 3), every position of the error plot computed, scrubbed to t = 600, and the image-to-image run
"Denoise from here" starts there, in the main view at its step 8.

Settings go to a temporary file, so your own window settings are neither used nor changed.
"""
from __future__ import annotations

import sys
import tempfile
import time


def pumper(app):
    """pump(until, seconds): process the window's events until ``until()`` or ``seconds`` have passed."""
    def pump(until=lambda: False, seconds: float = 0.6) -> None:
        end = time.time() + seconds
        while not until() and time.time() < end:
            app.processEvents()
            time.sleep(0.01)
    return pump


def forward(out: str) -> int:
    """The forward view: a rendered digit opened as an image on the default model."""
    import numpy as np
    from PIL import Image
    from PySide6.QtCore import QSettings

    from studio.data.digits import render_digit
    from studio.gui.app import make_app
    from studio.session.forward_view import FILL_POINTS
    from studio.gui.main_window import MainWindow

    app = make_app(["studio"])
    pump = pumper(app)

    folder = tempfile.mkdtemp()
    image = f"{folder}/three.png"
    Image.fromarray(render_digit(3, np.random.default_rng(7))).resize((128, 128), Image.NEAREST).save(image)
    settings = QSettings(folder + "/settings.ini", QSettings.Format.IniFormat)
    w = MainWindow(model="default", settings=settings)
    w.resize(1366, 820)
    w.show()
    pump(lambda: w.summary is not None, 300)
    p = w.panel
    p.labelCombo.setCurrentIndex(p.labelCombo.findData(3))
    p.guidanceModeCombo.setCurrentIndex(p.guidanceModeCombo.findData("cfg"))
    p.guidanceSpin.setValue(3.0)
    fv = w.forwardPanel
    w.open_image(image)
    pump(lambda: fv.view is not None, 60)
    fv.compute_all()

    def points() -> int:
        xs = fv.errorPlot.curve.getData()[0]
        return 0 if xs is None else len(xs)

    pump(lambda: points() >= FILL_POINTS, 120)
    fv.set_t(600)
    pump(lambda: fv.view.cached(600) is not None, 30)
    fv.denoise_from_here()  # an image-to-image run from t = 600 in the main view
    pump(lambda: w.busy, 10)
    pump(lambda: not w.busy, 300)
    w.mainView.scrubberBar.set_position(8)
    pump(seconds=1.0)
    w.statusBar().clearMessage()
    w.grab().save(out)
    w.shutdown()
    print(f"wrote {out}")
    return 0


def main(out: str, text: bool = False) -> int:
    from PySide6.QtCore import QSettings

    from studio.gui.app import make_app

    app = make_app(["studio"])
    pump = pumper(app)
    from studio.gui.full_decode import shared_decoder
    from studio.gui.main_window import MainWindow

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
        p.attentionCheck.setChecked(True)  # the run keeps its cross-attention maps: the token strip shows them
    else:
        p.labelCombo.setCurrentIndex(p.labelCombo.findData(3))
    p.guidanceModeCombo.setCurrentIndex(p.guidanceModeCombo.findData("cfg"))
    p.guidanceSpin.setValue(3.0)
    w.run()
    pump(lambda: not w.busy, 300)
    w.mainView.scrubberBar.set_position(12 if text else 14)
    if text:  # the token "7" overlays its map; the settled position gets its full decode
        strip = w.mainView.attentionStrip
        strip.select(strip.maps.tokens.index("7"))
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
    args = [a for a in sys.argv[1:] if a not in ("--text", "--forward")]
    if len(args) != 1:
        raise SystemExit("usage: make_screenshot.py [--text | --forward] OUT.png")
    if "--forward" in sys.argv:
        raise SystemExit(forward(args[0]))
    raise SystemExit(main(args[0], text="--text" in sys.argv))
