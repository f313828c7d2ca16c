"""Shared fixtures for the tests (helpers that are not fixtures live in _models.py and _gui.py).

The machines these run on have 2 cores shared with other jobs; torch's intra-op
thread pool thrashes under that contention (its threads spin-wait for each other),
so the engine tests run single-threaded (``one_thread``; the setting is restored
after each test, so other suites keep theirs).
"""
from __future__ import annotations

import os

# Ray turns 127.0.0.1 into the machine's network address unless told it is not forming a cluster; the tests'
# Ray instance (and every process it starts) must stay on loopback. Set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# The tests never write into the user's home: a private HOME and XDG folders (Ray's ~/.ray/auth_token, the
# studio's cache, matplotlib's and Qt's settings), the studio's cache and Ray's session folder (RAY_TMPDIR; short,
# for Ray's socket paths) point into one temporary folder. Set at import, before a test module imports ray or the
# studio, and inherited by every subprocess a test starts; ``private_home`` removes the folder at the end.
REAL_HOME = Path.home()


def ray_files_in_real_home() -> dict:
    """{path: (size, mtime)} of what Ray keeps in the user's real home (its token): the Ray tests check
    that a session of tests changes none of it."""
    out = {}
    for p in sorted((REAL_HOME / ".ray").rglob("*")) if (REAL_HOME / ".ray").is_dir() else []:
        st = p.stat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


RAY_FILES_BEFORE = ray_files_in_real_home()
PRIVATE_ROOT = Path(tempfile.mkdtemp(prefix="studio-tests-"))
PRIVATE_ENV = {"HOME": PRIVATE_ROOT / "home", "XDG_CACHE_HOME": PRIVATE_ROOT / "home" / ".cache",
               "XDG_CONFIG_HOME": PRIVATE_ROOT / "home" / ".config",
               "XDG_DATA_HOME": PRIVATE_ROOT / "home" / ".local" / "share",
               "XDG_STATE_HOME": PRIVATE_ROOT / "home" / ".local" / "state",
               "STUDIO_CACHE_DIR": PRIVATE_ROOT / "studio-cache", "RAY_TMPDIR": PRIVATE_ROOT / "ray",
               "MPLCONFIGDIR": PRIVATE_ROOT / "home" / ".config" / "matplotlib"}
_SAVED_ENV = {name: os.environ.get(name) for name in PRIVATE_ENV}
for _name, _path in PRIVATE_ENV.items():
    _path.mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_path)
for _name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):  # the user's cluster is not ours
    os.environ.pop(_name, None)

import pytest  # noqa: E402

from _models import single_thread
from studio.core.gmm import GaussianMixtureModel


@pytest.fixture(autouse=True, scope="session")
def private_home():
    """The temporary home and caches set above (their paths, by variable); removed when the session ends."""
    yield {name: Path(os.environ[name]) for name in PRIVATE_ENV}
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(PRIVATE_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def real_home_ray_files():
    """(the user's real home, a function listing what Ray keeps there now, that listing at the session's
    start): the Ray tests check that a session of tests changes none of it (only read, never written)."""
    return REAL_HOME, ray_files_in_real_home, RAY_FILES_BEFORE


@pytest.fixture
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def gmm() -> GaussianMixtureModel:
    """The built-in exact 16×16×3 Gaussian mixture (π = .4/.3/.2/.1, s = .10/.15/.20/.10)."""
    return GaussianMixtureModel()


@pytest.fixture(scope="module")
def tiny_sd1_file(tmp_path_factory):
    """A tiny SD 1.x-like pipeline written as one single-file checkpoint in the original layout
    (checkpoint_files.py): (the file, the config root its loads must use)."""
    from checkpoint_files import make_tiny_checkpoint

    _, path, root = make_tiny_checkpoint("sd1", tmp_path_factory.mktemp("checkpoints"))
    return path, root

