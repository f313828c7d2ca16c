"""The window asks before it opens a pickled checkpoint (.ckpt/.bin/.pt), once per file; "No" keeps its model.

The dialog is the real QMessageBox, answered by clicking its button from a timer while it runs modally
(offscreen). The file is the tiny SD 1.x-like checkpoint of checkpoint_files.py saved with ``torch.save``
the way Lightning checkpoints are (weights under ``state_dict``).
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")
import torch  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from studio.checkpoints import configs as configs_module  # noqa: E402
from studio.gui import pickle_consent  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_sd1_file, tmp_path_factory):
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("pickled") / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_sd1_file[0])), "global_step": 1}, path)
    return path


@pytest.fixture
def win(qtbot, tiny_sd1_file, monkeypatch):
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])
    return open_window(qtbot, steps=2, batch=1)


class Answers:
    """Clicks ``button`` of each pickle question that opens, and keeps the texts asked."""

    def __init__(self, button: str):
        self.button, self.asked = button, []
        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(self._poll)
        self.timer.start()

    def _poll(self) -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox) and box.objectName() == "pickleConsent":
            self.asked.append(box.text())
            next(b for b in box.buttons() if b.text() == self.button).click()

    def stop(self) -> None:
        self.timer.stop()


def drop(win, path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    win.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                             Qt.KeyboardModifier.NoModifier))


def test_no_keeps_the_model_and_nothing_is_read(qtbot, win, tiny_ckpt):
    model, spec = win.cache.model, win.model_spec
    answers = Answers(pickle_consent.REFUSE)
    try:
        drop(win, tiny_ckpt)
    finally:
        answers.stop()
    assert len(answers.asked) == 1
    text = answers.asked[0]
    assert "tiny.ckpt is a pickle file" in text and "run any program" in text
    assert "torch.load(..., weights_only=True)" in text
    assert not win.busy and win.cache.model is model and win.model_spec == spec
    assert win.panel.modelPicker.currentData() == spec and not win.cache.allow_pickle
    assert "Did not open the pickle file" in win.statusBar().currentMessage()


@pytest.mark.slow
def test_load_opens_it_with_weights_only_and_asks_once(qtbot, win, tiny_ckpt, tiny_sd1_file):
    answers = Answers(pickle_consent.LOAD)
    try:
        with qtbot.waitSignal(win.modelLoaded, timeout=60000) as blocker:
            win.open_path(str(tiny_ckpt))  # what File → Open checkpoint file hands on
        assert blocker.args[0].spec == str(tiny_ckpt) and blocker.args[0].info.text_conditioned
        assert len(answers.asked) == 1
        with qtbot.waitSignal(win.modelLoaded, timeout=60000):
            win.open_path(str(tiny_sd1_file[0]))  # another model: no question
        assert not win.cache.allow_pickle
        with qtbot.waitSignal(win.modelLoaded, timeout=60000):
            win.open_path(str(tiny_ckpt))  # the same file again in this window: not asked again
        assert len(answers.asked) == 1 and win.model_spec == str(tiny_ckpt)
    finally:
        answers.stop()
    win.panel.promptEdit.setText("a seven")
    win.panel.widthSpin.setValue(16)
    win.panel.heightSpin.setValue(16)
    with qtbot.waitSignal(win.runFinished, timeout=60000) as blocker:
        win.runButton.click()
    assert blocker.args[0].finished and blocker.args[0].recipe.model == str(tiny_ckpt)


def test_the_command_line_asks_too(qtbot, tiny_ckpt, tiny_sd1_file, monkeypatch):
    from studio.gui import MainWindow

    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])
    answers = Answers(pickle_consent.REFUSE)
    try:
        w = MainWindow(model=str(tiny_ckpt))  # `studio-gui tiny.ckpt`
        qtbot.addWidget(w)
    finally:
        answers.stop()
    assert len(answers.asked) == 1 and w.model_spec is None and not w.busy
    w.close()


def test_only_pickled_single_files_are_asked_about(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.bin").write_bytes(b"")
    assert not pickle_consent.is_pickle_file(str(tmp_path / "a.safetensors"))
    assert pickle_consent.is_pickle_file(str(tmp_path / "b.bin"))
    assert not pickle_consent.is_pickle_file(str(tmp_path))  # a folder: its own loader decides
    assert not pickle_consent.is_pickle_file("gmm")
