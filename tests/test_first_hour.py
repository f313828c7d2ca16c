"""A new user's first hour: the window fits a laptop screen, exported text has its glyphs, the plots
say what they show, Help lists every shortcut, the export dialog says what it exports, the README
puts the Linux needs first."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PIL import Image, ImageDraw  # noqa: E402
from PySide6.QtGui import QAction, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QMessageBox, QToolButton  # noqa: E402

from _gui import open_window, run, temp_settings  # noqa: E402,F401
from studio.session import compose  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def win(qtbot):
    return open_window(qtbot, steps=6)


# -- fitting the screen -----------------------------------------------------------------------------
def test_the_window_fits_1280x800_and_1366x768_screens(qtbot, win):
    hint = win.minimumSizeHint().expandedTo(win.minimumSize())
    assert hint.width() <= 1280 and hint.height() <= 760, hint
    buttons = [win.runButton, win.pauseButton, win.stepOnceButton, win.stopButton, win.branchButton,
               win.compareButton, win.exportButton]
    for w, h in ((1280, 760), (1366, 728)):  # the screen less a panel or task bar
        win.resize(w, h)
        qtbot.waitUntil(lambda: (win.width(), win.height()) == (w, h))
        assert all(b.isVisible() for b in buttons), [b.objectName() for b in buttons if not b.isVisible()]
        assert win.panel.parentWidget().parentWidget().objectName() == "panelScroll"  # the panel scrolls


def test_a_narrower_window_moves_buttons_into_the_toolbars_overflow(qtbot, win):
    width = max(win.minimumSizeHint().width(), 760)
    win.resize(width, 700)
    qtbot.waitUntil(lambda: (win.width(), win.height()) == (width, 700))
    assert win.width() < 1000
    ext = [b for b in win.runToolBar.findChildren(QToolButton) if b.objectName() == "qt_toolbar_ext_button"]
    assert ext and ext[0].isVisible()  # the » button: Export is one click away, not cut off
    assert not win.exportButton.isVisible()


# -- glyphs in exported captions ----------------------------------------------------------------------
def _render(text: str, font) -> np.ndarray:
    im = Image.new("L", (80, 40), 0)
    ImageDraw.Draw(im).text((6, 6), text, fill=255, font=font)
    return np.asarray(im)


def test_captions_draw_greek_letters_subscripts_and_the_hat():
    font = compose._font(16)
    missing = _render("\U0010ffff", font)  # a code point no font has: its .notdef box
    assert missing.any()
    for ch in ("η", "σ", "ᾱ", "ε", "₀", "\u0302", "x", "t"):
        glyph = _render(ch, font)
        assert glyph.any() and not np.array_equal(glyph, missing), f"{ch!r} is drawn as a box"
    assert not np.array_equal(_render("x̂₀", font), _render("x₀", font))  # the combining hat is drawn
    img = np.zeros((20, 60, 3), np.uint8)
    assert not np.array_equal(compose.captioned(img, "η σ ᾱ x̂₀"), compose.captioned(img, "\U0010ffff" * 4))


# -- plots, scrubber, help ------------------------------------------------------------------------------
def test_the_plots_name_the_run_they_follow(qtbot, win):
    traj = run(qtbot, win)
    assert "main run" in win.schedulePlot.title.text() and "main run" in win.guidancePlot.title.text()
    assert traj.recipe.guidance == "none" and win.guidancePlot.note.toPlainText() == "no guidance in this run"
    win.scrubber.setValue(3)
    win.panel.labelCombo.setCurrentIndex(win.panel.labelCombo.findData(1))
    win.panel.guidanceModeCombo.setCurrentIndex(win.panel.guidanceModeCombo.findData("cfg"))
    with qtbot.waitSignal(win.branchFinished, timeout=15000):
        win.branchButton.click()
    qtbot.waitUntil(lambda: not win.busy)
    assert "branch #1" in win.schedulePlot.title.text() and "branch #1" in win.guidancePlot.title.text()
    steps, scales = win.guidancePlot.curve.getData()
    assert len(steps) == len(win.branch_views()[0].traj) and win.guidancePlot.note.toPlainText() == ""
    win.mainView.scrubberBar.step(-1)  # back to the main run: the plots follow it
    assert "main run" in win.schedulePlot.title.text()


def test_help_lists_every_shortcut_the_window_has(qtbot, win, monkeypatch):
    actual = {seq.toString(QKeySequence.SequenceFormat.NativeText)
              for a in win.findChildren(QAction) for seq in a.shortcuts()}
    listed = dict(win.shortcuts())
    assert actual <= set(listed)
    for keys in ("Ctrl+K", "Home", "End", "Ctrl+Right", "Space", "Ctrl+R", "Esc", "Ctrl+E"):
        assert keys in listed, keys
    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: shown.append(text))
    help_action = next(a for a in win.findChildren(QAction) if a.text() == "Keyboard shortcuts")
    help_action.trigger()
    assert shown and all(f"<b>{keys}</b>" in shown[0] for keys in listed)


# -- the export dialog ------------------------------------------------------------------------------------
def test_the_export_dialog_says_what_it_exports_creates_folders_and_asks_once(qtbot, win, tmp_path, monkeypatch):
    from studio.gui.export_dialog import ExportDialog

    traj = run(qtbot, win)
    dlg = ExportDialog(traj, win, source="main run (ddim)")
    qtbot.addWidget(dlg)
    assert "main run" in dlg.what.text() and "all 6 steps" in dlg.what.text()
    dlg.folder.setText(str(tmp_path / "new" / "folder"))
    dlg.kind.setCurrentIndex(dlg.kind.findData("gif"))
    assert "GIF has no place for the recipe" in dlg.note.text() and "Every PNG" not in dlg.note.text()
    dlg._save()
    gif = tmp_path / "new" / "folder" / "run.gif"
    assert gif.exists() and gif.with_name("run.gif.recipe.json").exists()
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda parent, title, text, *a: asked.append(text) or QMessageBox.StandardButton.Yes)
    dlg._save()
    assert len(asked) == 1 and "run.gif\n" in asked[0] and "run.gif.recipe.json" in asked[0]
    # from the main window: the dialog names the run the user looked at
    opened = []
    monkeypatch.setattr(ExportDialog, "open", lambda self: opened.append(self))
    win.export_dialog()
    assert opened and "main run" in opened[0].what.text()


# -- README ------------------------------------------------------------------------------------------
def test_readme_puts_the_linux_needs_before_the_two_commands():
    text = README.read_text()
    setup = text.index("## Set-up")
    assert setup < text.index("libxcb-cursor0", setup) < text.index("xvfb-run", setup) < text.index("pip install", setup)
    assert "x0/000k.png" in text and "x0_0001.png" in text and "256 px" in text


def test_compare_dialog_rows_stay_compact_and_x0_captions_use_the_windows_t(qtbot, win):
    win.compare()
    dlg = win.compareDialog
    qtbot.addWidget(dlg)
    dlg.resize(1000, 640)
    with qtbot.waitExposed(dlg):
        dlg.show()
    assert dlg.placeholder.isVisible()
    for row in dlg.rows:  # not stretched over the empty window
        assert row.height() <= row.sizeHint().height() + 8, (row.height(), row.sizeHint())
    with qtbot.waitSignal(dlg.compareFinished, timeout=20000):
        dlg.runButton.click()
    assert not dlg.placeholder.isVisible()
    dlg.slider.setValue(500)  # half-way through each run
    traj = dlg.trajs[0]
    pos = max(compose.at_fraction(traj, 0.5), 1)
    m = traj.meta[pos - 1]
    from studio.gui.view import x0_caption

    t = f"t={compose.format_t(m.t)} "
    assert t in dlg.canvases[0].caption + " " and t in x0_caption(traj, pos)  # the t the x̂₀ was predicted at
    dlg.close()


# -- the first minutes: errors that stay, Run during a load, the first window on a laptop -------------------
def test_an_error_at_launch_stays_after_the_model_opens(qtbot, tmp_path):
    """`studio-gui bad.png`: the model load that finishes later does not hide why the file did not open; the
    user's next action (Run) does."""
    from studio.gui import MainWindow

    bad = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(bad)
    w = MainWindow(model="gmm")
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.modelLoaded, timeout=15000):
        w.open_recipe(str(bad))
        assert w.errorLabel.isVisible()
    message = w.errorLabel.text()
    assert w.errorLabel.isVisible() and "photo.png" in message
    w.panel.stepsSpin.setValue(2)
    run(qtbot, w)
    assert not w.errorLabel.isVisible()


