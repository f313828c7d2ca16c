"""The process tuning (studio/runtime.py) and the slab store (studio/session/slabs.py), measured in
fresh processes: page faults of a free-and-reallocate loop, and which entry points tune the process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from studio.session.slabs import Slabs

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

CHURN = """
import json, resource, sys
from studio.runtime import tune_allocator
applied = tune_allocator()
import numpy as np
def churn():
    for _ in range(50):  # like a forward pass: ten 2 MB activations alive at once, then all freed
        acts = [np.ones(1 << 18) for _ in range(10)]
        del acts
churn()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _churn(tuning: str) -> dict:
    env = dict(os.environ, STUDIO_MALLOC_TUNING=tuning)
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux
@pytest.mark.slow
def test_tuned_allocator_reuses_freed_buffers_instead_of_faulting_them_in_again():
    plain, tuned = _churn("0"), _churn("1")
    assert not plain["applied"] and tuned["applied"]
    # 50 × 20 MB = 250k pages: glibc's default trims the freed top of the heap (its trim threshold
    # follows the largest block, 4 MB here) and faults it in again; the tuned heap keeps it
    assert plain["faults"] > 100_000, plain
    assert tuned["faults"] < plain["faults"] / 20, (plain, tuned)


ENTRY = """
import json, resource, sys
import studio.cli as cli
from studio import runtime
from studio.session.recipe import Recipe
from studio.session.runner import Run
Run(Recipe(model="gmm", steps=120, batch=1, device="cpu")).run_to_end()  # a Run used as a library
args = [a for a in sys.argv[1:] if a != "--console"]
status = cli.console_main(args) if "--console" in sys.argv else cli.main(args)
import numpy as np
def churn():
    for _ in range(50):
        acts = [np.ones(1 << 18) for _ in range(10)]
        del acts
churn()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(json.dumps({"status": status, "owned": runtime.owns_process(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _entry(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux
@pytest.mark.slow  # two processes churning the allocator
def test_only_the_console_entry_point_tunes_the_process():
    """Importing the studio, running a Run as a library and calling ``cli.main(argv)`` leave glibc's
    allocator as it was (the churn faults its freed buffers in again, as untuned); the console entry
    point (``console_main``: the ``studio`` script, ``python -m studio``) tunes it."""
    library = _entry("samplers")
    console = _entry("samplers", "--console")
    assert library["status"] == console["status"] == 0
    assert not library["owned"] and console["owned"]
    assert library["faults"] > 100_000, library
    assert console["faults"] < library["faults"] / 20, (library, console)


def test_runs_release_memory_only_in_an_owned_process():
    """The trajectory store's periodic ``malloc_trim`` (every RELEASE_EVERY steps) happens only where an
    entry point owns the process; a library user's process is left alone."""
    from studio import runtime

    assert not runtime.owns_process()  # the test process imported the studio and ran nothing owning it
    assert runtime.release_periodically(runtime.RELEASE_EVERY) is False
    assert runtime.release_periodically(runtime.RELEASE_EVERY * 3) is False


def test_slabs_hand_out_separate_zeroed_arrays():
    s = Slabs(slab_bytes=1 << 12)
    a = s.array((3, 5), np.float32)
    b = s.array((7,), np.uint8)
    big = s.array((2, 1024), np.float32)  # bigger than a slab: its own map
    for arr in (a, b, big):
        assert arr.flags.writeable and not arr.any()
    a[...] = 1.5
    b[...] = 7
    big[...] = -2
    assert (a == 1.5).all() and (b == 7).all() and (big == -2).all()
    c = s.copy(np.arange(12, dtype=np.int64).reshape(3, 4))
    assert c.dtype == np.int64 and (c == np.arange(12).reshape(3, 4)).all()
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0 and c.ctypes.data % 64 == 0
    assert s.mapped_bytes >= (1 << 12) + 2 * 1024 * 4


@linux
def test_slab_maps_are_private_and_ask_for_huge_pages():
    """The slabs' maps: private anonymous memory (cheaper page faults than shared), madvised for
    transparent huge pages where the kernel allows it (VmFlags "hg" in /proc/self/smaps)."""
    from studio.session.slabs import HUGE_PAGE, anonymous_map

    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    m = anonymous_map(2 * HUGE_PAGE)
    start = np.frombuffer(m, np.uint8).ctypes.data
    region, flags = None, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                region = (lo, hi) if lo <= start < hi else None
            elif line.startswith("VmFlags") and region:
                flags = line.split()[1:]
                break
    assert flags is not None, "the map is not in /proc/self/smaps"
    assert "sh" not in flags  # private, not shared memory
    if os.path.exists(thp) and "[never]" not in open(thp).read():
        assert "hg" in flags, flags
    a = np.frombuffer(m, np.uint8)
    assert not a.any()
    a[:] = 3
    assert (a == 3).all()
