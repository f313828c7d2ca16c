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

import pytest

from _models import single_thread
from studio.core.gmm import GaussianMixtureModel


@pytest.fixture(autouse=True, scope="session")
def private_user_cache(tmp_path_factory):
    """Digests and the window's log go to a temporary cache folder, not the user's (inherited by subprocesses)."""
    import os

    old = os.environ.get("STUDIO_CACHE_DIR")
    os.environ["STUDIO_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        os.environ.pop("STUDIO_CACHE_DIR", None)
    else:
        os.environ["STUDIO_CACHE_DIR"] = old


@pytest.fixture
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def gmm() -> GaussianMixtureModel:
    """The built-in exact 16×16×3 Gaussian mixture (π = .4/.3/.2/.1, s = .10/.15/.20/.10)."""
    return GaussianMixtureModel()
