"""Evaluation of the text-to-image model ``digits-text``: is what the prompt says in the picture?

Every caption word is a property that can be read back from pixels:

* **colours** (:func:`read_colours`): the background is the per-channel median of the border
  pixels; the foreground is the median of the pixels farthest from it (at least
  ``FG_FRACTION`` of the largest distance); each is named by the nearest palette colour
  (:data:`captions.PALETTE`), the same rule the data generator's jitter is bounded by;
* **digit** (:func:`read_digits`): the shipped clean-image evaluator of the class model
  (``assets/models/digits/evaluator``) reads a colour-free version of the image — the
  distance of every pixel from the background, normalised to 0..1 and drawn white on
  black — because that evaluator was trained on luminance-contrasting colour pairs and
  misreads equal-luminance pairs such as red on blue.

:func:`real_data_floor` applies both readers to rendered images with known captions: what
they score there bounds what any model can be credited with.

Samples come from :func:`generate` (diffusers ``StableDiffusionPipeline`` with DDIM,
fixed seeds, batched); it is one small function so another generator can replace it. Each batch of a
setting is a :class:`Chunk`; :func:`evaluate` takes a ``store`` that keeps every chunk's images as it
is drawn, so an interrupted evaluation continues with the chunks it lacks (``studio eval`` keeps them
as cells of a sweep's folder: studio/sweep/evaluate.py).

    studio eval --model digits-text --n 500 --json      (or python -m studio.evaluation.text_eval)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data.digits import to_float, to_uint8
from ..data.captions import (ALLOWED_PAIRS, COLOUR_NAMES, HELD_OUT, HELD_OUT_SET, PALETTE_RGB, full_caption,
                       make_captioned_dataset)

FG_FRACTION = 0.6
GROUPS = ("cfg", "held_out", "word_order", "negative", "uncond", "vae", "floor")  # floor: the readers on real images
# the held-in prompts in other word orders ('word_order'): the background named first, the colour after the digit
WORD_ORDERS = {"background first": "on a {bg} background, a {fg} {d}", "colour after the digit": "a {d} in {fg} on {bg}"}
DEFAULT_GROUPS = GROUPS[:-1]
DEFAULT_CFG_SCALES = (1, 3, 5)
DIGITS_EVALUATOR = Path(__file__).resolve().parents[2] / "assets" / "models" / "digits" / "evaluator"
REAL_SEED, PSNR_SEED = 4242, 4343  # dataset seeds used by no trainer


# ----------------------------------------------------------------------------- readers
def border_mask(height: int, width: int) -> np.ndarray:
    """(height, width) booleans, True on the image's outermost pixels: where the readers (and the
    autoencoder's stroke weighting) take the background colour from."""
    m = np.ones((height, width), dtype=bool)
    m[1:-1, 1:-1] = False
    return m


def _border(x: np.ndarray) -> np.ndarray:
    """The border pixels of images (N, H, W, C) as (N, P, C)."""
    return x[:, border_mask(*x.shape[1:3])]


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into ``COLOUR_NAMES`` of the nearest palette colour of each RGB row (N, 3)."""
    d = np.linalg.norm(rgb[:, None, :].astype(np.float32) - PALETTE_RGB[None], axis=-1)
    return d.argmin(1)


def read_colours(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fg index, bg index, foreground mask in 0..1) of uint8 images (N, 32, 32, 3)."""
    x = images.astype(np.float32)
    bg = np.median(_border(x), axis=1)
    dist = np.linalg.norm(x - bg[:, None, None], axis=-1)
    top = dist.reshape(len(x), -1).max(1)
    far = dist >= FG_FRACTION * np.maximum(top, 1e-6)[:, None, None]
    fg = np.stack([np.median(x[i][far[i]], axis=0) for i in range(len(x))])
    mask = np.clip(dist / np.maximum(top, 1.0)[:, None, None], 0, 1)
    return nearest_colour(fg), nearest_colour(bg), mask


def load_digit_reader(folder=DIGITS_EVALUATOR):
    from .evaluator import load_evaluator

    return load_evaluator(folder).eval()


