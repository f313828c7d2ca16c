"""Asking once before the window opens a pickled checkpoint (``.ckpt``, ``.bin``, ``.pt``, ``.pth``).

Unpickling a file can run any code its author put in it, so the command line opens these only with
``--allow-pickle``. The window asks instead, with a dialog that says so and offers the one way the studio
reads them: ``torch.load(..., weights_only=True)`` (PyTorch's restricted unpickler, which builds tensors
and plain containers and refuses every other object; studio/checkpoints/pickled.py). "Load" opens the
file and is remembered for it until the window closes; "No" keeps the model the window has. Every way of
opening a model in the window (File menu, a drop, the command line, a recipe, the recent-models list)
passes through ``MainWindow.load_model``, which asks here first.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox

from ..core.loading import BUILTINS

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
TITLE = "Open a pickle file?"
LOAD = "Load with weights_only=True"
REFUSE = "No"


def is_pickle_file(spec: str) -> bool:
    """Whether the model ``spec`` is a pickled single file (a folder's own .bin weights are not asked about:
    the folder's loader refuses them without --allow-pickle)."""
    if not spec or spec in BUILTINS:
        return False
    path = Path(spec).expanduser()
    return path.suffix.lower() in PICKLE_SUFFIXES and path.is_file()


def question(path: str) -> str:
    name = Path(path).name
    return (f"{name} is a pickle file. Opening a pickle can run any program its author put in it, with your "
            "permissions: only open files from sources you trust.\n\n"
            "The studio reads it with torch.load(..., weights_only=True), PyTorch's restricted loader, which "
            "builds only tensors, numbers and containers and refuses any other object. Converting the file to "
            ".safetensors (studio convert, or the tool it came with) avoids this question.\n\n"
            f"Load {name} this way?")


def ask(parent, path: str) -> bool:
    """Show the question as a modal dialog; True when the user chooses to load."""
    box = QMessageBox(QMessageBox.Icon.Warning, TITLE, question(path), parent=parent)
    box.setObjectName("pickleConsent")
    load = box.addButton(LOAD, QMessageBox.ButtonRole.AcceptRole)
    no = box.addButton(REFUSE, QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(no)
    box.setEscapeButton(no)
    box.exec()
    return box.clickedButton() is load


def consent(window, spec: str) -> bool:
    """Whether the window may open ``spec``: True for anything not a pickle file and for a pickle the user
    agreed to (asked once per file and window); sets the window's model cache to read pickles for it only."""
    if not is_pickle_file(spec):
        window.cache.allow_pickle = False
        return True
    key = str(Path(spec).expanduser().resolve())
    approved = window.__dict__.setdefault("_pickles_approved", set())
    if key not in approved:
        if not ask(window, spec):
            return False
        approved.add(key)
    window.cache.allow_pickle = True
    return True


def declined(window, spec: str) -> None:
    """The user said No: the window keeps its model (and its picker shows it) and says what was not opened."""
    window.panel.show_model(window.model_spec or "gmm")
    keep = f"; still using {window.model_spec}" if window.model_spec else ""
    window.statusBar().showMessage(f"Did not open the pickle file {spec}{keep}", 8000)
    if window.summary is None and window.trajectory is None:
        window.mainView.clear("no model loaded — pick one in the Model box")
