"""Command-line entry points for dataset generation and training.

The main ``studio`` CLI registers these with :func:`add_dataset_parser` and
:func:`add_train_parser`; they also run as ``python -m studio.training.cli_train {dataset,train} ...``.

    studio dataset --out DIR --n N [--seed S]
    studio train TRAINER --out DIR [flags]

``TRAINER`` is one of :data:`TRAINERS`; each has a sub-command whose flags are derived from its
configuration's declarations (:mod:`studio.training.settings`: type, range, default, help), so a
flag means the same here as the setting of that name in the Python API, and a flag of another
trainer is a usage error that names the trainers taking it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ..core.arg_types import positive
from ..core.options import Option, OptionError, schema
from .classifier import ClassifierConfig, train_classifier
from .diffusion import DiffusionConfig, train_diffusion
from .evaluator import EvaluatorConfig, train_evaluator
from .settings import TrainConfig
from .text_diffusion import TextDiffusionConfig, train_text_diffusion
from .text_pretrain import TextEncoderConfig, pretrain_text_encoder
from .vae_train import VaeConfig, train_vae

THREADS = Option(default=2, kind="int", low=1, help="torch CPU threads").named("threads")


@dataclass(frozen=True)
class Trainer:
    """One ``studio train`` sub-command: its configuration class and the function that trains."""

    config: type
    run: Callable[..., dict]  # run(out_dir, config=..., progress=...) -> summary
    help: str


TRAINERS = {
    "diffusion": Trainer(DiffusionConfig, train_diffusion, "the class-conditional digits UNet (the model digits)"),
    "classifier": Trainer(ClassifierConfig, train_classifier, "the noise-aware classifier for classifier guidance"),
    "evaluator": Trainer(EvaluatorConfig, train_evaluator, "the clean-image digit evaluator of `studio eval`"),
    "vae": Trainer(VaeConfig, train_vae, "the autoencoder of digits-text"),
    "text-encoder": Trainer(TextEncoderConfig, pretrain_text_encoder,
                            "the text encoder of digits-text, pretrained on what the captions say"),
    "text-diffusion": Trainer(TextDiffusionConfig, train_text_diffusion,
                              "the text-conditioned latent UNet of digits-text"),
}


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, r = divmod(seconds, 3600)
    m, s = divmod(r, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """Plain ``\\r`` progress line on stderr: step/total, loss, s/it and ETA."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.5):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.time()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, step: int, total: int, loss: float, eta_s: float) -> None:
        now = time.time()
        if step < total and now - self._last < self.min_interval:
            return
        self._last = now
        width = 24
        frac = min(1.0, step / max(1, total))
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        loss_s = f" loss {loss:.4f}" if loss == loss else ""  # NaN: no loss (dataset)
        line = (f"{self.label} [{bar}] {step}/{total}{loss_s} "
                f"elapsed {format_eta(now - self._t0)} eta {format_eta(eta_s)}")
        if self._tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        if step >= total:
            self.stream.write("\n" if self._tty else "")
        self.stream.flush()


def cmd_dataset(args: argparse.Namespace) -> int:
    from ..data.digits import write_dataset

    bar = ProgressBar("dataset")
    t0 = time.time()

    def prog(i, n):
        if i % 100 == 0 or i == n:
            el = time.time() - t0
            bar(i, n, float("nan"), el / i * (n - i))

    out = write_dataset(args.out, args.n, args.seed, progress=prog)
    print(f"wrote {args.n} images to {out}/images and {out}/labels.csv", file=sys.stderr)
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The trainer's configuration: its declared defaults with the flags given."""
    cls = TRAINERS[args.trainer].config
    return cls(**{name: getattr(args, name) for name in schema(cls) if hasattr(args, name)})


