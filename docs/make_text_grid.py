"""Make docs/digits_text.png: prompts (rows, captioned) x samples (columns) from the shipped
text-to-image model ``assets/models/digits-text`` (diffusers StableDiffusionPipeline, DDIM 50
steps, CFG w = 3, seed k for row k).

    .venv/bin/python docs/make_text_grid.py [--out docs/digits_text.png] [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.data.digits import _font_dir  # noqa: E402
from studio.evaluation.text_eval import generate, load_pipeline  # noqa: E402

PROMPTS = [
    ("a red 7 on a blue background", None),
    ("a yellow 0 on black", None),
    ("three, white on a green background", None),
    ("a bold blue five on a white background", None),
    ("the digit 8 in black on orange", None),
    ("a green 2 on a white background", None),  # (2, green) is held out of training
    ("on a grey background, a red 1", None),  # the background named first (v8: grey digits on red)
    ("a 6 in purple on yellow", None),  # the colour after the digit
    ("a 4 on a pink background", None),
    ("a 4 on a pink background", "blue"),
    ("seven", None),
    ("", None),
]


def label(prompt: str, negative: str | None) -> str:
    text = f'"{prompt}"' if prompt else '"" (unconditional, w = 1)'
    return text + (f'   negative: "{negative}"' if negative else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / "assets" / "models" / "digits-text"))
    p.add_argument("--out", default=str(ROOT / "docs" / "digits_text.png"))
    p.add_argument("--per-row", type=int, default=8)
    p.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of each 32x32 sample")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    pipe = load_pipeline(a.model)
    rows = []
    for k, (prompt, neg) in enumerate(PROMPTS):
        w = 3.0 if prompt else 1.0
        rows.append(generate(pipe, [prompt] * a.per_row, w, neg, steps=50, seed=k))
    s, pad, text_w = 32 * a.scale, 4, 430
    font = ImageFont.truetype(str(_font_dir() / "DejaVuSans.ttf"), 15)
    canvas = Image.new("RGB", (text_w + a.per_row * (s + pad) + pad, len(rows) * (s + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (imgs, (prompt, neg)) in enumerate(zip(rows, PROMPTS)):
        y = pad + r * (s + pad)
        draw.text((8, y + s // 2), label(prompt, neg), fill="black", font=font, anchor="lm")
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img).resize((s, s), Image.Resampling.NEAREST)
            canvas.paste(tile, (text_w + pad + c * (s + pad), y))
    canvas.save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
