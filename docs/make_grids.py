"""The README's sample grids of the built-in digits model, made with the studio's own engine.

    python docs/make_grids.py            # writes docs/digits.png and docs/samplers.png

digits.png: one row per digit, 10 samples each (DDIM 50 steps, CFG w = 3).
samplers.png: one row per sampler, one column per digit, the same initial noise in every
row of a column (CFG w = 3, each sampler at about 50 network evaluations).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.core.loading import load_model  # noqa: E402
from studio.core.samplers import SAMPLERS  # noqa: E402
from studio.session.frames import make_grid, to_uint8  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402
from studio.session.runner import Run  # noqa: E402

STEPS_FOR_50_EVALS = {"heun": 25, "langevin": 25}  # two evaluations per step


def final(model, **kw) -> torch.Tensor:
    return Run(Recipe(model="default", guidance="cfg", scale=3.0, **kw), model=model).run_to_end().final()


def main() -> int:
    torch.set_num_threads(1)
    model = load_model("default", "auto")
    rows = [to_uint8(final(model, sampler="ddim", steps=50, batch=10, seed=100 + d, label=d)) for d in range(10)]
    big = lambda a: Image.fromarray(a).resize((a.shape[1] * 2, a.shape[0] * 2), Image.NEAREST)  # noqa: E731
    big(make_grid(np.concatenate(rows), cols=10)).save(ROOT / "docs" / "digits.png")
    names = list(SAMPLERS)
    tiles = []
    for name in names:
        steps = STEPS_FOR_50_EVALS.get(name, 50)
        tiles += [to_uint8(final(model, sampler=name, steps=steps, batch=1, seed=200 + d, label=d)) for d in range(10)]
    big(make_grid(np.concatenate(tiles), cols=10)).save(ROOT / "docs" / "samplers.png")
    print("rows of docs/samplers.png:", ", ".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
