"""The window never dies on bad input: bad recipes and images (opened, dropped, given on the command
line), unhandled exceptions, worker failures, closing while a model loads.

Real widgets offscreen, real files (FIFOs, links to devices, bogus PNG headers), real subprocesses
for the launcher and for signals.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PIL import Image  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from _gui import open_window, run, temp_settings  # noqa: E402,F401
from _models import one_fast_case  # noqa: E402
from studio.gui import MainWindow  # noqa: E402
from studio.session import export as ex  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero")


@pytest.fixture
def win(qtbot):
    return open_window(qtbot, steps=4)


def bad_recipe_files(folder: Path) -> dict[str, Path]:
    """One file per way a recipe can be broken, with what the error must say."""
    out = {}
    p = folder / "bogus.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    out["not a readable PNG"] = p
    p = folder / "plain.png"
    Image.new("RGB", (4, 4)).save(p)
    out["carries no recipe"] = p
    for name, doc in (("steps.json", {"steps": "many"}), ("interval.json", {"guidance_interval": [None, 1]}),
                      ("branch.json", {"branch": 5}), ("list.json", [1, 2]), ("sampler.json", {"sampler": ["ddim"]})):
        (folder / name).write_text(json.dumps(doc))
        out[f"{name}|"] = folder / name
    p = folder / "deep.json"
    p.write_text("[" * 50000 + "]" * 50000)
    out["nested too deeply"] = p
    p = folder / "huge.json"
    p.write_text("{" + " " * (5 << 20) + "}")
    out["too large"] = p
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.json")
        out["pipe (FIFO)"] = folder / "fifo.json"
        os.symlink("/dev/zero", folder / "zero.json")
        out["character device"] = folder / "zero.json"
    return out


def check_refused(w, path: Path, needle: str, before: Recipe):
    assert w.errorLabel.isVisible(), path
    text = w.errorLabel.text()
    assert "\n" not in text and "Traceback" not in text and path.name in text, text
    if not needle.endswith("|"):
        assert needle in text, text
    assert w.current_recipe() == before  # nothing half-applied


def test_every_broken_recipe_is_one_line_in_the_window_and_changes_nothing(qtbot, win, tmp_path):
    before = win.current_recipe()
    for needle, path in bad_recipe_files(tmp_path).items():
        win.hide_error()
        assert win.open_recipe(str(path)) is None  # refused from the file's type and size, without reading it all
        check_refused(win, path, needle, before)
    assert run(qtbot, win).finished  # still usable


def test_dropping_broken_files_is_one_line_too(qtbot, win, tmp_path):
    before = win.current_recipe()
    for needle, path in bad_recipe_files(tmp_path).items():
        if path.suffix == ".png":  # a dropped PNG without a recipe is an image to start from (test_forward_view.py)
            continue
        win.hide_error()
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        win.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                                 Qt.KeyboardModifier.NoModifier))
        check_refused(win, path, needle, before)
    mime = QMimeData()
    mime.setUrls([QUrl("https://example.org/recipe.json")])
    win.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                             Qt.KeyboardModifier.NoModifier))
    assert "local" in win.errorLabel.text()
    assert run(qtbot, win).finished


@pytest.mark.qt_no_exception_capture
def test_unhandled_exceptions_are_shown_and_logged_not_printed(qtbot, win, capfd):
    from studio.gui.errors import install_excepthook, log_path

    closed = []
    restore = install_excepthook(win.uncaught.emit, lambda: closed.append(True))
    try:
        def boom():
            raise ValueError("boom in a slot")

        QTimer.singleShot(0, boom)
        qtbot.waitUntil(lambda: "boom in a slot" in win.errorLabel.text(), timeout=5000)
        assert win.errorLabel.text().startswith("Unexpected error: boom in a slot")
        th = threading.Thread(target=lambda: 1 / 0)
        th.start()
        th.join()
        qtbot.waitUntil(lambda: "ZeroDivisionError" in win.errorLabel.text(), timeout=5000)
        from studio.session.atomic import Terminated

        def term():
            raise Terminated(signal.SIGTERM)

        QTimer.singleShot(0, term)
        qtbot.waitUntil(lambda: closed == [True], timeout=5000)
    finally:
        restore()
    log = log_path().read_text()
    assert "Traceback" in log and "boom in a slot" in log and "ZeroDivisionError" in log
    assert "Traceback" not in capfd.readouterr().err
    assert run(qtbot, win).finished


def test_the_workers_error_signal_carries_the_exception(qtbot):
    from studio.core.loading import ModelLoadError
    from studio.gui.worker import GeneratorWorker

    def fails(exc):
        raise exc

    for exc, message in ((ModelLoadError("m: config.json is missing"), "m: config.json is missing"),
                         (KeyError("x"), "KeyError: 'x'"), (MemoryError(), "out of memory")):
        w = GeneratorWorker(fails, exc, kind="load")
        with qtbot.waitSignal(w.errored, timeout=5000) as blocker:
            w.start()
        w.wait()
        assert blocker.args[0] is exc and w.error is exc and w.outcome == "error"
        assert w.message.startswith(message), w.message


def test_gui_objects_declare_their_state_in_init():
    """No ``getattr(self, "_x", default)``: the window's and dialogs' state is declared in __init__."""
    import re

    gui = Path(__file__).resolve().parents[1] / "studio" / "gui"
    names = ["main_window", "models", "branches", "files", "compare", "export_dialog", "worker", "jobs", "plots",
             "scrubber", "view", "app", "errors"]
    for name in names:
        text = (gui / f"{name}.py").read_text()
        assert not re.search(r"getattr\(self(\.\w+)*, \"", text), name


def _sparse_model(tmp_path) -> Path:
    """A real model folder whose SHA256SUMS lists a 32 GB sparse file: hashing it takes many seconds."""
    from _models import make_unet, save_model_folder

    folder = save_model_folder(make_unet(), tmp_path / "slow", dict(clip_sample=False))
    with open(folder / "big.bin", "wb") as f:
        f.truncate(32 << 30)
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  big.bin\n")
    return folder


def test_closing_the_window_while_a_model_loads_stops_the_load(qtbot, tmp_path, monkeypatch):
    """close() waits for the load's thread, which stops at its next ``cancel.check()``: the 32 GB hash is cut
    short (the load ends "aborted", not with the checksum error a finished hash would give)."""
    from studio.core import cancel

    hashing = threading.Event()
    check = cancel.check

    def check_and_tell():  # the real check; the test learns the load is in its cancellable hashing
        hashing.set()
        check()

    monkeypatch.setattr(cancel, "check", check_and_tell)
    folder = _sparse_model(tmp_path)
    w = MainWindow(model=str(folder))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(hashing.is_set, timeout=60000)
    load = w.worker
    assert load is not None and load.kind == "load" and load.isRunning()
    w.close()
    assert load.isFinished() and load.outcome == "aborted" and not w._workers


@pytest.mark.slow
def test_opening_a_recipe_made_with_other_weights_warns(qtbot, win, tmp_path):
    from safetensors.torch import load_file, save_file

    from _models import make_unet, save_model_folder

    folder = save_model_folder(make_unet(), tmp_path / "m", dict(clip_sample=False))
    path = ex.export_recipe(Recipe(model=str(folder), steps=3, batch=1), tmp_path / "r.json")
    assert "weights" in json.loads(path.read_text())["versions"]
    with qtbot.waitSignal(win.modelLoaded, timeout=30000):
        win.open_recipe(str(path))
    assert not win.errorLabel.isVisible()  # the same weights: no warning
    weights = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["conv_out.bias"] = sd["conv_out.bias"] + 0.5
    save_file(sd, str(weights))
    with qtbot.waitSignal(win.modelLoaded, timeout=30000):
        win.load_model("gmm")
    with qtbot.waitSignal(win.modelLoaded, timeout=30000):
        win.open_recipe(str(path))
    assert win.errorLabel.isVisible() and "Warning" in win.errorLabel.text()
    assert weights.name in win.errorLabel.text() and "changed" in win.errorLabel.text()


# -- the launcher, as a real process ---------------------------------------------------------------
def _launch(tmp_path, *args):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1",
               STUDIO_CACHE_DIR=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.Popen([sys.executable, "-m", "studio", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _log(tmp_path) -> str:
    p = tmp_path / "cache" / "studio.log"
    return p.read_text() if p.exists() else ""


@posix_only
@pytest.mark.parametrize("name", one_fast_case(["fifo.json", "bogus.png", "interval.json"]))  # a process each
def test_studio_with_a_broken_recipe_shows_it_and_stays_up(tmp_path, name):
    files = {p.name: p for p in bad_recipe_files(tmp_path).values()}
    p = _launch(tmp_path, str(files[name]))
    deadline = time.monotonic() + 90
    while name not in _log(tmp_path) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = p.poll() is None
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert alive, f"the window died: rc {p.returncode}\n{err}"
    shown = [ln for ln in _log(tmp_path).splitlines() if "shown:" in ln and name in ln]
    assert shown, _log(tmp_path)
    assert p.returncode == 0, err
    for bad in ("Traceback", "QThread", "Abort", "core dumped"):
        assert bad not in err, err


def _has_open(pid: int, path: Path) -> bool:
    """The process ``pid`` has ``path`` open (Linux: /proc/<pid>/fd)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # an fd closed while listing: look again
        return False


