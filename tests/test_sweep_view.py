"""File → Open sweep: a gmm sweep's grid as a table of thumbnails with its metric, axes chosen in the
dialog, and a double-clicked cell recomputed in the main window to the very image the sweep made."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QAction  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401
from studio.sweep.cells import read_arrays  # noqa: E402
from studio.sweep.driver import run_sweep  # noqa: E402
from studio.sweep.spec import load_spec  # noqa: E402

SPEC = """\
title = "gmm grid for the window"
model = "gmm"
reference_steps = 30

[fixed]
batch = 2
guidance = "cfg"

[axes]
sampler = ["ddim", "euler"]
steps = [4, 8, 12]
label = [1, 3]
seeds = [0, 1]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    (folder / "grid.toml").write_text(SPEC)
    spec = load_spec(folder / "grid.toml")
    with open(os.devnull, "w") as quiet:
        run_sweep(spec, folder / "out", workers=1, stream=quiet)
    return spec, folder / "out"


@pytest.mark.slow
def test_the_grid_its_metric_and_a_double_clicked_cell_run_in_the_window(qtbot, sweep):
    from studio.gui.sweep_view import SweepDialog, open_sweep

    spec, out = sweep
    win = open_window(qtbot, steps=5)
    assert any(a.text() == "Open sweep…" for a in win.findChildren(QAction))
    dialog = open_sweep(win, str(out))
    qtbot.addWidget(dialog)
    assert isinstance(dialog, SweepDialog) and dialog.isVisible()
    # defaults: the steps across, the axis with most values down; the others are filters
    assert (dialog.row_axis, dialog.col_axis) == ("sampler", "steps")
    t = dialog.table
    assert (t.rowCount(), t.columnCount()) == (2, 3)
    assert [t.horizontalHeaderItem(j).text() for j in range(3)] == ["steps=4", "steps=8", "steps=12"]
    assert dialog.filters["label"].isVisibleTo(dialog) and not dialog.filters["steps"].isVisibleTo(dialog)

    dialog.metricCombo.setCurrentIndex(dialog.metricCombo.findData("ref_distance"))
    dialog.filters["label"].setCurrentIndex(1)  # label 3
    dialog.filters["seed"].setCurrentIndex(1)  # seed 1
    cell = dialog.cell(1, 2)  # euler, 12 steps
    assert cell["values"] == {"sampler": "euler", "steps": 12, "label": 3, "seed": 1}
    result = json.loads((out / "cells" / cell["key"][:2] / cell["key"] / "result.json").read_text())
    settings = json.loads((out / "results.json").read_text())["settings"]
    pooled = next(s for s in settings if (s["sampler"], s["steps"], s["label"]) == ("euler", 12, 3))
    text = t.item(1, 2).text()
    assert text.startswith(f"{result['metrics']['ref_distance']:.4g}") and f"({pooled['ref_distance']:.4g})" in text
    assert not t.item(1, 2).icon().isNull()
    assert dialog.plots.pixmap() is not None and not dialog.plots.pixmap().isNull()

    # other axes as rows and columns
    dialog.rowCombo.setCurrentIndex(dialog.rowCombo.findData("label"))
    dialog.colCombo.setCurrentIndex(dialog.colCombo.findData("seed"))
    assert (t.rowCount(), t.columnCount()) == (2, 2)
    assert dialog.filters["steps"].isVisibleTo(dialog)

    # double-click: the cell's recipe in the main window, run there, the same image as the sweep's
    dialog.rowCombo.setCurrentIndex(dialog.rowCombo.findData("sampler"))
    dialog.colCombo.setCurrentIndex(dialog.colCombo.findData("steps"))
    rect = t.visualItemRect(t.item(1, 2))
    with qtbot.waitSignal(win.runFinished, timeout=30000) as blocker:
        qtbot.mouseClick(t.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())  # a double-click's first press
        qtbot.mouseDClick(t.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    traj = blocker.args[0]
    assert traj.finished and traj.recipe.sampler == "euler" and traj.recipe.steps == 12
    want = next(c.recipe for c in spec.cells if c.key == cell["key"])
    for name in ("sampler", "steps", "label", "seed", "batch", "guidance", "scale", "eta"):
        assert getattr(traj.recipe, name) == getattr(want, name), name
    assert np.array_equal(traj.final().numpy(), read_arrays(out, cell["key"])["x"])


def test_a_folder_without_a_sweep_is_one_line_in_the_window(qtbot, tmp_path):
    from studio.gui.sweep_view import open_sweep

    win = open_window(qtbot, steps=5)
    with qtbot.waitSignal(win.errorShown) as blocker:
        assert open_sweep(win, str(tmp_path)) is None
    assert "no sweep.json here" in blocker.args[0] and "\n" not in blocker.args[0]
