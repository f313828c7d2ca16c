"""Markdown tables of ``studio eval --json`` results, checked against the built-in model's targets.

``python -m studio.sweep.eval_report a.json [b.json …]`` merges result files (e.g. groups run in
parallel processes) and prints the model card's evaluation section.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# the targets of the built-in model issue: CFG w=3 ≥ 95 %, w=1 ≥ 80 %, classifier guidance ≥ 90 %,
# unconditional class fractions within [5 %, 20 %]
TARGETS = {"cfg w=3": 0.95, "cfg w=1": 0.80, "classifier": 0.90}
UNCOND_RANGE = (0.05, 0.20)


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def load(paths: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows.extend(json.loads(Path(p).read_text())["results"])
    return rows


def _guided_row(r: dict, target) -> str:
    met = f"≥ {target:.2f} | {_mark(r['accuracy'] >= target)} |" if target else "– | – |"
    return f"| {r['scale']:g} | {r['n']} | {r['accuracy']:.3f} | {r['diversity']:.3f} | {r['frechet']:.2f} | " + met


def cfg_table(rows: list[dict]) -> list[str]:
    cfg = sorted((r for r in rows if r["guidance"] == "cfg"), key=lambda r: r["scale"])
    out = ["| CFG w | n | accuracy | within-class diversity | Fréchet distance | target | met |",
           "|---|---|---|---|---|---|---|"]
    out += [_guided_row(r, TARGETS.get(f"cfg w={r['scale']:g}")) for r in cfg]
    if len(cfg) > 1:
        acc = [r["accuracy"] for r in cfg]
        div = [r["diversity"] for r in cfg]
        rising = all(b >= a for a, b in zip(acc, acc[1:]))
        falling = all(b <= a for a, b in zip(div, div[1:]))
        out.append("")
        out.append(f"Trade-off (Ho & Salimans 2022): accuracy non-decreasing in w: {_mark(rising)}; "
                   f"diversity non-increasing in w: {_mark(falling)}.")
    return out


def classifier_table(rows: list[dict]) -> list[str]:
    clf = sorted((r for r in rows if r["guidance"] == "classifier"), key=lambda r: r["scale"])
    out = ["| classifier scale s | n | accuracy | within-class diversity | Fréchet distance | target | met |",
           "|---|---|---|---|---|---|---|"]
    return out + [_guided_row(r, TARGETS["classifier"]) for r in clf]


def uncond_table(rows: list[dict]) -> list[str]:
    lo, hi = UNCOND_RANGE
    out = []
    for r in rows:
        if r["setting"] == "unconditional":
            fr = r["class_fractions"]
            out.append("| digit | " + " | ".join(str(k) for k in range(len(fr))) + " |")
            out.append("|---" * (len(fr) + 1) + "|")
            out.append("| fraction | " + " | ".join(f"{f:.3f}" for f in fr) + " |")
            ok = all(lo <= f <= hi for f in fr)
            out.append("")
            out.append(f"{r['n']} samples (DDIM {r['steps']} steps, null label); every digit within "
                       f"[{lo:.0%}, {hi:.0%}]: {_mark(ok)} (min {min(fr):.3f}, max {max(fr):.3f}); "
                       f"Fréchet distance {r['frechet']:.2f}.")
    return out


def ddim_table(rows: list[dict]) -> list[str]:
    table = {(r["eta"], r["steps"]): r for r in rows if r["setting"].startswith("ddim eta=")}
    if not table:
        return []
    steps = sorted({s for _, s in table})
    out = ["| η \\ steps | " + " | ".join(str(s) for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for eta in sorted({e for e, _ in table}):
        cells = [f"{table[(eta, s)]['frechet']:.2f}" if (eta, s) in table else "–" for s in steps]
        out.append(f"| {eta:g} | " + " | ".join(cells) + " |")
    first = next(iter(table.values()))
    held_out = f"{first['fd_reference']:,} held-out images" if "fd_reference" in first else "held-out images"
    out.append("")
    out.append(f"Fréchet distance in the evaluator's features to {held_out}; {first['n']} unconditional samples "
               "per cell, same seeds in every cell.")
    return out


def report(rows: list[dict]) -> str:
    parts = [("Classifier-free guidance (DDIM 50 steps, η = 0)", cfg_table(rows)),
             ("Classifier guidance (DDIM 50 steps, η = 0, the shipped noise-aware classifier)", classifier_table(rows)),
             ("Unconditional samples: class balance", uncond_table(rows)),
             ("DDIM Table 1 in miniature: Fréchet distance by η and steps", ddim_table(rows))]
    text = []
    for title, lines in parts:
        if len(lines) > 2:  # more than a table header
            text += [f"### {title}", "", *lines, ""]
    return "\n".join(text)


def main(argv=None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m studio.sweep.eval_report RESULTS.json [MORE.json …]", file=sys.stderr)
        return 2
    try:
        rows = load(paths)
        print(report(rows))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"eval_report: error: cannot read the results ({type(e).__name__}: {e}); "
              "pass files written by `studio eval --json`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
