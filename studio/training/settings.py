"""The settings of a training run, each declared once.

A trainer's configuration is a frozen dataclass whose fields are declared by :func:`setting`: an
:class:`~studio.core.options.Option` (default, kind, range, one line of help). The Python API takes
its defaults and its checks from these declarations (a value they do not allow is a one-line
:class:`~studio.core.options.OptionError`), the checkpoints record the settings under the same
names, and ``studio train`` derives its flags from them (:mod:`studio.training.cli_train`). A
trainer whose recipe differs from the common default declares the same option with its own default.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from ..core.options import Option, OptionError, schema
from ..data.captions import CAPTION_ORDERS
from .lr_schedule import SCHEDULES


def setting(option: Option, default: Any = dataclasses.MISSING, *, off_flag: str = "", off_help: str = "",
            flag_unit: float = 1.0) -> Any:
    """A config field declared by ``option``, with ``default`` in place of the option's own where a
    trainer's recipe differs. The command line: ``off_flag`` is a second flag that sets the value
    to None (``off_help`` says what that means); the flag's value times ``flag_unit`` is the field's
    (a limit given in minutes, kept in seconds)."""
    if default is not dataclasses.MISSING:
        option = dataclasses.replace(option, default=default)
    return dataclasses.field(default=option.default, metadata={
        "option": option, "off_flag": off_flag, "off_help": off_help, "flag_unit": flag_unit})


def flag(config_class, name: str) -> str:
    """The command-line flag of setting ``name`` (for messages that tell the user what to give)."""
    return schema(config_class)[name].cli_flag


def _count(help_text: str, low: int = 1) -> Option:
    return Option(kind="int", low=low, help=help_text)


STEPS = _count("optimizer steps: the length of the learning-rate schedule")
BATCH_SIZE = _count("training examples per step")
SEED = _count("seed of the initial weights and of every random draw of the run", low=0)
LR = Option(kind="float", low=0, low_open=True, help="peak learning rate of AdamW")
LR_SCHEDULE = Option(default="cosine", kind="choice", choices=SCHEDULES,
                     help="after the linear warm-up: cosine, a half-cosine decay to 5 % of the peak (with "
                          "--time-limit-min, kept fitted to the steps the limit allows), or constant")
WARMUP_STEPS = _count("steps of linear learning-rate warm-up", low=0)
WEIGHT_DECAY = Option(kind="float", low=0, help="AdamW's decoupled weight decay")
GRAD_CLIP = Option(kind="float", low=0, help="clip the gradient's norm to this (0: no clipping)")
CHECKPOINT_EVERY = _count("steps between checkpoints (0: only the last one)", low=0)
KEEP_CHECKPOINTS = _count("checkpoints kept on disk, the newest (0: all)", low=0)
TIME_LIMIT = Option(kind="float", low=0, low_open=True, optional=True, flag="--time-limit-min",
                    help="stop (checkpoint, then export) after this many minutes of wall clock")
LOG_EVERY = _count("steps per row of loss.csv (each row the mean over its steps)")
RESUME = Option(default=True, kind="bool", help="resume from the newest checkpoint in --out")
EXPORT = Option(default=True, kind="bool", flag=None, help="write final/ at the end")
DATASET_CACHE = Option(default="training-runs/cache", kind="str", optional=True, flag="--cache-dir",
                       help="where the rendered training set is cached as .npz (None: not cached)")
DATASET_N = _count("images in the training set")
DATASET_SEED = _count("seed of the rendered training set", low=0)
HELD_OUT_SEED = _count("seed of the rendered held-out set (another than the training set's)", low=0)
EMA_DECAY = Option(kind="float", low=0, high=1, low_open=True, high_open=True,
                   help="decay of the exponential moving average of the weights (the exported ones)")
P_UNCOND = Option(kind="float", low=0, high=1, high_open=True,
                  help="probability that a condition is replaced by the null one, training the "
                       "unconditional branch of classifier-free guidance")
SNR_GAMMA = Option(kind="float", low=0, low_open=True, optional=True,
                   help="γ of the Min-SNR-γ loss weighting (Hang et al. 2023)")
GRID_EVERY = Option(kind="int", low=1, optional=True,
                    help="steps between sample grids, made at checkpoints (None: at every checkpoint)")
GRID_STEPS = _count("sampler steps of the sample grids")
CAPTION_ORDER = Option(default="fixed", kind="choice", choices=CAPTION_ORDERS,
                       help="caption word orders: fixed (the digit's colour first, as v8 was trained) or varied "
                            "(half the captions name the background first or the colour after the digit)")
NETWORK = Option(kind="object", optional=True, flag=None,
                 help="the network's configuration (None: the shipped one)")


def min_snr_setting(default: float = 5.0) -> Any:
    """``snr_gamma``, with ``--no-min-snr`` for the plain MSE."""
    return setting(SNR_GAMMA, default, off_flag="--no-min-snr",
                   off_help="the plain MSE of Ho et al. 2020 (no Min-SNR weighting)")


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings (:func:`studio.training.fit.fit`), shared by every trainer."""

    steps: int = setting(STEPS, 1000)
    batch_size: int = setting(BATCH_SIZE, 64)
    seed: int = setting(SEED, 0)
    lr: float = setting(LR, 1e-3)
    lr_schedule: str = setting(LR_SCHEDULE)
    warmup_steps: int = setting(WARMUP_STEPS, 100)
    weight_decay: float = setting(WEIGHT_DECAY, 0.0)
    grad_clip: float = setting(GRAD_CLIP, 1.0)
    checkpoint_every: int = setting(CHECKPOINT_EVERY, 250)
    keep_checkpoints: int = setting(KEEP_CHECKPOINTS, 3)
    time_limit_s: Optional[float] = setting(TIME_LIMIT, None, flag_unit=60.0)
    log_every: int = setting(LOG_EVERY, 10)
    resume: bool = setting(RESUME)
    export: bool = setting(EXPORT)

    def __post_init__(self) -> None:
        for name, opt in schema(type(self)).items():
            value = getattr(self, name)
            object.__setattr__(self, name, opt.check(os.fspath(value) if isinstance(value, os.PathLike) else value))

    @classmethod
    def make(cls, config: "TrainConfig | None" = None, **changes) -> Any:
        """``config`` (default: the recipe this class declares) with ``changes``, checked."""
        unknown = sorted(set(changes) - set(schema(cls)))
        if unknown:
            raise OptionError(f"{cls.__name__} has no setting {', '.join(unknown)}; "
                              f"choose from {', '.join(schema(cls))}")
        if config is not None and not isinstance(config, cls):
            raise OptionError(f"expected a {cls.__name__}, got a {type(config).__name__}")
        return dataclasses.replace(config if config is not None else cls(), **changes)

    def recipe(self) -> dict:
        """The settings as JSON values (tuples become lists), as checkpoints and summaries record them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class DataConfig(TrainConfig):
    """A trainer that learns from a rendered training set."""

    dataset_cache: Optional[str] = setting(DATASET_CACHE)
    dataset_n: int = setting(DATASET_N, 60000)
    dataset_seed: int = setting(DATASET_SEED, 0)
