"""Make docs/attention_v9.png and docs/attention_v8.png: where the digit and colour words look, per word order.

Rows are prompts for one (digit, foreground, background) triple: the canonical caption and the
background-first one (``--forms`` adds the colour-after one), each drawn from the same noise (DDIM 50
steps, CFG w = 3, text_eval's generator). Columns: the sample, then the cross-attention maps of the
digit word, the foreground colour word and the background colour word, averaged over the steps,
upsampled to the image and overlaid on the sample (inferno, each map to its own maximum), with the
digit's pixels outlined (text_eval's foreground pixels) and each map's share on them against the
digit's area (studio/evaluation/attention_share.py measures the same over many samples).

    .venv/bin/python docs/make_attention_evidence.py --label "digits-text v9"    # the shipped folder
    .venv/bin/python docs/make_attention_evidence.py --model V8_FOLDER --out docs/attention_v8.png \
        --label "digits-text v8 (shipped)"

where V8_FOLDER is ``assets/models/digits-text`` as of git d5b5b14 (``git archive d5b5b14
assets/models/digits-text | tar -x -C /tmp/v8``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.data.captions import COLOUR_NAMES
from studio.evaluation.attention_share import (
    PROMPT_FORMS,
    ShareError,
    digit_masks,
    form_prompts,
    normalised_maps,
    sample_with_attention,
    token_roles,
)

SHOWN_ROLES = ("digit", "fg_colour", "bg_colour")
ROLE_TITLES = {"digit": "digit word", "fg_colour": "digit's colour word", "bg_colour": "background colour word"}
FORM_TITLES = {"canonical": "canonical", "background_first": "background first", "colour_after": "colour after the digit"}


def row_panels(pipe, prompt: str, seed: int):
    """(sample uint8 (H, W, 3), digit mask (H, W), {role: (word, map (H, W) summing to 1)}) of one prompt."""
    s = sample_with_attention(pipe, [prompt], seed=seed, batch=1)
    image, mask = s.images[0], digit_masks(s.images)[0]
    tokens = [pipe.tokenizer.decode([i]).strip() for i in pipe.tokenizer(prompt).input_ids]
    maps = {}
    for role, positions in token_roles(pipe.tokenizer, prompt).items():
        if role in SHOWN_ROLES:
            word_map = s.maps[0][:, positions].mean(axis=1)  # (steps, h, w)
            up = normalised_maps(word_map, mask.shape).mean(axis=0)
            maps[role] = (" ".join(tokens[p] for p in positions), up)
    return image, mask, maps


def draw(rows, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(SHOWN_ROLES)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 3.3 * len(rows) + 0.5), squeeze=False,
                             layout="constrained")
    for r, (form, prompt, reading, image, mask, maps) in enumerate(rows):
        area = float(mask.mean())
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # under the maps
        ax = axes[r][0]
        ax.imshow(image, interpolation="nearest")
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
        ax.set_title(f"{FORM_TITLES.get(form, form)}:\n\"{prompt}\"", fontsize=9, loc="left")
        ax.set_xlabel(f"read: {reading}\ndigit area {area:.2f} (chance)", fontsize=8.5)
        for c, role in enumerate(SHOWN_ROLES, start=1):
            ax = axes[r][c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if role in maps:
                word, m = maps[role]
                ax.imshow(m, cmap="inferno", alpha=0.75, interpolation="bilinear", vmin=0, vmax=float(m.max()))
                ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
                share = float((m * mask).sum())
                ax.set_title(f"{ROLE_TITLES[role]}: \"{word}\"", fontsize=9)
                ax.set_xlabel(f"on the digit {share:.2f}  ({share / max(area, 1e-6):.1f}× chance)", fontsize=8.5)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="figure of the digit and colour words' attention maps, per word order")
    p.add_argument("--model", default=str(ROOT / "assets" / "models" / "digits-text"))
    p.add_argument("--out", default=str(ROOT / "docs" / "attention_v9.png"))
    p.add_argument("--digit", type=int, default=1, choices=range(10))
    p.add_argument("--fg", default="red", choices=COLOUR_NAMES)
    p.add_argument("--bg", default="grey", choices=COLOUR_NAMES)
    p.add_argument("--seed", type=int, default=0, help="the noise of every row")
    p.add_argument("--label", default=None, help="the model's name in the title (default: the folder's)")
    p.add_argument("--forms", nargs="+", choices=list(PROMPT_FORMS), default=["canonical", "background_first"])
    a = p.parse_args(argv)
    if not (Path(a.model) / "model_index.json").is_file():
        print(f"error: {a.model}: no model_index.json; give a digits-text pipeline folder", file=sys.stderr)
        return 2
    if not Path(a.out).parent.is_dir():
        print(f"error: --out {a.out}: its folder does not exist; create it first", file=sys.stderr)
        return 2
    from studio.evaluation.text_eval import (
        load_digit_reader,
        load_pipeline,
        read_colours,
        read_digits,
    )

    pipe = load_pipeline(a.model)
    reader = load_digit_reader()
    triple = np.array([[a.digit, COLOUR_NAMES.index(a.fg), COLOUR_NAMES.index(a.bg)]])
    rows = []
    try:
        for form in a.forms:
            prompt = form_prompts(form, triple)[0]
            image, mask, maps = row_panels(pipe, prompt, a.seed)
            fg, bg, dist = read_colours(image[None])
            reading = f"a {COLOUR_NAMES[fg[0]]} {read_digits(reader, image[None], dist)[0]} on {COLOUR_NAMES[bg[0]]}"
            rows.append((form, prompt, reading, image, mask, maps))
    except ShareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = (f"{a.label or Path(a.model).resolve().name}: cross-attention of the prompt's words, averaged over 50 DDIM steps "
             f"(w = 3, seed {a.seed}),\neach map to its own maximum over the sample in grey; cyan: the digit's pixels")
    draw(rows, Path(a.out), title)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