def test_run_pressed_during_a_load_starts_when_the_last_load_finishes(qtbot):
    """Run pressed while the model loads is queued; a second load requested meanwhile (a recipe opened at
    launch, another model picked) replaces the first quietly, and the run starts once it is open."""
    from studio.gui import MainWindow

    w = MainWindow(model="gmm")
    qtbot.addWidget(w)
    w.show()
    w.panel.stepsSpin.setValue(2)
    w.panel.batchSpin.setValue(1)
    w.runButton.click()  # during the load
    assert w._queued_run and "as soon as the model is open" in w.statusBar().currentMessage()
    errors = []
    w.errorShown.connect(errors.append)
    with qtbot.waitSignal(w.runFinished, timeout=60000) as blocker:
        w.load_model("default")
    assert blocker.args[0].finished and blocker.args[0].recipe.model == "default"
    assert w.summary.spec == "default" and errors == []  # the replaced load is no failure


def test_the_first_window_is_sized_from_the_screens_available_area(qtbot):
    from PySide6.QtCore import QRect

    from studio.gui import MainWindow
    from studio.gui.main_window import FRAME_ALLOWANCE, PREFERRED_SIZE, TITLE_BAR, first_geometry

    laptop = QRect(0, 0, 1366, 768)
    g = first_geometry(laptop)
    assert g.top() >= TITLE_BAR and g.bottom() + FRAME_ALLOWANCE.height() - TITLE_BAR <= laptop.bottom()
    assert laptop.contains(g) and g.width() <= 1366 - FRAME_ALLOWANCE.width()
    assert first_geometry(QRect(0, 0, 2560, 1440)).size() == PREFERRED_SIZE  # room enough: the preferred size
    docked = first_geometry(QRect(0, 32, 1366, 736))  # a top panel
    assert docked.top() >= 32 + TITLE_BAR and docked.height() == 736 - FRAME_ALLOWANCE.height()
    w = MainWindow(model="gmm")  # no saved geometry: the screen's available area decides
    qtbot.addWidget(w)
    assert w.geometry() == first_geometry(w.screen().availableGeometry())
    qtbot.waitUntil(lambda: not w.busy, timeout=15000)


