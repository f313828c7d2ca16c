"""The reference statistics of the clean-image metrics: the evaluator's features of held-out
dataset images (the second Gaussian of the Fréchet distance, :func:`features.frechet`), and where
a model keeps its evaluator."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.file_hashes import folder_fingerprint
from ..data.digits import NUM_CLASSES, make_dataset, to_float
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


def reference_features(out: Path, model: str, n: int, labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """Evaluator features of ``n`` held-out dataset images (``studio eval``'s reference), kept in
    ``reference.npz`` beside the cells, recomputed when the evaluator's weights change. ``labels``: only
    images of these classes (about ``n`` of them; None: every class), so that samples asked for some
    digits are compared with those digits, not with all ten (a file per set of labels)."""
    folder = evaluator_folder(model)
    wanted = None if labels is None else sorted({int(k) for k in labels})
    stamp = json.dumps({"n": n, "seed": HELD_OUT_SEED, "weights": folder_fingerprint(folder),
                        **({"labels": wanted} if wanted is not None else {})}, sort_keys=True)
    name = "reference.npz" if wanted is None else f"reference-labels-{'-'.join(map(str, wanted))}.npz"
    path = Path(out) / name
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["stamp"]) == stamp:
                    return f["features"].astype(np.float64)
        except (OSError, ValueError, KeyError):
            pass
    evaluator = load_evaluator(folder).eval()
    if wanted is None:
        images, _ = make_dataset(n, seed=HELD_OUT_SEED)
    else:  # the held-out set is balanced over the classes: draw enough of it for n images of these
        images, drawn = make_dataset(math.ceil(n * NUM_CLASSES / max(len(wanted), 1)), seed=HELD_OUT_SEED)
        images = images[np.isin(drawn, wanted)]
    with torch.no_grad():
        feats, _ = evaluator_outputs(evaluator, to_float(images).numpy())

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, features=feats.astype(np.float32), stamp=np.array(stamp))

    write_files({path: write}, overwrite=True)
    return feats.astype(np.float32).astype(np.float64)