@torch.no_grad()
def read_digits(evaluator, images: np.ndarray, mask: np.ndarray | None = None, batch: int = 500) -> np.ndarray:
    """Digit read by the clean evaluator from the colour-free mask (white on black)."""
    if mask is None:
        mask = read_colours(images)[2]
    out = []
    for i in range(0, len(mask), batch):
        g = torch.from_numpy(mask[i:i + batch] * 2 - 1).float()[:, None].repeat(1, 3, 1, 1)
        out.append(evaluator.logits(g).argmax(1).numpy())
    return np.concatenate(out)


def score(evaluator, images: np.ndarray, digit: np.ndarray, fg: np.ndarray | None,
          bg: np.ndarray | None) -> dict:
    """Accuracies of digit / fg / bg (None: not asked) and all three together."""
    fg_p, bg_p, mask = read_colours(images)
    d_p = read_digits(evaluator, images, mask)
    ok = {"digit": d_p == digit}
    if fg is not None:
        ok["fg"] = fg_p == fg
    if bg is not None:
        ok["bg"] = bg_p == bg
    res = {f"{k}_accuracy": float(v.mean()) for k, v in ok.items()}
    if fg is not None and bg is not None:
        res["all_three"] = float((ok["digit"] & ok["fg"] & ok["bg"]).mean())
    res["digit_read"] = np.bincount(d_p, minlength=10).tolist()
    res["fg_read"] = np.bincount(fg_p, minlength=len(COLOUR_NAMES)).tolist()
    return res


# ----------------------------------------------------------------------------- prompts
def held_in_prompts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` canonical prompts, digits cycling 0..9, colour pairs drawn from the allowed pairs
    minus the held-out (digit, fg) pairs. Returns prompts and (digit, fg, bg) rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        d = i % 10
        while True:
            f, b = ALLOWED_PAIRS[int(rng.integers(len(ALLOWED_PAIRS)))]
            if (d, f) not in HELD_OUT_SET:
                break
        rows.append((d, COLOUR_NAMES.index(f), COLOUR_NAMES.index(b)))
    rows = np.array(rows)
    return [full_caption(d, COLOUR_NAMES[f], COLOUR_NAMES[b]) for d, f, b in rows], rows


def held_out_prompts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` prompts of the held-out (digit, fg) pairs (cycling), with random allowed backgrounds."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        d, f = HELD_OUT[i % len(HELD_OUT)]
        bgs = [b for ff, b in ALLOWED_PAIRS if ff == f]
        rows.append((d, COLOUR_NAMES.index(f), COLOUR_NAMES.index(bgs[int(rng.integers(len(bgs)))])))
    rows = np.array(rows)
    return [full_caption(d, COLOUR_NAMES[f], COLOUR_NAMES[b]) for d, f, b in rows], rows


def reworded(rows: np.ndarray, template: str) -> list[str]:
    """The prompts of (digit, fg, bg) ``rows`` in another word order (a :data:`WORD_ORDERS` template)."""
    return [template.format(d=d, fg=COLOUR_NAMES[f], bg=COLOUR_NAMES[b]) for d, f, b in rows]


