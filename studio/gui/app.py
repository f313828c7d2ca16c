"""Launch the studio window: ``studio-gui``, ``python -m studio.gui``."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

ICON = Path(__file__).resolve().parents[2] / "assets" / "icons" / "sampling-studio.png"


def dark_palette(app) -> None:
    from PySide6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    p = QPalette()
    base, window, text = QColor(37, 37, 42), QColor(45, 45, 51), QColor(225, 225, 230)
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, window)
    p.setColor(QPalette.ColorRole.ToolTipBase, QColor(60, 60, 68))
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, QColor(55, 55, 62))
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.Highlight, QColor(70, 130, 220))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor(140, 140, 150))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 128))
    app.setPalette(p)


# Libraries Qt's xcb platform plugin links that desktop installs often lack (checked on a Debian
# machine with ldd on PySide6's libqxcb.so): (ctypes name, Debian/Ubuntu package).
XCB_LIBRARIES = (("xcb-cursor", "libxcb-cursor0"), ("xcb-icccm", "libxcb-icccm4"),
                 ("xcb-keysyms", "libxcb-keysyms1"), ("xcb-image", "libxcb-image0"),
                 ("xcb-render-util", "libxcb-render-util0"), ("xkbcommon-x11", "libxkbcommon-x11-0"))


def display_problem(env=os.environ, platform: str = sys.platform,
                    find_library: Optional[Callable[[str], Optional[str]]] = None) -> Optional[str]:
    """Why Qt could not open a window here, as one line, or None. Qt itself aborts the process with a
    multi-line message in these cases, so the launcher checks first (Linux only: X11 or Wayland)."""
    if not platform.startswith("linux"):
        return None
    qpa = env.get("QT_QPA_PLATFORM", "")
    if qpa and not qpa.startswith(("xcb", "wayland")):
        return None  # offscreen, vnc, eglfs, …: Qt needs no display server
    wayland = bool(env.get("WAYLAND_DISPLAY")) and not qpa.startswith("xcb")
    if not wayland and not env.get("DISPLAY"):
        return ("no display to open a window on (DISPLAY is not set); run it on a desktop or under "
                "`xvfb-run`, or use the command line (`studio sample …`)")
    if not wayland:
        if find_library is None:
            from ctypes.util import find_library
        missing = [pkg for lib, pkg in XCB_LIBRARIES if find_library(lib) is None]
        if missing:
            names = " ".join(missing)
            return (f"Qt's X11 (xcb) platform needs the {names} "
                    f"librar{'ies' if len(missing) > 1 else 'y'}; install "
                    f"{'them' if len(missing) > 1 else 'it'} (Debian/Ubuntu: sudo apt install {names}) "
                    "and start the studio again")
    return None


def make_app(argv: Optional[Sequence[str]] = None):
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    app.setOrganizationName("SamplingStudio")
    app.setApplicationName("Sampling Studio")
    app.setDesktopFileName("sampling-studio")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    dark_palette(app)
    return app


def main(argv: Optional[Sequence[str]] = None, own_process: bool = True) -> int:
    """Open the window. ``own_process``: the ``studio-gui`` entry point tunes the allocator for the
    window's runs (studio/runtime.py); ``studio`` has done that already in its console entry point."""
    if own_process:
        from ..runtime import own_process as own

        own()
    parser = argparse.ArgumentParser(prog="studio-gui", description="Sampling Studio desktop window")
    parser.add_argument("target", nargs="?", default=None,
                        help="model to open (gmm, default or a diffusers model folder; default: the last one used), "
                             "or a recipe (.json or an exported .png)")
    parser.add_argument("--model", help="model to open (the same as the positional argument)")
    parser.add_argument("--recipe", help="open a recipe (.json or exported .png) at start")
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    recipe = args.recipe
    model = args.model or args.target
    if model and Path(model).is_file():
        recipe, model = model, None
    problem = display_problem()
    if problem:
        print(f"studio-gui: error: {problem}", file=sys.stderr)
        return 1
    app = make_app()
    from .main_window import MainWindow

    win = MainWindow(model=model)
    if recipe:
        win.open_recipe(recipe)
    win.show()
    signal.signal(signal.SIGINT, lambda *_: win.close())  # Ctrl+C in the terminal closes cleanly
    from PySide6.QtCore import QTimer

    keepalive = QTimer(interval=200)  # let Python see SIGINT while Qt's loop runs
    keepalive.timeout.connect(lambda: None)
    keepalive.start()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
