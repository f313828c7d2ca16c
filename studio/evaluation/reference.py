"""The reference statistics of the clean-image metrics: the evaluator's features of held-out
dataset images (the second Gaussian of the Fréchet distance, :func:`features.frechet`), and where
a model keeps its evaluator."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..core.file_hashes import folder_fingerprint
from ..data.digits import make_dataset, to_float
from ..session.atomic import write_files
from ..session.provenance import model_folder
from .evaluator import load_evaluator
from .features import HELD_OUT_SEED, evaluator_outputs


def evaluator_folder(model: str) -> Optional[Path]:
    """The clean-image evaluator beside a model's weights, or None."""
    folder = model_folder(model)
    if folder is not None and (folder / "evaluator" / "config.json").is_file():
        return folder / "evaluator"
    return None


def reference_features(out: Path, model: str, n: int) -> np.ndarray:
    """Evaluator features of ``n`` held-out dataset images (``studio eval``'s reference), kept in
    ``reference.npz`` beside the cells, recomputed when the evaluator's weights change."""
    folder = evaluator_folder(model)
    stamp = json.dumps({"n": n, "seed": HELD_OUT_SEED, "weights": folder_fingerprint(folder)}, sort_keys=True)
    path = Path(out) / "reference.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["stamp"]) == stamp:
                    return f["features"].astype(np.float64)
        except (OSError, ValueError, KeyError):
            pass
    evaluator = load_evaluator(folder).eval()
    images, _ = make_dataset(n, seed=HELD_OUT_SEED)
    with torch.no_grad():
        feats, _ = evaluator_outputs(evaluator, to_float(images).numpy())

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, features=feats.astype(np.float32), stamp=np.array(stamp))

    write_files({path: write}, overwrite=True)
    return feats.astype(np.float32).astype(np.float64)
