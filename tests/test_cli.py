"""The `studio` command, run as a real subprocess and in-process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _models import one_fast_case
from studio.cli import main
from studio.core.samplers import SAMPLERS

ETA_TAKERS = ", ".join(name for name, spec in SAMPLERS.items() if "eta" in spec.options)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_samplers_lists_every_sampler_with_a_description():
    from studio.core.samplers import SAMPLERS

    r = run_cli("samplers")
    assert r.returncode == 0
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("  ")}  # under group headers
    assert sorted(lines) == sorted(SAMPLERS)
    assert all(len(ln.split(None, 1)[1]) > 20 for ln in lines.values())
    # each sampler's declared options, with their defaults and ranges
    assert lines["euler_a"].endswith("options: --eta 1.0 (from 0 to 1)")
    assert "--corrector-steps 1 (from 0 to 100); --snr 0.16 (> 0 and ≤ 1)" in lines["langevin"]


def test_info_describes_the_gmm(capsys):
    assert main(["info", "gmm"]) == 0
    out = capsys.readouterr().out
    assert "16x16" in out and "disc" in out and "epsilon" in out and "linear" in out


def test_sample_writes_frames_grid_recipe_and_raw(tmp_path):
    out = tmp_path / "run"
    r = run_cli("sample", "--model", "gmm", "--sampler", "ddim", "--steps", "6", "--batch", "3", "--seed", "5",
                "--label", "1", "--guidance", "cfg", "--scale", "2.5", "--save-raw", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "steps/s" in r.stderr  # the progress bar
    assert sorted(p.name for p in (out / "xt").iterdir()) == [f"{i:04d}.png" for i in range(7)]
    # the same numbering as the window's exports: x0/000k.png is the x̂₀ of step k (k = 1 … steps)
    assert sorted(p.name for p in (out / "x0").iterdir()) == [f"{i:04d}.png" for i in range(1, 7)]
    raw = np.load(out / "trajectory.npz")
    assert raw["xt"].shape == (7, 3, 3, 16, 16) and raw["xt"].dtype == np.float32
    assert raw["x0"].shape == (6, 3, 3, 16, 16)
    assert raw["t"].shape == (6,) and np.all(np.diff(raw["t"]) < 0)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["sampler"] == "ddim" and recipe["scale"] == 2.5 and recipe["label"] == 1
    assert recipe["versions"]["torch"]
    img = Image.open(out / "final.png")
    assert json.loads(img.text["recipe"])["seed"] == 5
    # the final grid is the last x_t of the raw trajectory, quantised
    from studio.session.frames import make_grid, to_uint8
    import torch

    # enlarged by whole pixels so its shorter side is at least 256 px (the native grid is in trajectory.npz)
    expect = make_grid(to_uint8(torch.from_numpy(raw["xt"][-1])))
    k = -(-256 // min(expect.shape[:2]))
    assert min(img.size) >= 256 and img.size == (expect.shape[1] * k, expect.shape[0] * k)
    assert np.array_equal(np.asarray(img.convert("RGB")), expect.repeat(k, 0).repeat(k, 1))
    # every frame is enlarged the same way
    with Image.open(out / "x0" / "0006.png") as last_x0:
        frame = make_grid(to_uint8(torch.from_numpy(raw["x0"][5])))
        assert np.array_equal(np.asarray(last_x0.convert("RGB")), frame.repeat(k, 0).repeat(k, 1))


def test_recipe_reproduces_a_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["sample", "--model", "gmm", "--sampler", "euler_a", "--steps", "5", "--seed", "11",
                 "--quiet", "--save-raw", "--out", str(a)]) == 0
    assert main(["sample", "--recipe", str(a / "recipe.json"), "--quiet", "--save-raw", "--out", str(b)]) == 0
    assert np.array_equal(np.load(a / "trajectory.npz")["xt"], np.load(b / "trajectory.npz")["xt"])
    c = tmp_path / "c"
    assert main(["sample", "--recipe", str(a / "recipe.json"), "--seed", "12", "--quiet", "--save-raw", "--out", str(c)]) == 0
    assert not np.array_equal(np.load(a / "trajectory.npz")["xt"][-1], np.load(c / "trajectory.npz")["xt"][-1])


def test_guidance_scale_defaults_to_the_models_recommendation(tmp_path):
    from _models import make_unet, save_model_folder

    folder = save_model_folder(make_unet(num_class_embeds=3), tmp_path / "m", dict(clip_sample=False),
                               class_names=["a", "b"])
    (folder / "recommended.json").write_text('{"cfg_scale": 4.5}')
    common = ["sample", "--model", str(folder), "--steps", "2", "--batch", "1", "--label", "1", "--quiet"]

    def scale(out, *extra):
        assert main([*common, *extra, "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "recipe.json").read_text())["scale"]

    assert scale("rec", "--guidance", "cfg") == 4.5
    assert scale("given", "--guidance", "cfg", "--scale", "2") == 2.0
    (folder / "recommended.json").unlink()
    assert scale("none", "--guidance", "cfg") == 3.0


def test_init_noise_is_used_as_x_T_and_travels_with_the_recipe(tmp_path):
    noise = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "n.npy", noise)
    out = tmp_path / "o"
    assert main(["sample", "--model", "gmm", "--steps", "4", "--init-noise", str(tmp_path / "n.npy"),
                 "--quiet", "--save-raw", "--out", str(out)]) == 0
    raw = np.load(out / "trajectory.npz")
    assert np.array_equal(raw["xt"][0], noise)
    (tmp_path / "n.npy").unlink()  # the output folder is self-contained
    out2 = tmp_path / "o2"
    assert main(["sample", "--recipe", str(out / "recipe.json"), "--quiet", "--save-raw", "--out", str(out2)]) == 0
    assert np.array_equal(np.load(out2 / "trajectory.npz")["xt"], raw["xt"])


@pytest.mark.parametrize(  # each case runs the studio as a process: the fast lane tries the first
    "args, needle",
    one_fast_case([
        (["--model", "/no/such/model"], "no such folder"),
        (["--model", "gmm", "--guidance", "cfg", "--scale", "nan", "--label", "1"], "scale must be a number from 0 to 1000, got nan"),
        (["--model", "gmm", "--guidance", "cfg", "--scale", "inf", "--label", "1"], "scale must be a number from 0 to 1000, got inf"),
        (["--model", "gmm", "--guidance", "classifier", "--scale", "-2", "--label", "1"], "scale must be a number from 0 to 1000"),
        (["--model", "gmm", "--label", "9"], "out of range"),
        (["--model", "gmm", "--steps", "0"], "steps"),
        (["--model", "gmm", "--steps", "5000"], "cannot exceed"),
        (["--model", "gmm", "--eta", "1.5"], "eta must be a number from 0 to 1"),
        (["--model", "gmm", "--sampler", "heun", "--eta", "0.5"], f"--eta applies to {ETA_TAKERS}, not heun"),
        (["--model", "gmm", "--sampler", "langevin", "--corrector-steps", "101"], "corrector_steps must be an integer from 0 to 100"),
        (["--model", "gmm", "--sampler", "langevin", "--snr", "0"], "snr must be a number > 0 and ≤ 1"),
        (["--model", "gmm", "--beta-start", "1.5"], "schedule.beta_start must be a number > 0 and < 1"),
        (["--model", "gmm", "--device", "cuda:0"], "cuda"),
        (["--model", "gmm", "--guidance", "cfg"], "label"),
        (["--model", "gmm", "--sampler", "ddim", "--karras"], "Karras"),
        (["--model", "gmm", "--guidance-interval", "0.8", "0.2", "--guidance", "cfg", "--label", "0"], "interval"),
    ]),
)
def test_bad_input_is_one_line_on_stderr_and_nothing_is_written(tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli("sample", "--steps", "3", *args, "--out", str(out)) if "--steps" not in args else run_cli(
        "sample", *args, "--out", str(out))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("studio: error:"), r.stderr
    assert needle in lines[-1]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


@pytest.mark.slow  # a process; test_outputs_atomic refuses a non-empty --out in the fast lane
def test_existing_output_folder_is_not_overwritten_without_asking(tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    r = run_cli("sample", "--model", "gmm", "--steps", "2", "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "mine.txt").read_text() == "precious"
    assert main(["sample", "--model", "gmm", "--steps", "2", "--quiet", "--overwrite", "--out", str(out)]) == 0
    assert (out / "final.png").exists() and not (out / "mine.txt").exists()


@pytest.mark.slow
def test_unwritable_output_gives_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = run_cli("sample", "--model", "gmm", "--steps", "2", "--out", str(blocker / "x"))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("studio: error:") and "a-file" in last and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.slow  # two processes; recipe errors are one line in-process in the fast lane (test_gui_faults)
def test_bad_recipe_file_is_refused(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"sampler": "warp_drive"}')
    r = run_cli("sample", "--recipe", str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown sampler" in r.stderr and "Traceback" not in r.stderr
    p.write_text("{not json")
    r = run_cli("sample", "--recipe", str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not valid JSON" in r.stderr


@pytest.mark.parametrize("args, needle", one_fast_case([  # a process each: the fast lane tries the first
    (["sample", "--model", "gmm", "--dtype", "float64"], "--dtype"),
    (["train", "diffusion", "--steps", "-3"], "--steps"),
    (["train", "diffusion", "--ema-decay", "1.5"], "--ema-decay"),
    (["train", "text-diffusion", "--p-uncond", "1"], "--p-uncond"),
    (["train", "diffusion", "--unet", "huge"], "--unet"),
    (["train", "diffusion", "--snr-gamma", "0"], "--snr-gamma"),
    (["dataset", "--n", "0"], "--n"),
]))
def test_usage_errors_are_one_line_and_run_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli(*args, "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("studio: error:") and needle in lines[0], r.stderr
    assert not out.exists()


def test_eps_from_x0_switch_is_recorded_and_changes_a_clipped_run(tmp_path):
    """--no-eps-from-x0 (diffusers' DDIM default) is a different chain from the default when x̂₀ is clipped,
    and the recipe records it so the run reproduces."""
    common = ["sample", "--model", "gmm", "--sampler", "ddim", "--steps", "8", "--batch", "2", "--seed", "3",
              "--label", "2", "--guidance", "cfg", "--scale", "6", "--x0", "clip", "--quiet", "--save-raw"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--no-eps-from-x0", "--out", str(tmp_path / "b")]) == 0
    ra, rb = (json.loads((tmp_path / k / "recipe.json").read_text()) for k in "ab")
    assert ra["eps_from_x0"] is True and rb["eps_from_x0"] is False
    xa, xb = (np.load(tmp_path / k / "trajectory.npz")["xt"][-1] for k in "ab")
    assert np.abs(xa - xb).max() > 1e-3
    assert main(["sample", "--recipe", str(tmp_path / "b" / "recipe.json"), "--quiet", "--save-raw",
                 "--out", str(tmp_path / "c")]) == 0
    assert np.array_equal(np.load(tmp_path / "c" / "trajectory.npz")["xt"][-1], xb)


# -- the words a first-time user reads ---------------------------------------------------------------------
def _all_parsers():
    import argparse

    from studio.cli import build_parser

    todo, seen = [build_parser()], []
    while todo:
        p = todo.pop()
        seen.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
    return seen


def test_help_names_studio_file_and_gui_takes_one(capsys):
    from studio.cli import build_parser, cmd_gui

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "studio [MODEL | RECIPE]" in text and "last model used" in text and "digits-text" in text
    args = build_parser().parse_args(["gui", "run.json"])  # `studio gui FILE` is `studio FILE`
    assert args.func is cmd_gui and args.target == "run.json"


def test_every_flag_has_help_and_guidance_speaks_of_prompts():
    for parser in _all_parsers():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
    (sample,) = [p for p in _all_parsers() if p.prog == "studio sample"]
    guidance = next(a for a in sample._actions if "--guidance" in a.option_strings)
    assert "prompt" in guidance.help and "cfg" in guidance.help


def test_a_missing_model_names_every_builtin(tmp_path, capsys):
    from studio.core.loading import BUILTINS

    assert main(["sample", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(name in err for name in BUILTINS)


def test_cfg_on_a_class_model_without_a_label_asks_for_a_label(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--guidance", "cfg", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--label" in err and "--prompt" not in err  # gmm refuses prompts: never suggest one


def test_a_resumed_sweep_says_how_many_cells_it_computed():
    import io

    from studio.sweep.progress import SweepProgress

    p = SweepProgress(16, already=13, stream=io.StringIO())
    p.update(3, force=True)
    assert "16/16 cells (3 now, 13 from an earlier run)" in p.stream.getvalue()


class StepClock:
    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_eval_estimates_the_time_left_for_all_settings():
    """The overall estimate weighs the settings by images × steps × evaluations per step, and counts only the
    work computed in this run (a setting found complete from an earlier run took no time)."""
    from studio.sweep.evaluate import OverallProgress, Setting, setting_work

    settings = [Setting("cfg w=3", steps=50), Setting("uncond", guidance="none", conditional=False, steps=50),
                Setting("ddim S=10", guidance="none", conditional=False, steps=10)]
    works = [setting_work(s, 100) for s in settings]
    assert works == [100 * 50 * 2, 100 * 50, 100 * 10]
    p = OverallProgress(works, clock=StepClock([0.0, 0.0, 100.0, 100.0]))
    assert p.unit_done(0.0).endswith("time left not known yet")  # found complete: no time measured
    line = p.unit_done(1.0)  # 100 s for 5000 units: 1000 units left take 20 s
    assert line.startswith("studio eval: 2/3 settings") and line.endswith("about 20s left")
    assert p.unit_done(1.0).endswith("done")


def test_eval_keeps_its_sweeps_in_the_cache_by_default(tmp_path, monkeypatch):
    from studio.core.loading import DEFAULT_MODEL_DIR
    from studio.sweep.evaluate import default_out

    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    a = default_out(DEFAULT_MODEL_DIR, 500, 0, None)
    assert a == default_out(DEFAULT_MODEL_DIR, 500, 0, None)  # the same command continues the same folder
    assert a.parent == tmp_path / "cache" / "eval"
    assert a != default_out(DEFAULT_MODEL_DIR, 100, 0, None) and a != default_out(DEFAULT_MODEL_DIR, 500, 1, None)
