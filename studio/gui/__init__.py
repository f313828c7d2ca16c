"""The PySide6 desktop window of Sampling Studio."""
from __future__ import annotations


def __getattr__(name):  # keep ``import studio.gui`` cheap: Qt is imported on first use
    if name == "MainWindow":
        from .main_window import MainWindow

        return MainWindow
    raise AttributeError(name)


__all__ = ["MainWindow"]
