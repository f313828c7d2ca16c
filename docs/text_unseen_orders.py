"""digits-text on wordings that no training caption uses: the held-in (digit, fg, bg) rows of
``studio eval`` (seed 0) in each of :data:`UNSEEN`, w = 3, DDIM 50 steps, scored by text_eval's readers.

    python docs/text_unseen_orders.py FOLDER [FOLDER ...] [--n 200] [--json OUT.json]

The word-order group of ``studio eval`` uses two of v9's training templates; these two are not among
them (``studio/data/captions.py``), so they show whether the model reads the words around a colour or
the templates it was trained on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.evaluation.text_eval import generate, held_in_prompts, load_digit_reader, load_pipeline, reworded, score  # noqa: E402

UNSEEN = {"background first, colour after the digit": "on {bg} a {d} in {fg}",
          "the colour last": "the digit {d} on {bg}, in {fg}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    reader, out = load_digit_reader(), []
    _, rows = held_in_prompts(args.n, 0)
    for folder in args.folders:
        pipe = load_pipeline(folder)
        for name, template in UNSEEN.items():
            r = score(reader, generate(pipe, reworded(rows, template), 3.0), rows[:, 0], rows[:, 1], rows[:, 2])
            out.append({"model": folder, "wording": name, "template": template, "n": args.n,
                        **{k: r[k] for k in ("digit_accuracy", "fg_accuracy", "bg_accuracy", "all_three")}})
            print(json.dumps(out[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
