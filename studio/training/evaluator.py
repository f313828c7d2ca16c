"""Clean-image digit classifier used to *evaluate* generated samples.

Trained only on clean images from a different dataset seed than the diffusion
model / guidance classifier, and tested on yet another seed. ``features(x)`` is
the penultimate layer (for FID-like statistics), ``logits(x)`` the class scores.
Input: float (B,3,32,32) in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .classifier import load_module, save_module, train_loop
from .dataset import load_cached, to_float

ProgressFn = Callable[[int, int, float, float], None]


def _conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DigitEvaluator(nn.Module):
    CLASS_NAME = "DigitEvaluator"

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 feature_dim: int = 128, num_classes: int = 10, sample_size: int = 32):
        super().__init__()
        self._config = {"in_channels": int(in_channels), "widths": [int(w) for w in widths],
                        "feature_dim": int(feature_dim), "num_classes": int(num_classes),
                        "sample_size": int(sample_size)}
        layers = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [_conv_bn(c, w), _conv_bn(w, w)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, feature_dim)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def config(self) -> dict:
        return {"_class_name": self.CLASS_NAME, **json.loads(json.dumps(self._config)),
                "input_range": [-1.0, 1.0]}

    @classmethod
    def from_config(cls, config: dict) -> "DigitEvaluator":
        keys = ("in_channels", "widths", "feature_dim", "num_classes", "sample_size")
        return cls(**{k: config[k] for k in keys if k in config})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (B, feature_dim)."""
        h = self.body(x).mean(dim=(2, 3))
        return F.relu(self.fc(h))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def save_evaluator(model: DigitEvaluator, directory, extra: dict | None = None) -> Path:
    return save_module(model, directory, extra)


def load_evaluator(directory) -> DigitEvaluator:
    return load_module(directory, DigitEvaluator)


@torch.no_grad()
def accuracy(model: DigitEvaluator, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        pred = model.logits(to_float(images[i:i + batch])).argmax(1)
        correct += (pred.numpy() == labels[i:i + batch]).sum()
    return float(correct) / len(images)


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