def no_fg_prompts(n: int, colour: str, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """'a 7 on a blue background': the foreground colour left open (backgrounds that allow
    ``colour`` as foreground), for measuring a negative prompt's effect on the fg colour."""
    rng = np.random.default_rng(seed)
    bgs = [b for f, b in ALLOWED_PAIRS if f == colour]
    rows = np.array([(i % 10, -1, COLOUR_NAMES.index(bgs[int(rng.integers(len(bgs)))])) for i in range(n)])
    return [f"a {d} on a {COLOUR_NAMES[b]} background" for d, _, b in rows], rows


# ----------------------------------------------------------------------------- generator
def load_pipeline(folder):
    """The exported folder as a diffusers ``StableDiffusionPipeline`` with DDIM (float32, CPU)."""
    from ..core.text_model import quiet_libraries

    with quiet_libraries():  # loader advice (accelerate, image processors) that is not the user's concern
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def batch_images(pipe, prompts, guidance: float, negative: list[str] | None, steps: int, seed: int) -> np.ndarray:
    """uint8 samples (N, H, W, 3) of one batch: DDIM ``steps`` (η = 0), CFG ``guidance`` (w = 1: none), the
    noise drawn from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    img = pipe(list(prompts), negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
               generator=g, output_type="np").images
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def generate(pipe, prompts: list[str], guidance: float, negative: list[str] | str | None = None,
             steps: int = 50, seed: int = 0, batch: int = 100) -> np.ndarray:
    """uint8 samples (N, 32, 32, 3): :func:`batch_images` of each batch of ``batch`` prompts, batch ``k``
    drawn with seed ``seed + k``."""
    out = []
    for k, i in enumerate(range(0, len(prompts), batch)):
        p = prompts[i:i + batch]
        neg = negative[i:i + batch] if isinstance(negative, list) else (
            [negative] * len(p) if negative is not None else None)
        out.append(batch_images(pipe, p, guidance, neg, steps, seed + k))
    return np.concatenate(out)


@dataclass(frozen=True)
class Chunk:
    """One batch of one setting, as :func:`generate` draws it: the unit of work an interrupted evaluation
    continues from (a ``store`` keeps each chunk's images as it finishes; the next run computes only the
    chunks it does not find)."""
    setting: str
    index: int  # the batch's number within its setting: its noise is drawn with seed + index
    prompts: tuple[str, ...]
    guidance: float
    negative: Optional[str]
    steps: int
    seed: int

    def to_dict(self) -> dict:
        """Everything that decides the chunk's images (the model aside: the store's identity holds it)."""
        return {"setting": self.setting, "index": self.index, "prompts": list(self.prompts), "batch": len(self.prompts),
                "guidance": self.guidance, "negative_prompt": self.negative, "steps": self.steps,
                "seed": self.seed + self.index}

    @property
    def work(self) -> float:
        """Network evaluations: images × steps, twice with classifier-free guidance (w ≠ 1)."""
        return len(self.prompts) * self.nfe

    @property
    def nfe(self) -> int:
        """Network evaluations per image."""
        return self.steps * (2 if self.guidance != 1 else 1)

    def images(self, pipe) -> np.ndarray:
        neg = [self.negative] * len(self.prompts) if self.negative is not None else None
        return batch_images(pipe, self.prompts, self.guidance, neg, self.steps, self.seed + self.index)


@dataclass(frozen=True)
class TextSetting:
    """One row of the results: ``n`` prompts (with their (digit, fg, bg) rows; −1: not asked) at guidance
    ``guidance``, with an optional negative prompt, drawn in :class:`Chunk` s of at most ``batch``."""
    name: str
    prompts: tuple[str, ...]
    rows: np.ndarray
    guidance: float
    negative: Optional[str] = None
    colour: Optional[str] = None  # the negative group's colour, whose fg share is reported
    steps: int = 50
    seed: int = 0
    batch: int = 100

    @property
    def chunks(self) -> list[Chunk]:
        return [Chunk(self.name, k, self.prompts[i:i + self.batch], self.guidance, self.negative, self.steps,
                      self.seed) for k, i in enumerate(range(0, len(self.prompts), self.batch))]


def planned_settings(n: int, groups=DEFAULT_GROUPS, cfg_scales=DEFAULT_CFG_SCALES, negative_colours=("red",),
                     seed: int = 0, steps: int = 50, batch: int = 100) -> list[TextSetting]:
    """The sample-drawing settings of ``groups`` (``vae`` and ``floor`` draw none), in the order they run."""
    out: list[TextSetting] = []

    def add(name, prompts, rows, w, negative=None, colour=None):
        out.append(TextSetting(name, tuple(prompts), rows, float(w), negative, colour, steps, seed, batch))

    if "cfg" in groups:
        prompts, rows = held_in_prompts(n, seed)
        for w in cfg_scales:
            add(f"held-in w={w:g}", prompts, rows, w)
    if "held_out" in groups:
        add("held-out w=3", *held_out_prompts(n, seed), 3.0)
    if "word_order" in groups:  # the same (digit, fg, bg) rows as held-in, worded otherwise
        _, rows = held_in_prompts(n, seed)
        for order, template in WORD_ORDERS.items():
            add(f"held-in, {order} w=3", reworded(rows, template), rows, 3.0)
    if "negative" in groups:
        for c in negative_colours:
            prompts, rows = no_fg_prompts(n, c, seed)
            for neg in (None, c):
                add(f"fg open, negative {neg!r} w=3", prompts, rows, 3.0, neg, c)
    if "uncond" in groups:
        add("unconditional (empty prompt)", [""] * n, np.zeros((n, 3), dtype=np.int64) - 1, 1.0)
    return out


# ----------------------------------------------------------------------------- evaluation
def real_data_floor(evaluator, n: int = 2000) -> dict:
    """The readers on rendered images with known captions (train-distribution and held-out)."""
    res = {}
    for split in ("train", "held_out"):
        images, attrs = make_captioned_dataset(n, REAL_SEED, split)
        res[split] = {"n": n, **score(evaluator, images, attrs[:, 0], attrs[:, 1], attrs[:, 2])}
    return res


@torch.no_grad()
def psnr(vae, images: np.ndarray, batch: int = 250) -> float:
    """Mean PSNR (dB, peak 255) of ``decode(posterior mean)`` on uint8 images, after rounding
    the reconstruction to uint8 as a saved image would be."""
    vals = []
    was = vae.training
    vae.eval()
    for i in range(0, len(images), batch):
        x = to_float(images[i:i + batch])
        rec = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample).astype(np.float64)
        mse = ((rec - images[i:i + batch].astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
        vals.append(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10)))
    vae.train(was)
    return float(np.concatenate(vals).mean())


@torch.no_grad()
def vae_psnr(pipe, n: int = 1000, evaluator=None) -> dict:
    """PSNR of the autoencoder's reconstructions (posterior mean) of fresh images and, with an
    ``evaluator``, the readers' scores on those reconstructions: the ceiling the autoencoder
    puts on any sample of this latent space."""
    out = {}
    for split in ("train", "held_out"):  # "train": fresh images of the training distribution
        images, attrs = make_captioned_dataset(n, PSNR_SEED, split)
        out[split] = {"n": n, "psnr_db": psnr(pipe.vae, images)}
        if evaluator is not None:
            rec = np.concatenate([to_uint8(pipe.vae.decode(pipe.vae.encode(to_float(images[i:i + 250]))
                                                           .latent_dist.mean).sample)
                                  for i in range(0, n, 250)])
            r = score(evaluator, rec, attrs[:, 0], attrs[:, 1], attrs[:, 2])
            out[split]["reconstructions_read"] = {k: v for k, v in r.items() if not k.endswith("_read")}
    return out


def evaluate(folder, n: int = 500, groups=DEFAULT_GROUPS, cfg_scales=DEFAULT_CFG_SCALES,
             negative_colours=("red",), seed: int = 0, steps: int = 50, log=sys.stderr, store=None,
             on_chunk: Optional[Callable[[Chunk, bool], None]] = None, batch: int = 100) -> dict:
    """The settings of ``groups`` (:data:`GROUPS`), ``n`` samples each; ``floor`` alone needs no model.

    ``store``: where the chunks' images are kept (``load(chunk)`` → images or None, ``save(chunk, images,
    seconds)``),
    so that a run that is stopped loses at most the chunk it was drawing and the next run draws only what
    is missing; the model is opened only when a chunk must be drawn. ``on_chunk(chunk, computed)`` after
    each chunk (``computed``: drawn now rather than found); between chunks ``core.cancel.check()`` stops
    a run whose caller cancelled it."""
    from ..core import cancel

    settings = planned_settings(n, groups, cfg_scales, negative_colours, seed, steps, batch)
    pipe = load_pipeline(folder) if set(groups) & {"vae"} else None
    ev = load_digit_reader()
    results: list[dict] = []
    for s in settings:
        t0 = time.perf_counter()
        parts = []
        for chunk in s.chunks:
            x = store.load(chunk) if store is not None else None
            computed = x is None
            if computed:
                if pipe is None:
                    pipe = load_pipeline(folder)
                t_chunk = time.perf_counter()
                x = chunk.images(pipe)
                if store is not None:
                    store.save(chunk, x, time.perf_counter() - t_chunk)
            parts.append(x)
            if on_chunk is not None:
                on_chunk(chunk, computed)
            cancel.check()
        x, rows = np.concatenate(parts), s.rows
        fg = rows[:, 1] if (rows[:, 1] >= 0).all() else None
        r = {"setting": s.name, "n": len(s.prompts), "guidance": s.guidance, "steps": steps,
             "negative_prompt": s.negative, **score(ev, x, rows[:, 0], fg, rows[:, 2] if rows.shape[1] > 2 else None)}
        if s.colour is not None:
            r["colour"] = s.colour
            r["colour_fg_share"] = r["fg_read"][COLOUR_NAMES.index(s.colour)] / r["n"]
        if not (rows >= 0).any():  # unconditional: nothing was asked for
            for k in ("digit_accuracy", "bg_accuracy"):
                r.pop(k, None)
            r["digit_fractions"] = [round(v / n, 4) for v in r["digit_read"]]
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        if log:
            log.write(json.dumps({k: v for k, v in r.items() if not k.endswith("_read")}) + "\n")
            log.flush()
    out = {"model": str(folder), "n_per_setting": n, "seed": seed, "results": results}
    if "vae" in groups:
        out["vae_psnr"] = vae_psnr(pipe, evaluator=ev)
    if "floor" in groups:
        out["real_data_floor"] = real_data_floor(ev, n)
    return out


def report(files: list[str]) -> str:
    """Markdown tables of raw JSON result files (the model card's tables)."""
    return report_data([json.loads(Path(f).read_text()) for f in files])


def report_data(results: list[dict]) -> str:
    """Markdown tables of results as :func:`evaluate` returns them."""
    rows, extra = [], []
    for d in results:
        rows += d.get("results", [])
        extra.append(d)
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| setting | n | digit | fg colour | bg colour | all three | red fg share | seconds |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "digit_fractions" in r:
            continue
        out.append(f"| {r['setting']} | {r['n']} | {fmt(r.get('digit_accuracy'))} | {fmt(r.get('fg_accuracy'))} | "
                   f"{fmt(r.get('bg_accuracy'))} | {fmt(r.get('all_three'))} | "
                   f"{fmt(r.get('colour_fg_share'))} | {r['seconds']} |")
    for r in rows:
        if "digit_fractions" in r:
            out += ["", f"{r['setting']}, {r['n']} samples, digit read by the evaluator:", "",
                    "| digit | " + " | ".join(str(i) for i in range(10)) + " |",
                    "|---|" + "---|" * 10,
                    "| fraction | " + " | ".join(f"{v:.3f}" for v in r["digit_fractions"]) + " |"]
    for d in extra:
        for split, v in d.get("vae_psnr", {}).items():
            line = f"\nVAE reconstruction PSNR ({split} split, {v['n']} images): {v['psnr_db']:.2f} dB"
            if "reconstructions_read" in v:
                q = v["reconstructions_read"]
                line += (f"; read from the reconstructions: digit {q['digit_accuracy']:.3f}, "
                         f"fg {q['fg_accuracy']:.3f}, bg {q['bg_accuracy']:.3f}, all three {q['all_three']:.3f}")
            out.append(line)
        for split, v in d.get("real_data_floor", {}).items():
            out.append(f"\nReaders on real images ({split} split, {v['n']}): digit {v['digit_accuracy']:.3f}, "
                       f"fg {v['fg_accuracy']:.3f}, bg {v['bg_accuracy']:.3f}, all three {v['all_three']:.3f}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.evaluation.text_eval",
                                description="evaluate a digits-text pipeline folder")
    p.add_argument("--model", default="assets/models/digits-text")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--only", nargs="+", choices=GROUPS, default=list(DEFAULT_GROUPS))
    p.add_argument("--cfg-scales", type=float, nargs="+", default=list(DEFAULT_CFG_SCALES))
    p.add_argument("--negative-colours", nargs="+", default=["red"], choices=list(COLOUR_NAMES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print markdown tables of saved results and exit")
    a = p.parse_args(argv)
    if a.report:
        print(report(a.report))
        return 0
    if a.only != ["floor"] and not (Path(a.model) / "model_index.json").is_file():
        print(f"error: {a.model}: no model_index.json; give a digits-text pipeline folder", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    res = evaluate(a.model, a.n, a.only, a.cfg_scales, a.negative_colours, a.seed)
    print(json.dumps(res, indent=1) if a.json else res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
