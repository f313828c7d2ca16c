"""Training the clean-image digit evaluator (:class:`studio.evaluation.evaluator.DigitEvaluator`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import json

import torch
import torch.nn.functional as F

from ..data.digits import load_cached, to_float
from ..evaluation.evaluator import DigitEvaluator, accuracy
from .classifier import save_module, train_loop

ProgressFn = Callable[[int, int, float, float], None]


def save_evaluator(model: DigitEvaluator, directory, extra: dict | None = None) -> Path:
    return save_module(model, directory, extra)


EVALUATOR_DEFAULT = {"widths": (32, 64, 128), "feature_dim": 128}


def train_evaluator(out_dir, steps: int = 1500, batch_size: int = 128, seed: int = 2,
                    lr: float = 2e-3, checkpoint_every: int = 300, resume: bool = True,
                    progress: ProgressFn | None = None, dataset_cache=None,
                    dataset_n: int = 30000, dataset_seed: int = 2, test_n: int = 5000,
                    test_seed: int = 3, model_config: dict | None = None,
                    time_limit_s: float | None = None, warmup_steps: int = 50,
                    weight_decay: float = 5e-4, export: bool = True) -> dict:
    """Train on clean images (dataset seed 2 by default; the diffusion model and the
    guidance classifier use seed 0) and report held-out accuracy on seed 3."""
    out_dir = Path(out_dir)
    images, labels = load_cached(dataset_cache, dataset_n, dataset_seed)
    torch.manual_seed(seed)
    model = DigitEvaluator(**(model_config or EVALUATOR_DEFAULT))

    def loss_fn(m, rng, gen):
        idx = rng.integers(0, images.shape[0], size=batch_size)
        x = to_float(images[idx])
        y = torch.from_numpy(labels[idx].copy())
        return F.cross_entropy(m(x), y, label_smoothing=0.05)

    summary = train_loop(model, out_dir, steps, batch_size, seed, lr, loss_fn, checkpoint_every,
                         resume, progress, time_limit_s, warmup_steps, weight_decay,
                         {"dataset_n": dataset_n, "dataset_seed": dataset_seed})
    if test_n:
        t_images, t_labels = load_cached(dataset_cache, test_n, test_seed)
        summary["test_accuracy"] = round(accuracy(model, t_images, t_labels), 4)
        summary["test"] = {"n": test_n, "dataset_seed": test_seed}
    summary["params"] = sum(p.numel() for p in model.parameters())
    if export:
        save_evaluator(model, out_dir / "final",
                       {"test_accuracy": summary.get("test_accuracy"), "train_steps": summary["step"]})
        summary["export"] = str(out_dir / "final")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
