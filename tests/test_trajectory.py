"""The trajectory store: bounded memory (disk spill) without losing anything."""
import pytest
import numpy as np
import torch

from studio.session.recipe import Recipe
from studio.session.runner import Run
from studio.session.trajectory import Trajectory


def run_with_limit(recipe, limit):
    run = Run(recipe)
    run.trajectory._limit = limit
    return run.run_to_end()


def test_spilled_steps_read_back_exactly_and_branch_exactly():
    recipe = Recipe(model="gmm", sampler="dpmpp_2m", steps=12, batch=2, seed=4)
    mem = run_with_limit(recipe, 1 << 40)
    disk = run_with_limit(recipe, 20_000)  # two steps fit, the rest go to the disk cache
    spilled = sum(1 for e in disk._full if not isinstance(e, dict))
    assert spilled >= 9
    for k in range(-1, 12):
        a, b = mem.full_state(k), disk.full_state(k)
        assert torch.equal(a["x"], b["x"])
    np.testing.assert_array_equal(mem.arrays()["xt"], disk.arrays()["xt"])
    # continuing from a spilled step (its multistep memory comes back from disk) reproduces the run
    branch = Run(recipe, parent=disk, from_step=8).run_to_end()
    assert torch.equal(branch.final(), mem.final())
    cache = disk._cache_dir.name
    disk.close()
    import os

    assert not os.path.exists(cache)


def test_previews_are_uint8_frames_of_the_full_state():
    traj = run_with_limit(Recipe(model="gmm", sampler="ddim", steps=5, batch=3, seed=1), 1 << 40)
    assert isinstance(traj, Trajectory) and len(traj.xt) == 6 and len(traj.x0) == 5
    f = traj.frame_xt(3)
    assert f.dtype == np.uint8 and f.shape == (3, 16, 16, 3)
    x = traj.full_state(2)["x"]
    expect = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(f, expect)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_frames_are_the_rounded_uint8_image_of_the_clamped_state(channels):
    """to_uint8 against a plain numpy reference: clamp to [−1, 1], map to [0, 255], round, NHWC, grey → RGB."""
    import numpy as np

    from studio.session.frames import to_uint8

    x = torch.randn(2, channels, 5, 7, generator=torch.Generator().manual_seed(channels)) * 1.5
    x[0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 0.0])
    a = np.clip(x.double().numpy(), -1, 1)
    ref = np.round((a + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    ref = np.repeat(ref, 3, axis=-1) if channels == 1 else ref[..., :3]
    got = to_uint8(x)
    assert got.shape == (2, 5, 7, 3) and got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float32 vs float64 at exact .5 ties
    assert (got[0, 0, :3, 0] == [0, 255, 128]).all()


def test_check_finite_finds_one_nan_or_inf_and_accepts_a_huge_finite_state():
    from studio.core.records import SamplingError, check_finite

    x = torch.zeros(4, 3, 8, 8)
    check_finite(x, 0)
    big = torch.full((4, 3, 8, 8), 3e38)  # its sum overflows to inf, yet every element is finite
    check_finite(big, 0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[2, 1, 5, 6] = bad
        with pytest.raises(SamplingError, match="step 4"):
            check_finite(y, 3)


def test_step_meta_is_the_records_numbers_and_gives_the_record_back():
    import dataclasses

    from studio.core.records import StepRecord
    from studio.session.trajectory import StepMeta

    recorded = {f.name for f in dataclasses.fields(StepRecord)}
    meta = [f.name for f in dataclasses.fields(StepMeta)]
    # every per-step number of a record, without its tensors or what the whole run shares, and the scale
    assert set(meta) == recorded - {"x", "x0", "carry", "sampler", "steps"} | {"guidance_scale"}
    run = Run(Recipe(model="gmm", sampler="dpmpp_2m", steps=4, batch=1, seed=2, guidance="cfg", label=1, scale=2.5,
                     guidance_interval=(0.0, 0.5)))
    recs = list(run)
    traj = run.trajectory
    for rec, m in zip(recs, traj.meta, strict=True):
        assert all(getattr(m, name) == getattr(rec, name) for name in meta if name != "guidance_scale")
    assert [m.guidance_scale for m in traj.meta] == [2.5, 2.5, 1.0, 1.0]  # CFG w inside the interval, else 1
    back = traj.record(2)
    for name in recorded - {"x", "x0", "carry"}:
        assert getattr(back, name) == getattr(recs[2], name), name
    assert torch.equal(back.x, recs[2].x) and torch.equal(back.carry["prev_x0"], recs[2].carry["prev_x0"])
