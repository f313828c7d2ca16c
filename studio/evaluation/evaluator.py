"""Clean-image digit classifier used to *evaluate* generated samples (trained by
:func:`studio.training.evaluator.train_evaluator`).

Trained only on clean images from a different dataset seed than the diffusion
model / guidance classifier, and tested on yet another seed. ``features(x)`` is
the penultimate layer (for FID-like statistics), ``logits(x)`` the class scores.
Input: float (B,3,32,32) in [-1, 1].
"""

from __future__ import annotations

import json
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.classifier_net import load_module
from ..data.digits import to_float

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


