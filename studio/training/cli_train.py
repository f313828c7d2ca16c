"""Command-line entry points for dataset generation and training.

The main ``studio`` CLI registers these with :func:`add_dataset_parser` and
:func:`add_train_parser`; until then they can be run as
``python -m studio.training.cli_train {dataset,train} ...``.

    studio dataset --out DIR --n N [--seed S]
    studio train {diffusion,classifier,evaluator,vae,text-encoder,text-diffusion} --out DIR [--steps N]
                 [--batch-size B] [--seed S] [--resume/--no-resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..core.arg_types import fraction, positive
from .ckpt import format_eta
from .unet_config import UNET_PRESETS

DEFAULTS = {
    # kind: (steps, batch_size, seed, lr); diffusion: the shipped model's recipe (its run was
    # asked for 20,000 steps under --time-limit-min 56 and fitted them to 4,371)
    "diffusion": (4371, 64, 0, 1.2e-3),
    "classifier": (3000, 128, 1, 1e-3),
    "evaluator": (1500, 128, 2, 2e-3),
    # the text-to-image model digits-text (assets/models/digits-text/README.md)
    "vae": (3000, 64, 0, 1e-3),
    "text-diffusion": (20000, 64, 0, 1e-3),
    "text-encoder": (600, 256, 0, 1e-3),
}


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


def _threads(args) -> None:
    import torch

    n = getattr(args, "threads", None)
    if n:
        torch.set_num_threads(int(n))


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


def _common(args, kind: str) -> dict:
    steps, bs, seed, lr = DEFAULTS[kind]
    return {
        "out_dir": args.out,
        "steps": args.steps if args.steps is not None else steps,
        "batch_size": args.batch_size if args.batch_size is not None else bs,
        "seed": args.seed if args.seed is not None else seed,
        "lr": args.lr if args.lr is not None else lr,
        "resume": args.resume,
        "progress": ProgressBar(kind),
        "dataset_cache": args.cache_dir,
        "time_limit_s": args.time_limit_min * 60.0 if args.time_limit_min else None,
    }


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from .diffusion import train_diffusion

    _threads(args)
    kw = _common(args, "diffusion")
    if args.checkpoint_every is not None:
        kw["checkpoint_every"] = args.checkpoint_every
    if args.ema_decay is not None:
        kw["ema_decay"] = args.ema_decay
    if args.grid_every is not None:
        kw["grid_every"] = args.grid_every
    kw["snr_gamma"] = None if args.no_min_snr else args.snr_gamma
    kw["lr_schedule"] = args.lr_schedule
    if args.unet is not None:
        from .unet_config import unet_config

        kw["unet_config"] = unet_config(UNET_PRESETS[args.unet])
    summary = train_diffusion(**kw)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from .classifier import train_classifier

    _threads(args)
    kw = _common(args, "classifier")
    if args.checkpoint_every is not None:
        kw["checkpoint_every"] = args.checkpoint_every
    summary = train_classifier(**kw)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def cmd_train_evaluator(args: argparse.Namespace) -> int:
    from .evaluator import train_evaluator

    _threads(args)
    kw = _common(args, "evaluator")
    if args.checkpoint_every is not None:
        kw["checkpoint_every"] = args.checkpoint_every
    summary = train_evaluator(**kw)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .vae_train import train_vae

    if args.decoder_only and args.init_from is None:
        raise ValueError("--decoder-only needs --init-from FOLDER: the final/ folder of a `studio train vae` run")
    if args.init_from is not None and not (Path(args.init_from) / "config.json").is_file():
        raise ValueError(f"--init-from {args.init_from}: no config.json; give the final/ folder of a `studio train vae` run")
    _threads(args)
    kw = _common(args, "vae")
    if args.checkpoint_every is not None:
        kw["checkpoint_every"] = args.checkpoint_every
    kw["init_from"] = args.init_from
    kw["decoder_only"] = args.decoder_only
    kw["stroke_weight"] = args.stroke_weight or 0.0
    summary = train_vae(**kw)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def cmd_train_text_diffusion(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .text_diffusion import train_text_diffusion

    if args.vae is None or not (Path(args.vae) / "config.json").is_file():
        raise ValueError("text-diffusion needs --vae FOLDER: the final/ folder of `studio train vae`")
    if args.text_encoder is not None:
        from .text_pretrain import check_pretrained_folder

        check_pretrained_folder(args.text_encoder)
    _threads(args)
    kw = _common(args, "text-diffusion")
    kw["vae_dir"] = args.vae
    for name in ("checkpoint_every", "ema_decay", "grid_every", "p_uncond"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    kw["snr_gamma"] = None if args.no_min_snr else args.snr_gamma
    kw["text_encoder_init"] = args.text_encoder
    kw["zero_terminal_snr"] = args.zero_terminal_snr
    kw["prediction_type"] = args.prediction_type
    summary = train_text_diffusion(**kw)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


def cmd_train_text_encoder(args: argparse.Namespace) -> int:
    from .text_pretrain import pretrain_text_encoder

    _threads(args)
    steps, bs, seed, lr = DEFAULTS["text-encoder"]
    summary = pretrain_text_encoder(args.out, steps=args.steps or steps, batch_size=args.batch_size or bs,
                                    seed=seed if args.seed is None else args.seed, lr=args.lr or lr,
                                    progress=ProgressBar("text-encoder"))
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


_TRAIN_CMDS = {
    "diffusion": cmd_train_diffusion,
    "classifier": cmd_train_classifier,
    "evaluator": cmd_train_evaluator,
    "vae": cmd_train_vae,
    "text-diffusion": cmd_train_text_diffusion,
    "text-encoder": cmd_train_text_encoder,
}


def cmd_train(args: argparse.Namespace) -> int:
    # the allocator is tuned for training (runtime.TRAIN_MMAP_MB) by the `studio` entry point,
    # studio.cli.console_main, not here: cli.main(argv) leaves the process as it is
    return _TRAIN_CMDS[args.what](args)


def add_dataset_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("dataset", help="render the synthetic digits dataset to PNGs")
    p.add_argument("--out", required=True, help="output folder (images/ + labels.csv)")
    p.add_argument("--n", type=positive(int), required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_dataset)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the digits diffusion model / classifiers")
    p.add_argument("what", choices=sorted(_TRAIN_CMDS), help="which model to train")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, export)")
    p.add_argument("--steps", type=positive(int), default=None)
    p.add_argument("--batch-size", type=positive(int), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lr", type=positive(float), default=None)
    p.add_argument("--ema-decay", type=fraction, default=None, help="diffusion only")
    p.add_argument("--unet", choices=list(UNET_PRESETS), default=None,
                   help="diffusion only: UNet size preset (default: the shipped configuration)")
    p.add_argument("--snr-gamma", type=positive(float), default=5.0,
                   help="diffusion only: γ of the Min-SNR-γ loss weighting (Hang et al. 2023; default 5)")
    p.add_argument("--no-min-snr", action="store_true",
                   help="diffusion only: the plain ε-MSE of Ho et al. 2020 (no Min-SNR weighting)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                   help="diffusion only: cosine decay to 5 %% after the warm-up (default; with "
                        "--time-limit-min, fitted to the steps the limit allows) or constant")
    p.add_argument("--checkpoint-every", type=positive(int), default=None, help="steps between checkpoints")
    p.add_argument("--grid-every", type=positive(int), default=None,
                   help="diffusion only: steps between sample grids (default: every checkpoint)")
    p.add_argument("--time-limit-min", type=positive(float), default=None,
                   help="stop (checkpoint + export) after this many minutes")
    p.add_argument("--cache-dir", default="training-runs/cache",
                   help="where the in-memory training set is cached as .npz")
    p.add_argument("--threads", type=positive(int), default=2, help="torch CPU threads")
    p.add_argument("--vae", default=None,
                   help="text-diffusion only: the trained autoencoder (the final/ folder of `train vae`)")
    p.add_argument("--text-encoder", default=None,
                   help="text-diffusion only: start the text encoder from this pretrained one "
                        "(the final/ folder of `train text-encoder`)")
    p.add_argument("--p-uncond", type=fraction, default=None,
                   help="text-diffusion only: probability that a caption is replaced by the empty "
                        "prompt, training the unconditional branch of CFG (default 0.1)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                   help="text-diffusion only: what the UNet predicts (default epsilon; v_prediction "
                        "with --zero-terminal-snr)")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="text-diffusion only: rescale the noise schedule so its last step is pure noise "
                        "(Lin et al. 2024), with trailing timesteps and v-prediction")
    p.add_argument("--init-from", default=None,
                   help="vae only: start from this trained autoencoder folder")
    p.add_argument("--decoder-only", action="store_true",
                   help="vae only: fine-tune only the decoder of --init-from (the latent space stays the same)")
    p.add_argument("--stroke-weight", type=positive(float), default=None,
                   help="vae only: weigh the reconstruction error of the digit's pixels by 1 + this "
                        "(default: no weighting)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from the newest checkpoint in --out (default: yes)")
    p.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.training.cli_train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_dataset_parser(sub)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
