"""Metrics in the clean-image evaluator's features (:mod:`studio.evaluation.evaluator`).

- accuracy: the fraction of samples the evaluator reads as the requested digit;
- diversity (:func:`within_class_diversity`): mean pairwise feature distance within each class
  (Ho & Salimans 2022's fidelity/diversity trade-off);
- Fréchet distance (:func:`frechet`) between Gaussians fitted to sample and held-out-data
  features (Heusel et al. 2017, "FID", here in the evaluator's features:
  FD = ‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})).
"""
from __future__ import annotations

import numpy as np
import torch

HELD_OUT_SEED = 777  # the dataset seed of the held-out reference images: used by no trainer


@torch.no_grad()
def evaluator_outputs(evaluator, x: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    feats, preds = [], []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch]).float()
        f = evaluator.features(xb)
        feats.append(f.numpy())
        preds.append(evaluator.head(f).argmax(1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(preds)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets; tr((Σ₁Σ₂)^{1/2}) via Σ₁^{1/2} Σ₂ Σ₁^{1/2}."""
    m1, m2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r = _sqrtm_psd(c1)
    covmean_tr = np.trace(_sqrtm_psd(r @ c2 @ r))
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * covmean_tr)


def within_class_diversity(feats: np.ndarray, labels: np.ndarray) -> float:
    vals = []
    for c in np.unique(labels):
        f = feats[labels == c]
        if len(f) > 1:
            d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
            vals.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(np.mean(vals))
