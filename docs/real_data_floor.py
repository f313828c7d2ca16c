"""The model card's calibration line: what *real* held-out images score in `studio eval`'s metrics.

    python docs/real_data_floor.py        # ~10 s; prints one JSON line per dataset seed

500 rendered dataset images (seeds 901–903, used by no trainer) against the same 2,000-image
reference (seed 777) as `studio eval`: Fréchet distance, within-class diversity and evaluator
accuracy. A sample set cannot be expected to score below these.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from studio.core.loading import DEFAULT_MODEL_DIR
from studio.data.digits import make_dataset, to_float
from studio.evaluation.evaluator import load_evaluator
from studio.evaluation.features import HELD_OUT_SEED, evaluator_outputs, frechet, within_class_diversity


def main() -> int:
    torch.set_num_threads(2)
    ev = load_evaluator(DEFAULT_MODEL_DIR / "evaluator").eval()
    ref, _ = make_dataset(2000, seed=HELD_OUT_SEED)
    ref_feats, _ = evaluator_outputs(ev, to_float(ref).numpy())
    for seed in (901, 902, 903):
        x, y = make_dataset(500, seed=seed)
        feats, pred = evaluator_outputs(ev, to_float(x).numpy())
        y = np.asarray(y)
        print(json.dumps({"seed": seed, "n": len(y), "frechet": round(frechet(feats, ref_feats), 3),
                          "diversity": round(within_class_diversity(feats, y), 3),
                          "accuracy": float((pred == y).mean())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