def test_the_conditioning_panel_of_a_text_model_fits_a_1366x768_laptop(qtbot):
    """On a 1366×768 screen, with the built-in text model, every conditioning control (prompt to preview)
    is visible without scrolling the panel."""
    from PySide6.QtCore import QRect
    from PySide6.QtWidgets import QScrollArea

    from studio.core.loading import TEXT_MODEL_DIR
    from studio.gui import MainWindow
    from studio.gui.main_window import first_geometry

    if not (TEXT_MODEL_DIR / "model_index.json").exists():
        pytest.skip("the built-in text model is not in this checkout")
    w = MainWindow(model="digits-text")
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.modelLoaded, timeout=60000):
        w.show()
    size = first_geometry(QRect(0, 0, 1366, 768)).size()
    w.resize(size)
    qtbot.waitUntil(lambda: w.size() == size)
    scroll = w.findChild(QScrollArea, "panelScroll")
    qtbot.waitUntil(lambda: scroll.verticalScrollBar().maximum() == 0, timeout=5000)
    p = w.panel
    for control in (p.promptEdit, p.negativeEdit, p.guidanceSpin, p.intervalEnd, p.rescaleSpin, p.previewCombo):
        bottom = control.mapTo(scroll.viewport(), control.rect().bottomLeft()).y()
        assert control.isVisible() and bottom <= scroll.viewport().height(), control.objectName()
    qtbot.waitUntil(lambda: not w.busy)
