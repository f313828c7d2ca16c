"""Captioned coloured digits for the text-to-image model ``digits-text``.

Each image is drawn by the digits generator (:mod:`studio.data.digits`: same faces,
strokes, rotation, shear, size and position) but with colours chosen from a fixed palette
of named colours, so that a caption built from the image's own parameters is always true:
the digit (numeral or word), the foreground and background colour names, and a style word
where the face gives one ("bold", "italic", "serif", "mono").

Render colours are drawn *around* the named colour (uniform jitter of ±``JITTER`` per
channel, far less than half the distance between any two palette colours), so the name
stays right and :func:`nearest_colour` recovers it from pixels. Foreground and background
differ and are far enough apart in RGB to be readable (:data:`MIN_PAIR_DISTANCE`).

Held out: the (digit, foreground colour) pairs in :data:`HELD_OUT` never appear in the
training set (:func:`make_captioned_dataset` with ``split="train"``), so the model's
answer to e.g. "a green 3" measures composition, not memory.

Captions are re-drawn from the parameters at every use (:func:`caption`), from a few
templates, some of them partial (only the digit, only a colour), so that prompts naming
one attribute — and negative prompts such as "red" — mean something to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import cached_arrays, source_hash
from .digits import FONT_NAMES, IMAGE_SIZE, NUM_CLASSES, composite, glyph_mask

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Named colours (nominal sRGB). The closest two are 87 apart in RGB, against a jitter of ±JITTER.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (130, 50, 180),
    "pink": (245, 140, 190),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
}
COLOUR_NAMES = tuple(PALETTE)
PALETTE_RGB = np.array([PALETTE[c] for c in COLOUR_NAMES], dtype=np.float32)
JITTER = 12  # per-channel uniform jitter of the render colour around its named colour
MIN_PAIR_DISTANCE = 140.0  # RGB distance between the nominal fg and bg colours of an image

# One style word per face where the face gives one (None: no style word).
FONT_STYLE: dict[str, str | None] = {
    "DejaVuSans.ttf": None,
    "DejaVuSans-Bold.ttf": "bold",
    "DejaVuSans-Oblique.ttf": "italic",
    "DejaVuSerif.ttf": "serif",
    "DejaVuSerif-Bold.ttf": "bold",
    "DejaVuSerif-Italic.ttf": "italic",
    "DejaVuSansMono.ttf": "mono",
    "DejaVuSansMono-Bold.ttf": "bold",
    "STIXGeneral.ttf": "serif",
    "STIXGeneralBol.ttf": "bold",
    "STIXGeneralItalic.ttf": "italic",
    "cmr10.ttf": "serif",
    "cmss10.ttf": None,
    "cmtt10.ttf": "mono",
    "cmb10.ttf": "bold",
    FONT_NAMES[-1]: None,  # Pillow's built-in face
}
STYLE_WORDS = ("bold", "italic", "serif", "mono")

# (digit, foreground colour) pairs never rendered for training: one per digit, eleven
# different colours minus one, about one in eleven of the digit x foreground combinations.
HELD_OUT: tuple[tuple[int, str], ...] = (
    (0, "orange"), (1, "purple"), (2, "green"), (3, "pink"), (4, "blue"),
    (5, "yellow"), (6, "red"), (7, "white"), (8, "brown"), (9, "grey"),
)
HELD_OUT_SET = frozenset(HELD_OUT)

# Full captions name digit, foreground and background; {style} is "bold " etc. or "".
FULL_TEMPLATES = (
    "a {fg} {d} on {bg}",
    "a {fg} {d} on a {bg} background",
    "{d}, {fg} on a {bg} background",
    "a {style}{fg} {d} on a {bg} background",
    "the digit {d} in {fg} on {bg}",
    "{style}{fg} number {d} on a {bg} background",
)
# Partial captions: true but incomplete (each is one attribute or two).
PARTIAL_TEMPLATES = (
    "{d}",
    "a {d}",
    "the digit {d}",
    "{fg}",
    "a {fg} digit",
    "a {fg} {d}",
    "on a {bg} background",
    "a {d} on a {bg} background",
    "a {style}{d}",
)
# The same captions in other word orders: the background named first, the colour after the digit.
# Templates above name the foreground before the background; a model trained only on them binds
# colour words by position (the first colour is the digit's), not by the words around them.
REORDERED_FULL_TEMPLATES = (
    "on a {bg} background, a {fg} {d}",
    "on {bg}, a {style}{fg} {d}",
    "a {d} in {fg} on {bg}",
    "a {style}{d} in {fg} on a {bg} background",
    "on a {bg} background, the digit {d} in {fg}",
    "{d} in {fg}, on a {bg} background",
)
REORDERED_PARTIAL_TEMPLATES = (
    "a {d} in {fg}",
    "{d} in {fg}",
    "on {bg}, a {d}",
    "on a {bg} background, a {fg} digit",
)
# caption word orders a training run draws from: "fixed" (the foreground colour first, as the
# shipped v8 model was trained) or "varied" (those and the reordered ones, half and half)
CAPTION_ORDERS = ("fixed", "varied")
P_PARTIAL = 0.2  # share of partial captions among non-empty ones


def _pair_ok(fg: str, bg: str) -> bool:
    return fg != bg and float(np.linalg.norm(np.subtract(PALETTE[fg], PALETTE[bg]))) >= MIN_PAIR_DISTANCE


ALLOWED_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (f, b) for f in COLOUR_NAMES for b in COLOUR_NAMES if _pair_ok(f, b))


@dataclass(frozen=True)
class Attributes:
    """What an image shows: digit, colour names (indices into COLOUR_NAMES), face."""
    digit: int
    fg: int
    bg: int
    font: int

    @property
    def style(self) -> str | None:
        return FONT_STYLE[FONT_NAMES[self.font]]


def caption(attrs, rng: np.random.Generator, p_partial: float = P_PARTIAL, orders: str = "fixed") -> str:
    """A true caption of an image with attributes ``attrs`` = (digit, fg, bg, font) indices:
    a random template, the digit as a numeral or a word, the style word half the time. With
    ``orders="varied"`` half the captions come from the reordered templates."""
    if orders not in CAPTION_ORDERS:
        raise ValueError(f"unknown caption orders {orders!r}: use one of {', '.join(CAPTION_ORDERS)}")
    digit, fg, bg, font = (int(v) for v in attrs)
    partial = rng.random() < p_partial
    templates = PARTIAL_TEMPLATES if partial else FULL_TEMPLATES
    if orders == "varied" and rng.random() < 0.5:
        templates = REORDERED_PARTIAL_TEMPLATES if partial else REORDERED_FULL_TEMPLATES
    t = templates[int(rng.integers(len(templates)))]
    d = str(digit) if rng.random() < 0.5 else DIGIT_WORDS[digit]
    style = FONT_STYLE[FONT_NAMES[font]]
    style_s = f"{style} " if style is not None and rng.random() < 0.5 else ""
    return t.format(d=d, fg=COLOUR_NAMES[fg], bg=COLOUR_NAMES[bg], style=style_s)


def full_caption(digit: int, fg: str, bg: str) -> str:
    """The canonical prompt used by the evaluation: 'a red 7 on a blue background'."""
    return f"a {fg} {digit} on a {bg} background"


def render_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    """A render colour near the named one (uniform ±JITTER per channel, clipped)."""
    c = np.asarray(PALETTE[name], dtype=np.int64) + rng.integers(-JITTER, JITTER + 1, size=3)
    return np.clip(c, 0, 255)


def render_captioned(digit: int, fg: str, bg: str, font: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32 RGB ``uint8`` image of ``digit`` in face ``FONT_NAMES[font]``."""
    if not _pair_ok(fg, bg):
        raise ValueError(f"{fg} on {bg} is not an allowed colour pair (too close or equal)")
    stroke = int(rng.integers(0, 4))
    mask = glyph_mask(digit, FONT_NAMES[font], stroke, rng)
    return composite(mask, render_colour(fg, rng), render_colour(bg, rng))


