"""Training the clean-image digit evaluator (:class:`studio.evaluation.evaluator.DigitEvaluator`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.options import Option
from ..data.digits import load_cached, to_float
from ..evaluation.evaluator import DigitEvaluator, accuracy
from .classifier import fit_and_export, save_module
from .fit import Clock, ProgressFn
from .settings import (BATCH_SIZE, CHECKPOINT_EVERY, DATASET_N, DATASET_SEED, HELD_OUT_SEED, KEEP_CHECKPOINTS, LR,
                       NETWORK, SEED, STEPS, WARMUP_STEPS, WEIGHT_DECAY, DataConfig, setting)


def save_evaluator(model: DigitEvaluator, directory, extra: dict | None = None) -> Path:
    return save_module(model, directory, extra)


EVALUATOR_DEFAULT = {"widths": (32, 64, 128), "feature_dim": 128}


@dataclass(frozen=True)
class EvaluatorConfig(DataConfig):
    """The shipped evaluator's recipe (assets/models/digits/README.md): trained on the dataset of
    seed 2 (the diffusion model and the guidance classifier use seed 0), tested on seed 3."""

    steps: int = setting(STEPS, 1500)
    batch_size: int = setting(BATCH_SIZE, 128)
    seed: int = setting(SEED, 2)
    lr: float = setting(LR, 2e-3)
    warmup_steps: int = setting(WARMUP_STEPS, 50)
    weight_decay: float = setting(WEIGHT_DECAY, 5e-4)
    checkpoint_every: int = setting(CHECKPOINT_EVERY, 300)
    keep_checkpoints: int = setting(KEEP_CHECKPOINTS, 2)
    dataset_n: int = setting(DATASET_N, 30000)
    dataset_seed: int = setting(DATASET_SEED, 2)
    model_config: Optional[dict] = setting(NETWORK, None)
    test_n: int = setting(Option(kind="int", low=0, help="held-out images of the test accuracy (0: no test)"), 5000)
    test_seed: int = setting(HELD_OUT_SEED, 3)


def train_evaluator(out_dir, config: EvaluatorConfig | None = None, *, progress: ProgressFn | None = None,
                    clock: Clock = time.monotonic, **settings) -> dict:
    """Train on clean images by ``config`` with ``settings`` (fields of :class:`EvaluatorConfig`)
    changed, report the held-out accuracy and export to ``out_dir/final``."""
    cfg = EvaluatorConfig.make(config, **settings)
    images, labels = load_cached(cfg.dataset_cache, cfg.dataset_n, cfg.dataset_seed)
    torch.manual_seed(cfg.seed)
    model = DigitEvaluator(**(cfg.model_config or EVALUATOR_DEFAULT))

    def loss(rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(0, images.shape[0], size=cfg.batch_size)
        x = to_float(images[idx])
        y = torch.from_numpy(labels[idx].copy())
        return F.cross_entropy(model(x), y, label_smoothing=0.05)

    def evaluate() -> dict:
        if not cfg.test_n:
            return {}
        t_images, t_labels = load_cached(cfg.dataset_cache, cfg.test_n, cfg.test_seed)
        return {"test_accuracy": round(accuracy(model, t_images, t_labels), 4),
                "test": {"n": cfg.test_n, "dataset_seed": cfg.test_seed}}

    return fit_and_export(out_dir, model, cfg, loss, evaluate, ("test_accuracy",), progress, clock)