@pytest.mark.slow  # starts the studio as a process; closing while loading is tested in-process above
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches the process's open files in /proc")
def test_sigterm_while_the_window_loads_a_model_exits_cleanly(tmp_path):
    """SIGTERM while the window hashes a 32 GB file: the process exits 0 at once, its load thread cancelled
    (the file's digest was never finished, so never cached) rather than destroyed while running."""
    folder = _sparse_model(tmp_path)
    big = (folder / "big.bin").resolve()
    p = _launch(tmp_path, str(folder))
    deadline = time.monotonic() + 120  # a hang guard: Python, Qt and torch imported, the model being opened
    while not (hashing := _has_open(p.pid, big)) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hashing and p.poll() is None, "the window never started hashing the weights"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err and "QThread" not in err, err
    digests = tmp_path / "cache" / "sha256.json"
    assert not digests.exists() or str(big) not in json.loads(digests.read_text())


@pytest.mark.slow
def test_a_damaged_settings_file_starts_the_window_with_defaults(qtbot, tmp_path):
    from studio.gui.main_window import open_settings

    settings = open_settings()
    for text in ('{"steps": "many"', '{"guidance_interval": [null, 1]}', '[1, 2]', '{"sampler": "warp"}'):
        settings.setValue("recipe", text)
        settings.sync()
        w = MainWindow(model="gmm")
        qtbot.addWidget(w)
        qtbot.waitUntil(lambda: w.summary is not None and not w.busy, timeout=15000)
        assert w.current_recipe().validate()
        w.close()
