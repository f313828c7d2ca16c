"""The trainers' recipes: the shared loop reproduces what each trainer did before it, and the
`studio train` commands of the model cards and the README parse into the settings they had.

Oracles: fingerprints of tiny runs of every trainer made by the code before the trainers shared
one loop (tests/data/training_fingerprints.json; tests/data/training_fingerprints.py says how),
and the commands as the cards print them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from studio.training import cli_train

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "assets" / "models" / "digits" / "README.md",
        ROOT / "assets" / "models" / "digits-text" / "README.md"]
# the --out folder of each shipped run's command in the model cards
SHIPPED_RUNS = {"diffusion": "training-runs/diffusion-c24-cos", "classifier": "training-runs/classifier",
                "evaluator": "training-runs/evaluator", "vae": "training-runs/v6-vae",
                "text-encoder": "training-runs/v9-text", "text-diffusion": "training-runs/v9-unet"}
PREFIXES = ("studio train ", "python -m studio.training.cli_train train ")


def _fingerprints_module():
    spec = importlib.util.spec_from_file_location("training_fingerprints", ROOT / "tests" / "data" /
                                                  "training_fingerprints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FP = _fingerprints_module()


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- the same runs
@pytest.mark.slow  # six trainings, tiny
def test_one_loop_reproduces_every_trainer_before_it(tmp_path, threads):
    """Each trainer, on the shipped recipe's settings (tiny networks, 12 steps), logs the same loss at
    step 10 and ends with the same weights as before the trainers shared :func:`fit`: the same draws
    in the same order, so old checkpoints resume exactly and the cards' commands remake the models."""
    want = json.loads(FP.FIXTURE.read_text())
    got = FP.fingerprints(tmp_path)
    assert set(got) == set(want) == set(cli_train.TRAINERS)
    for trainer, w in want.items():
        g = got[trainer]
        assert g["loss_at_10"] == pytest.approx(w["loss_at_10"], rel=1e-5), trainer
        if w["progress_losses"] is not None:
            assert g["progress_losses"] == pytest.approx(w["progress_losses"], rel=1e-5), trainer
        assert g["weights_l1"] == pytest.approx(w["weights_l1"], rel=1e-5), trainer
    rows = (tmp_path / "diffusion" / "loss.csv").read_text().splitlines()
    assert rows[1].startswith(f"10,{want['diffusion']['loss_at_10']:.6f},")  # what loss.csv logs at step 10


# ----------------------------------------------------------------------------- the cards' commands
def commands(text: str) -> list[str]:
    """Every concrete `studio train …` (or `python -m studio.training.cli_train train …`) command
    of a Markdown text: lines of code blocks (fenced or indented; ``\\`` continuations joined) and
    inline code spans (which may wrap)."""
    found, fenced = [], False
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif (fenced or line.startswith("    ")) and line.strip().startswith(PREFIXES):
            found.append(line.strip())
    spans = re.finditer(r"`((?:studio|python -m studio\S*) train\s[^`]*)`", text)
    found += [" ".join(m.group(1).split()) for m in spans]
    # not a pattern (`{diffusion,classifier}`, `TRAINER --out DIR`), nor a request for the help
    return [c for c in found if not re.search(r"[{|…]|--help|\b[A-Z]{2,}\b", c)]


def parse(command: str):
    """The namespace the real parser makes of ``command`` (a fragment without --out gets one)."""
    from studio.cli import build_parser

    argv = shlex.split(command)
    parser, argv = (cli_train.build_parser(), argv[3:]) if argv[0] == "python" else (build_parser(), argv[1:])
    if "--out" not in argv:
        argv += ["--out", "unused"]
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"does not parse: {command}")


DOC_COMMANDS = [(doc.relative_to(ROOT).as_posix(), c) for doc in DOCS for c in commands(doc.read_text())]


@pytest.mark.parametrize("doc,command", DOC_COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in DOC_COMMANDS])
def test_every_documented_train_command_parses(doc, command):
    args = parse(command)
    assert isinstance(cli_train.config_from_args(args), cli_train.TRAINERS[args.trainer].config)