def cmd_train(args: argparse.Namespace) -> int:
    # the allocator is tuned for training (runtime.TRAIN_MMAP_MB) by the `studio` entry point,
    # studio.cli.console_main, not here: cli.main(argv) leaves the process as it is
    import torch

    config = config_from_args(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        summary = TRAINERS[args.trainer].run(args.out, config=config, progress=ProgressBar(args.trainer))
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def add_dataset_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("dataset", help="render the synthetic digits dataset to PNGs")
    p.add_argument("--out", required=True, help="output folder (images/ + labels.csv)")
    p.add_argument("--n", type=positive(int), required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the data generation (default 0)")
    p.set_defaults(func=cmd_dataset)
    return p


# ----------------------------------------------------------------------------- flags from declarations
def _value_type(opt: Option, unit: float):
    """argparse ``type=``: the text as the option's kind, checked by the declaration (a one-line usage
    error otherwise), times ``unit``."""
    cast = int if opt.kind == "int" else float if opt.kind == "float" else str
    allowed = dataclasses.replace(opt, optional=False).allowed()

    def parse(text: str):
        try:
            value = opt.check(cast(text))
        except (ValueError, OptionError):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        return value * unit if unit != 1.0 else value
    parse.__name__ = opt.kind
    return parse


def _help(opt: Option, unit: float) -> str:
    default = opt.default
    if opt.kind == "bool":
        shown = opt.cli_flag if default else "--no-" + opt.cli_flag[2:]
    elif default is None:
        shown = None
    else:
        shown = f"{default / unit:g}" if isinstance(default, float) else default
    text = opt.help + ("" if shown is None else f" (default: {shown})")
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, config_class) -> list[str]:
    """One flag per declared setting of ``config_class`` that has a flag; returns the flags."""
    meta = {f.name: f.metadata for f in dataclasses.fields(config_class)}
    flags = []
    for name, opt in schema(config_class).items():
        if opt.cli_flag is None:
            continue
        m = meta[name]
        kw: dict = {"dest": name, "default": argparse.SUPPRESS, "help": _help(opt, m["flag_unit"])}
        if opt.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
            flags.append("--no-" + opt.cli_flag[2:])
        elif opt.kind == "choice":
            kw["choices"] = list(opt.choices)
        else:
            kw["type"] = _value_type(opt, m["flag_unit"])
            kw["metavar"] = "DIR" if opt.kind == "str" else "MINUTES" if m["flag_unit"] == 60.0 else name.upper()
        group = parser.add_mutually_exclusive_group() if m["off_flag"] else parser
        group.add_argument(opt.cli_flag, **kw)
        flags.append(opt.cli_flag)
        if m["off_flag"]:
            group.add_argument(m["off_flag"], dest=name, action="store_const", const=None,
                               default=argparse.SUPPRESS, help=m["off_help"])
            flags.append(m["off_flag"])
    return flags


class _Elsewhere(argparse.Action):
    """A flag of other trainers: a one-line usage error naming them."""

    def __init__(self, option_strings, dest, owners: tuple = (), trainer: str = "", **kw):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.owners, self.trainer = owners, trainer

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} applies to {', '.join(self.owners)}, not {self.trainer}; leave it out")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the built-in models: " + ", ".join(TRAINERS),
                              description="Train one of the built-in models' networks; "
                                          "`studio train TRAINER --help` lists its settings.")
    sub = p.add_subparsers(dest="trainer", metavar="TRAINER", required=True)
    parsers, owned = {}, {}
    for name, trainer in TRAINERS.items():
        q = sub.add_parser(name, help=trainer.help, description=f"Train {trainer.help}.")
        q.add_argument("--out", required=True, help="run folder (checkpoints, logs, export)")
        owned[name] = add_config_flags(q, trainer.config)
        q.add_argument("--threads", type=_value_type(THREADS, 1.0), default=THREADS.default,
                       help=_help(THREADS, 1.0))
        q.set_defaults(func=cmd_train)
        parsers[name] = q
    for name, q in parsers.items():
        others = sorted({f for flags in owned.values() for f in flags} - set(owned[name]))
        for f in others:
            q.add_argument(f, action=_Elsewhere, owners=tuple(n for n in TRAINERS if f in owned[n]), trainer=name)
    return p


def build_parser() -> argparse.ArgumentParser:
    """``python -m studio.training.cli_train``: ``dataset`` and ``train`` as ``studio`` has them."""
    parser = argparse.ArgumentParser(prog="python -m studio.training.cli_train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_dataset_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
