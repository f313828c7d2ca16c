"""The window opens single-file checkpoints: by File → Open checkpoint file, by a drop, from the command
line; a file that does not open keeps the model the window had, with the one-line error shown.

A tiny SD 1.x-like pipeline written as a single file in the original layout (checkpoint_files.py), its
config folder standing in for the shipped ``assets/configs``.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QAction, QDropEvent  # noqa: E402

from studio.checkpoints import configs as configs_module  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")
SIZE = 16


@pytest.fixture
def win(qtbot, tiny_sd1_file, monkeypatch):
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])
    return open_window(qtbot, steps=2, batch=1)


def drop(win, path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    win.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                             Qt.KeyboardModifier.NoModifier))


def test_open_checkpoint_from_the_file_menu_and_run(qtbot, win, tiny_sd1_file):
    path = tiny_sd1_file[0]
    action = next(a for a in win.findChildren(QAction) if a.text() == "Open checkpoint file…")
    assert action.isEnabled()
    with qtbot.waitSignal(win.modelLoaded, timeout=60000) as blocker:
        win.open_path(str(path))  # what the action's file dialog hands on
    summary = blocker.args[0]
    assert summary.spec == str(path) and summary.info.text_conditioned
    assert summary.info.pipeline == "StableDiffusionPipeline"
    assert win.model_spec == str(path) and str(path) in win._recent()
    assert list(summary.weights) == [path.name]  # recipes fingerprint the file
    win.panel.promptEdit.setText("a seven")
    win.panel.widthSpin.setValue(SIZE)  # the tiny network at a tiny size (its config says 512)
    win.panel.heightSpin.setValue(SIZE)
    with qtbot.waitSignal(win.runFinished, timeout=60000) as blocker:
        win.runButton.click()
    traj = blocker.args[0]
    assert traj.finished and traj.recipe.model == str(path) and len(traj) == 2
    assert (traj.recipe.width, traj.recipe.height) == (SIZE, SIZE)


def test_dropped_checkpoint_opens_and_a_bad_one_keeps_the_model(qtbot, win, tiny_sd1_file, tmp_path):
    path = tiny_sd1_file[0]
    with qtbot.waitSignal(win.modelLoaded, timeout=60000):
        drop(win, path)
    assert win.model_spec == str(path)
    model = win.cache.model
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with qtbot.waitSignal(win.modelFailed, timeout=60000):
        drop(win, truncated)
    shown = win.errorLabel.text()
    assert win.errorLabel.isVisibleTo(win) and "\n" not in shown
    assert shown.startswith(f"Could not open model {truncated}: ") and "truncated.safetensors" in shown
    assert shown.endswith(f"still using {path}")
    assert win.model_spec == str(path) and win.cache.model is model and win.summary.spec == str(path)
    assert win.panel.modelPicker.currentData() == str(path)


def test_a_file_that_is_neither_model_nor_recipe_is_refused_in_one_line(qtbot, win, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    drop(win, other)
    assert ".safetensors" in win.errorLabel.text() and "\n" not in win.errorLabel.text()
    assert win.model_spec == "gmm" and not win.busy


@pytest.mark.slow  # a second load of the file; the prediction type's own tests are test_checkpoint_prediction_flag
def test_opening_another_model_drops_a_recipes_prediction_type(qtbot, win, tiny_sd1_file):
    win.panel.set_recipe(win.current_recipe().replace(prediction_type="v_prediction"))
    with qtbot.waitSignal(win.modelLoaded, timeout=60000) as blocker:
        win.open_path(str(tiny_sd1_file[0]))
    assert blocker.args[0].info.prediction_type == "epsilon"  # the file's own, not the last recipe's
    assert win.current_recipe().prediction_type is None


@pytest.mark.slow
def test_command_line_opens_the_window_on_a_checkpoint(qtbot, tiny_sd1_file, monkeypatch, tmp_path):
    from studio.cli import _opens_in_window, build_parser
    from studio.gui import MainWindow
    from studio.gui.app import model_or_recipe

    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])
    path = str(tiny_sd1_file[0])
    assert _opens_in_window(path, build_parser())  # `studio FILE.safetensors`
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    assert model_or_recipe(str(recipe)) == (None, str(recipe))
    assert model_or_recipe(path) == (path, None)  # `studio-gui FILE.safetensors`: a model, not a recipe
    w = MainWindow(model=path)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.modelLoaded, timeout=60000) as blocker:
        w.show()
    assert blocker.args[0].spec == path
    w.close()


def test_a_damaged_weight_is_refused_and_the_window_keeps_its_model(qtbot, win, tiny_sd1_file, tmp_path):
    """A NaN weight is found when it first makes an output NaN (core/weight_health.py). The window times
    one UNet evaluation when a model opens, so the damaged file fails its open there: one line naming the
    file and the weight, and the model the window had stays."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_sd1_file[0]))
    state["model.diffusion_model.out.2.bias"][0] = float("nan")
    damaged = tmp_path / "damaged.safetensors"
    save_file(state, str(damaged))
    before, model = win.model_spec, win.cache.model
    with qtbot.waitSignal(win.modelFailed, timeout=60000):
        drop(win, damaged)
    shown = win.errorLabel.text()
    assert "\n" not in shown and shown.startswith(f"Could not open model {damaged}: ")
    assert f"{damaged}: weight unet.conv_out.bias holds NaN or infinite values; the file is damaged" in shown
    assert shown.endswith(f"still using {before}")
    assert win.model_spec == before and win.cache.model is model