@pytest.mark.slow
def test_the_documents_name_every_trainer_and_shipped_run():
    named = {parse(c).trainer for _, c in DOC_COMMANDS}
    assert named == set(cli_train.TRAINERS)
    for trainer, out in SHIPPED_RUNS.items():
        assert shipped_configs(trainer), f"no `studio train {trainer} --out {out}` in the model cards"


def shipped_configs(trainer: str) -> list:
    configs = []
    for _, c in DOC_COMMANDS:
        args = parse(c)
        if args.trainer == trainer and args.out == SHIPPED_RUNS[trainer]:
            configs.append(cli_train.config_from_args(args))
    return configs


@pytest.mark.parametrize("trainer", list(SHIPPED_RUNS))
def test_the_cards_commands_give_the_fingerprinted_recipes(trainer):
    """The settings the fingerprints were made with are those of the shipped runs' commands."""
    configs = shipped_configs(trainer)
    assert configs and all(c == configs[0] for c in configs)  # a card that repeats a command repeats it whole
    for name, value in FP.RECIPES[trainer].items():
        assert getattr(configs[0], name) == value, name
    if trainer == "text-diffusion":
        assert configs[0].text_encoder_init is not None  # conditioned on the pretrained encoder, frozen
    if trainer in ("text-encoder", "text-diffusion"):  # v9: captions in every word order (issue #30)
        assert configs[0].caption_orders == "varied"


def test_the_diffusion_defaults_are_the_shipped_recipe():
    """`studio train diffusion` and `train_diffusion()` default to the shipped run's settings, with
    the 4,371 steps its time limit fitted in place of the limit."""
    from studio.training.diffusion import DiffusionConfig

    (shipped,) = {json.dumps(dataclasses.asdict(c)) for c in shipped_configs("diffusion")}
    shipped = DiffusionConfig(**json.loads(shipped))
    assert shipped.time_limit_s == 56 * 60 and shipped.steps == 20000
    assert dataclasses.replace(shipped, steps=4371, time_limit_s=None) == DiffusionConfig()


@pytest.mark.parametrize("trainer", list(cli_train.TRAINERS))
def test_the_command_line_and_the_api_share_their_defaults(trainer):
    args = parse(f"studio train {trainer} --out run")
    assert cli_train.config_from_args(args) == cli_train.TRAINERS[trainer].config()
    assert args.threads == cli_train.THREADS.default


# ----------------------------------------------------------------------------- refusals
def test_a_flag_of_another_trainer_is_a_one_line_usage_error(tmp_path, capsys):
    from studio.cli import main

    for argv, needle in [(["vae", "--snr-gamma", "5"], "--snr-gamma applies to diffusion, text-diffusion, not vae"),
                         (["text-encoder", "--cache-dir", "c"], "--cache-dir applies to diffusion, classifier, "
                                                                "evaluator, vae, text-diffusion, not text-encoder"),
                         (["classifier", "--no-zero-terminal-snr"], "applies to text-diffusion, not classifier"),
                         (["diffusion", "--ema-decay", "1.5"], "argument --ema-decay: must be a number"),
                         (["diffusion", "--snr-gamma", "5", "--no-min-snr"], "not allowed with"),
                         (["diffusion", "--time-limit-min", "0"], "argument --time-limit-min: must be a number > 0")]:
        with pytest.raises(SystemExit) as e:
            main(["train", *argv, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_an_unknown_or_bad_setting_in_one_line(tmp_path):
    from studio.core.options import OptionError
    from studio.training.diffusion import train_diffusion
    from studio.training.vae_train import train_vae

    with pytest.raises(OptionError, match="DiffusionConfig has no setting stroke_weight"):
        train_diffusion(tmp_path / "d", stroke_weight=4.0)
    with pytest.raises(OptionError, match=r"^lr must be a number > 0, got -1$"):
        train_vae(tmp_path / "v", lr=-1)
    assert not any(tmp_path.iterdir())


def test_minutes_on_the_command_line_are_seconds_in_the_api():
    args = parse("studio train vae --out run --time-limit-min 11")
    assert cli_train.config_from_args(args).time_limit_s == 660.0
