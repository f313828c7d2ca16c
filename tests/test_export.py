"""Exports: every format written atomically, read back, recipe embedded, no partial files on failure."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from studio.session import export as ex
from studio.session.recipe import Recipe
from studio.session.runner import Run


@pytest.fixture(scope="module")
def traj():
    run = Run(Recipe(model="gmm", steps=6, batch=4, seed=3))
    return run.run_to_end()


def listing(folder):
    return sorted(os.listdir(folder))


def test_frames_folder(traj, tmp_path):
    out = ex.export_frames(traj, tmp_path / "frames", which="both")
    names = listing(out)
    assert "recipe.json" in names
    assert sum(n.startswith("xt_") for n in names) == 7  # noise + 6 steps
    assert sum(n.startswith("x0_") for n in names) == 6
    assert Recipe.from_json((out / "recipe.json").read_text()) == traj.recipe
    with Image.open(out / "xt_0003.png") as im:
        assert Recipe.from_json(im.text["recipe"]) == traj.recipe
        from studio.session.frames import make_grid
        assert np.array_equal(np.asarray(im.convert("RGB")), make_grid(traj.frame_xt(3)))
    assert listing(tmp_path) == ["frames"]  # no temp dirs left


def test_frames_no_overwrite_then_overwrite(traj, tmp_path):
    ex.export_frames(traj, tmp_path / "f", which="xt")
    with pytest.raises(ex.ExportError, match="already exists"):
        ex.export_frames(traj, tmp_path / "f", which="x0")
    ex.export_frames(traj, tmp_path / "f", which="x0", overwrite=True)
    assert not any(n.startswith("xt_") for n in listing(tmp_path / "f"))
    assert listing(tmp_path) == ["f"]


@pytest.mark.parametrize("suffix,fmt", [(".gif", "GIF"), (".png", "PNG"), (".apng", "PNG")])
def test_animation(traj, tmp_path, suffix, fmt):
    path = ex.export_animation(traj, tmp_path / f"run{suffix}", which="both", fps=5)
    with Image.open(path) as im:
        assert im.format == fmt
        assert im.n_frames == 7
        if fmt == "PNG":
            assert Recipe.from_json(im.text["recipe"]) == traj.recipe
    assert Recipe.from_json((tmp_path / f"run{suffix}.recipe.json").read_text()) == traj.recipe
    assert listing(tmp_path) == sorted([f"run{suffix}", f"run{suffix}.recipe.json"])


def test_gif_x0_frame_count(traj, tmp_path):
    with Image.open(ex.export_animation(traj, tmp_path / "x0.gif", which="x0")) as im:
        assert im.n_frames == 6


def test_mp4(traj, tmp_path):
    if not ex.mp4_available():
        with pytest.raises(ex.ExportError, match="imageio-ffmpeg"):
            ex.export_animation(traj, tmp_path / "run.mp4")
        assert listing(tmp_path) == []
        return
    path = ex.export_animation(traj, tmp_path / "run.mp4")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    n = sum(1 for _ in reader)
    assert n == len(traj.x0) and meta["size"][0] % 2 == 0 and meta["size"][1] % 2 == 0
    assert listing(tmp_path) == ["run.mp4", "run.mp4.recipe.json"]


def test_contact_sheet_and_final(traj, tmp_path):
    sheet = ex.export_contact_sheet(traj, tmp_path / "sheet.png", every=2)
    with Image.open(sheet) as im:
        assert Recipe.from_json(im.text["recipe"]) == traj.recipe
        assert im.size[0] > im.size[1]
    final = ex.export_final(traj, tmp_path / "final.png")
    from studio.session.frames import make_grid
    with Image.open(final) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), make_grid(traj.frame_xt(6)))
    assert ex.read_recipe(final) == traj.recipe
    assert ex.read_recipe(tmp_path / "final.png.recipe.json") == traj.recipe


def test_refuses_overwrite(traj, tmp_path):
    (tmp_path / "a.gif").write_bytes(b"old")
    with pytest.raises(ex.ExportError, match="already exists"):
        ex.export_animation(traj, tmp_path / "a.gif")
    assert (tmp_path / "a.gif").read_bytes() == b"old"
    ex.export_animation(traj, tmp_path / "a.gif", overwrite=True)
    assert (tmp_path / "a.gif").read_bytes() != b"old"


def test_bad_names_leave_nothing(traj, tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in [tmp_path / "file" / "out.gif", tmp_path / "file" / "sub" / "out.png", tmp_path / "out.bmp"]:
        with pytest.raises(ex.ExportError) as err:
            if bad.suffix == ".png":
                ex.export_final(traj, bad)
            else:
                ex.export_animation(traj, bad)
        assert "\n" not in str(err.value)
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(traj, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ex.ExportError, match="cannot write"):
            ex.export_animation(traj, ro / "a.gif")
        with pytest.raises(ex.ExportError, match="cannot write"):
            ex.export_frames(traj, ro / "frames")
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_write_failure_midway_leaves_nothing(traj, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ex, "_save_png", boom)
    with pytest.raises(ex.ExportError, match="No space left"):
        ex.export_frames(traj, tmp_path / "frames")
    with pytest.raises(ex.ExportError, match="No space left"):
        ex.export_final(traj, tmp_path / "final.png")
    assert listing(tmp_path) == []


def test_compare_exports(tmp_path):
    base = Recipe(model="gmm", steps=4, batch=1, seed=1)
    a = Run(base).run_to_end()
    b = Run(base.replace(sampler="euler", steps=8)).run_to_end()
    grid = ex.export_compare_grid([a, b], ["ddim 4", "euler 8"], tmp_path / "cmp.png")
    with Image.open(grid) as im:
        assert "recipe" in im.text
    side = json.loads((tmp_path / "cmp.png.recipe.json").read_text())
    assert len(side["compare"]) == 2
    with Image.open(ex.export_compare_animation([a, b], ["a", "b"], tmp_path / "cmp.gif")) as im:
        assert im.n_frames == 8
