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


def command_name(argv0: Optional[str] = None) -> str:
    """How the user started the window, for error lines: ``studio-gui``, ``studio`` or ``python -m studio.gui``."""
    name = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")).name
    if name in ("__main__.py", "app.py", "-c", ""):
        return "python -m studio.gui"
    return name.removesuffix(".exe")


def model_or_recipe(target: Optional[str], recipe: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """(model, recipe) to open for ``studio-gui TARGET``: a file is a recipe (.json, an exported .png) unless
    it is a single-file checkpoint (``CHECKPOINT_SUFFIXES``); a folder or a built-in's name is a model."""
    from ..checkpoints import CHECKPOINT_SUFFIXES

    if target and Path(target).is_file() and Path(target).suffix.lower() not in CHECKPOINT_SUFFIXES:
        return None, target
    return target, recipe


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None, own_process: bool = True) -> int:
    """Open the window. ``prog`` is the command the user typed (``studio`` when the CLI starts it).
    ``own_process``: the ``studio-gui`` entry point tunes the allocator for the window's runs
    (studio/runtime.py); ``studio`` has done that already in its console entry point."""
    if own_process:
        from ..runtime import own_process as own

        own()
    prog = prog or command_name()
    parser = argparse.ArgumentParser(prog=prog, description="Sampling Studio desktop window")
    from ..core.loading import BUILTINS

    parser.add_argument("target", nargs="?", default=None,
                        help=f"model to open ({', '.join(BUILTINS)}, a diffusers model folder or a checkpoint file; "
                             "default: the last one used), or a recipe (.json or an exported .png)")
    parser.add_argument("--model", help="model to open (the same as the positional argument)")
    parser.add_argument("--recipe", help="open a recipe (.json or exported .png) at start")
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    problem = display_problem()
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 1
    model, recipe = model_or_recipe(args.model or args.target, args.recipe)
    app = make_app()
    from PySide6.QtCore import QTimer

    from ..session.atomic import Terminated
    from .errors import install_excepthook
    from .main_window import MainWindow

    win = MainWindow(model=model)
    restore_hooks = install_excepthook(win.uncaught.emit, lambda: QTimer.singleShot(0, win.close))

    signals_seen = []

    def stop(signum, frame):
        # SIGINT/SIGTERM/SIGHUP: close the window from the event loop (it stops and waits for its workers;
        # an export being written finishes first). Raising here instead could interrupt any Python code,
        # a paint included. A second signal raises Terminated: whatever is being written unwinds and
        # removes its staging, and the hook above closes the window.
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            raise Terminated(signum)
        QTimer.singleShot(0, win.close)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
    keepalive = QTimer(interval=200)  # let Python see signals while Qt's loop runs
    keepalive.timeout.connect(lambda: None)
    keepalive.start()
    try:
        win.show()
        if recipe:
            win.open_recipe(recipe)
        return app.exec()
    except Terminated:
        return 0
    finally:
        keepalive.stop()
        win.shutdown()  # every worker stopped and waited for: no "QThread destroyed while running"
        restore_hooks()


if __name__ == "__main__":
    raise SystemExit(main())
