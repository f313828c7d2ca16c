"""Launching the window where Qt cannot: one clear line instead of Qt's abort."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _models import one_fast_case
from studio.gui.app import display_problem


BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command,typed", one_fast_case([  # a process each: the fast lane tries the first
    ([sys.executable, "-m", "studio.gui"], "python -m studio.gui"),
    ([sys.executable, "-m", "studio"], "studio"),
    ([str(BIN / "studio-gui")], "studio-gui"),
    ([str(BIN / "studio")], "studio"),
]))
def test_the_window_without_a_display_fails_with_one_line_naming_the_command(command, typed):
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    p = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{typed}: error: no display") and "xvfb-run" in lines[0], lines


def test_display_checks():
    no_lib, has_lib = (lambda name: None), (lambda name: f"lib{name}.so.0")
    x11 = {"DISPLAY": ":1"}
    assert "libxcb-cursor0" in display_problem(x11, "linux", no_lib)
    assert display_problem(x11, "linux", has_lib) is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", no_lib) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", no_lib) is None  # no xcb needed
    assert "libxcb-cursor0" in display_problem({"WAYLAND_DISPLAY": "w", "DISPLAY": ":1", "QT_QPA_PLATFORM": "xcb"},
                                               "linux", no_lib)
    assert "DISPLAY" in display_problem({"QT_QPA_PLATFORM": "xcb"}, "linux", has_lib)
    assert display_problem({}, "darwin", no_lib) is None and display_problem({}, "win32", no_lib) is None
    # only the missing ones are named, in one line (a machine seen without icccm and keysyms)
    some = lambda name: None if name in ("xcb-icccm", "xcb-keysyms") else f"lib{name}.so.0"  # noqa: E731
    msg = display_problem(x11, "linux", some)
    assert "libxcb-icccm4 libxcb-keysyms1" in msg and "libxcb-cursor0" not in msg and "\n" not in msg