def sample_attributes(n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
    """``n`` attribute rows (digit, fg, bg, font) as int64 (n, 4). Digits are balanced and
    shuffled; colour pairs are uniform over :data:`ALLOWED_PAIRS` minus, for ``split="train"``,
    the held-out (digit, fg) pairs; ``split="held_out"`` draws only held-out pairs; ``"all"``
    draws from every allowed pair."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"unknown split {split!r}: use train, held_out or all")
    digits = np.arange(n, dtype=np.int64) % NUM_CLASSES
    rng.shuffle(digits)
    out = np.empty((n, 4), dtype=np.int64)
    for i, d in enumerate(digits):
        if split == "held_out":
            fg = HELD_OUT[int(rng.integers(len(HELD_OUT)))][1]
            d = [k for k, c in HELD_OUT if c == fg][0]
            bgs = [b for f, b in ALLOWED_PAIRS if f == fg]
            bg = bgs[int(rng.integers(len(bgs)))]
        else:
            while True:
                fg, bg = ALLOWED_PAIRS[int(rng.integers(len(ALLOWED_PAIRS)))]
                if split == "all" or (int(d), fg) not in HELD_OUT_SET:
                    break
        out[i] = (d, COLOUR_NAMES.index(fg), COLOUR_NAMES.index(bg), int(rng.integers(len(FONT_NAMES))))
    return out


def make_captioned_dataset(n: int, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 (n, 32, 32, 3)) and their attributes (int64 (n, 4): digit, fg, bg,
    font indices); deterministic for ``seed``. Captions come from :func:`caption`."""
    rng = np.random.default_rng(seed)
    attrs = sample_attributes(n, rng, split)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (d, f, b, font) in enumerate(attrs):
        images[i] = render_captioned(int(d), COLOUR_NAMES[f], COLOUR_NAMES[b], int(font), rng)
    return images, attrs


def load_cached_captioned(cache_dir, n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_captioned_dataset`, cached as ``.npz`` under ``cache_dir`` (:func:`cache.cached_arrays`),
    keyed by n, seed, split and a hash of the recipe's source; ``cache_dir=None`` renders without caching."""
    here = Path(__file__).parent
    stem = f"captioned_{split}_n{n}_s{seed}_{source_hash(here / 'captions.py', here / 'digits.py')}"
    return cached_arrays(cache_dir, stem, ("images", "attrs"), lambda: make_captioned_dataset(n, seed, split))


def vocabulary() -> list[str]:
    """Every word a caption can contain (punctuation and numerals are tokens of their own)."""
    words: set[str] = set(DIGIT_WORDS) | set(COLOUR_NAMES) | set(STYLE_WORDS)
    for t in FULL_TEMPLATES + PARTIAL_TEMPLATES + REORDERED_FULL_TEMPLATES + REORDERED_PARTIAL_TEMPLATES:
        for w in t.replace(",", " ").split():
            if "{" not in w:
                words.add(w)
    return sorted(words)
