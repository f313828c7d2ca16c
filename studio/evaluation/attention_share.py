"""Where the prompt's words look: the share of each word's cross-attention that falls on the digit.

A text-to-image model that binds a colour word to the digit by meaning should have the foreground
colour's token attend to the digit's strokes and the background colour's token to the rest of the
image, in whatever order the prompt names them. This module measures that on samples of a
``digits-text`` pipeline folder, for prompts in several word orders over the same (digit, foreground,
background) triples (:data:`PROMPT_FORMS`):

* **samples**: text_eval's own generator (:func:`text_eval.batch_images`: diffusers
  ``StableDiffusionPipeline``, DDIM η = 0, CFG w, batch ``k`` from ``torch.Generator().manual_seed(seed
  + k)``), so the canonical form's samples are those of the model card's held-in evaluation;
* **maps**: the studio's capture (:class:`core.attention.CrossAttentionCapture`, DAAM's aggregation,
  Tang et al. 2023, Sec. 3: heads averaged, layers upsampled to the latent grid and averaged) of the
  conditional branch, one map per prompt token per step (diffusers puts the conditional half second in
  a CFG batch, so the last ``batch`` samples of each evaluation are kept; DDIM evaluates the UNet once a
  step, so each evaluation is a step);
* **digit pixels**: the pixels text_eval's colour reader takes the foreground colour from
  (:func:`text_eval.read_colours`: distance from the border's median colour at least ``FG_FRACTION`` of
  the image's largest distance), at the image's 32×32; every other pixel is background;
* **share**: each token's map is upsampled from the latent grid to the image (bilinear) and normalised
  to sum 1 (:func:`normalised_maps`); its share on the digit is the mass inside the digit pixels
  (:func:`mass_on`), the rest is on the background. A map that ignored the image would put the digit's
  area share there: that is the chance level (``digit_area``); ``lift`` is share / area.

Shares are averaged over steps (all, and the last third, where the image is settled), then over
samples, per token *role*: the digit word, the foreground colour word, the background colour word and
the word "background" where the prompt has it. Roles are read from the prompt's words by meaning
(:func:`word_roles`): the colour that follows "on" (articles skipped) or precedes "background" is the
background's, the other the digit's, so "on a grey background, a red 1" has red as the foreground.
Each form also reports whether its samples are right on all three attributes (text_eval's readers),
and the shares of the right and of the wrong samples apart.

    python -m studio.evaluation.attention_share --model FOLDER --n 100 --json OUT.json
    python -m studio.evaluation.attention_share --report A.json [B.json ...]   (markdown table)
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arg_types import positive
from ..core.attention import CrossAttentionCapture
from ..data.captions import COLOUR_NAMES, DIGIT_WORDS
from .text_eval import (
    FG_FRACTION,
    batch_images,
    held_in_prompts,
    load_digit_reader,
    read_colours,
    read_digits,
)

# The word orders measured, each over the same (digit, fg, bg) triples; the first is the canonical
# caption of the card's evaluation (captions.full_caption).
PROMPT_FORMS: dict[str, str] = {
    "canonical": "a {fg} {d} on a {bg} background",
    "background_first": "on a {bg} background, a {fg} {d}",
    "colour_after": "a {d} in {fg} on {bg}",
}
FORM_NAMES = tuple(PROMPT_FORMS)
ROLES = ("digit", "fg_colour", "bg_colour", "background_word")
ROLE_NAMES = {"digit": "digit word", "fg_colour": "foreground colour word", "bg_colour": "background colour word",
              "background_word": 'the word "background"'}
ARTICLES = ("a", "an", "the")
WORD = re.compile(r"\d|[^\W\d_]+|[^\w\s]")  # a letter run, a single numeral, or one punctuation mark (as CLIP splits)

DEFAULT_N = 100
DEFAULT_GUIDANCE = 3.0  # the card's evaluation's w
DEFAULT_STEPS = 50
DEFAULT_SEED = 0
DEFAULT_BATCH = 100
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "assets" / "models" / "digits-text"


class ShareError(ValueError):
    """Input this measurement cannot use; the message is one line saying what to do."""


# ----------------------------------------------------------------------------- prompts and roles
def prompt_words(prompt: str) -> list[str]:
    """The prompt's words, lower-cased, punctuation marks and numerals as words of their own."""
    return WORD.findall(prompt.lower())


def _is_digit_word(word: str) -> bool:
    return word in DIGIT_WORDS or (len(word) == 1 and word.isdigit())


def _names_background(words: list[str], i: int) -> bool:
    """Whether colour word ``i`` is the background's: it precedes "background", or "on" precedes it
    (articles between them skipped)."""
    if i + 1 < len(words) and words[i + 1] == "background":
        return True
    j = i - 1
    while j >= 0 and words[j] in ARTICLES:
        j -= 1
    return j >= 0 and words[j] == "on"


def word_roles(words: list[str]) -> dict[str, int]:
    """{role: index into ``words``} for the roles the prompt has (module docstring: roles by meaning).
    ShareError when it names more than one digit, or more than one colour for the digit or the
    background."""
    digits = [i for i, w in enumerate(words) if _is_digit_word(w)]
    colours = [i for i, w in enumerate(words) if w in COLOUR_NAMES]
    bg = [i for i in colours if _names_background(words, i)]
    fg = [i for i in colours if i not in bg]
    text = " ".join(words)
    if len(digits) > 1:
        raise ShareError(f"{text!r} names {len(digits)} digits; name one")
    for what, found in (("the digit", fg), ("the background", bg)):
        if len(found) > 1:
            raise ShareError(f"{text!r} names {len(found)} colours for {what}; name one")
    roles = {"digit": digits, "fg_colour": fg, "bg_colour": bg,
             "background_word": [i for i, w in enumerate(words) if w == "background"][:1]}
    return {role: found[0] for role, found in roles.items() if found}


def word_token_positions(tokenizer, prompt: str) -> list[list[int]]:
    """The token positions of each of :func:`prompt_words` in the tokenised prompt (position 0 is the
    start token, as in the captured maps). ShareError when the words' own tokens do not make up the
    prompt's (a prompt the tokenizer cuts, or splits across word boundaries)."""
    words = prompt_words(prompt)
    out, pos, joined = [], 1, []
    for w in words:
        ids = list(tokenizer(w, add_special_tokens=False).input_ids)
        out.append(list(range(pos, pos + len(ids))))
        pos += len(ids)
        joined += ids
    full = list(tokenizer(prompt, truncation=True, max_length=int(tokenizer.model_max_length)).input_ids)
    if full[1:-1] != joined:
        raise ShareError(f"cannot match the words of {prompt!r} to its tokens (too long for the model's "
                         f"{tokenizer.model_max_length} tokens?); use a shorter prompt")
    return out


def token_roles(tokenizer, prompt: str) -> dict[str, list[int]]:
    """{role: token positions of its word} of ``prompt`` (:func:`word_roles`, :func:`word_token_positions`)."""
    positions = word_token_positions(tokenizer, prompt)
    return {role: positions[i] for role, i in word_roles(prompt_words(prompt)).items()}


def form_prompts(form: str, rows: np.ndarray) -> list[str]:
    """The prompts of word order ``form`` (:data:`PROMPT_FORMS`) for (digit, fg, bg) index rows."""
    t = PROMPT_FORMS[form]
    return [t.format(d=int(d), fg=COLOUR_NAMES[f], bg=COLOUR_NAMES[b]) for d, f, b in rows]


# ----------------------------------------------------------------------------- the share
def normalised_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (..., h, w) upsampled to ``size`` (bilinear, as F.interpolate with align_corners=False) and
    each divided by its sum, so it is a distribution over the image's pixels (a map with no mass becomes
    uniform). float32 (..., H, W)."""
    lead = maps.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False).clamp_(min=0.0)
    total = up.sum(dim=(-2, -1), keepdim=True)
    up = torch.where(total > 0, up / total.clamp(min=1e-30), torch.full_like(up, 1.0 / (size[0] * size[1])))
    return up.reshape(*lead, *size).numpy()


def mass_on(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The share of each map's mass inside ``mask``: maps (N, ..., h, w) over the latent grid, mask (N, H,
    W) booleans over the image; (N, ...) in 0..1 (:func:`normalised_maps`, then summed over the mask)."""
    up = normalised_maps(maps, mask.shape[-2:])
    m = mask.reshape(mask.shape[0], *([1] * (maps.ndim - 3)), *mask.shape[-2:]).astype(np.float32)
    return (up * m).sum(axis=(-2, -1))


def digit_masks(images: np.ndarray) -> np.ndarray:
    """(N, H, W) booleans: the pixels text_eval's colour reader takes the foreground from (module docstring)."""
    return read_colours(images)[2] >= FG_FRACTION


def last_third_start(steps: int) -> int:
    """The first step (0-based) of the last third of ``steps`` (the last step at least)."""
    return min(math.ceil(2 * steps / 3), steps - 1)


# ----------------------------------------------------------------------------- sampling
@dataclass
class AttentionSamples:
    """Samples and their maps. ``maps``: (N, steps, tokens, h, w) float32, the conditional branch's map of
    each token position (start token at 0; positions past a prompt's end token are padding)."""
    prompts: list[str]
    images: np.ndarray
    maps: np.ndarray


def sample_with_attention(pipe, prompts: list[str], guidance: float = DEFAULT_GUIDANCE, steps: int = DEFAULT_STEPS,
                          seed: int = DEFAULT_SEED, batch: int = DEFAULT_BATCH) -> AttentionSamples:
    """Samples of ``prompts`` by :func:`text_eval.batch_images` (batch ``k`` with seed ``seed + k``), with
    every step's cross-attention maps (module docstring). ShareError for a model without cross-attention."""
    tok = pipe.tokenizer
    tokens = max(len(tok(p, truncation=True, max_length=int(tok.model_max_length)).input_ids) for p in prompts)
    images, maps = [], []
    for k, i in enumerate(range(0, len(prompts), batch)):
        part = list(prompts[i:i + batch])
        evaluated = len(part) * (2 if guidance > 1 else 1)  # diffusers batches [uncond, cond] when w > 1
        capture = CrossAttentionCapture(pipe.unet, batch=evaluated, tokens=tokens)
        per_step: list[np.ndarray] = []
        conditional = slice(evaluated - len(part), evaluated)

        def after_unet(module, args, output, capture=capture, per_step=per_step, keep=conditional):
            per_step.append(capture.take_step().maps[keep].numpy())

        handle = pipe.unet.register_forward_hook(after_unet)
        try:
            with capture:
                images.append(batch_images(pipe, part, guidance, None, steps, seed + k))
        except ValueError as e:  # the capture's refusal of a model without cross-attention
            raise ShareError(str(e)) from None
        finally:
            handle.remove()
        maps.append(np.stack(per_step, axis=1))
    return AttentionSamples(list(prompts), np.concatenate(images), np.concatenate(maps))


# ----------------------------------------------------------------------------- summaries
def _mean_sem(v: np.ndarray) -> tuple[float, float | None]:
    """Mean and standard error of the mean, rounded to 4 places (no error for one value)."""
    v = np.asarray(v, dtype=np.float64)
    sem = round(float(v.std(ddof=1) / math.sqrt(len(v))), 4) if len(v) > 1 else None
    return round(float(v.mean()), 4), sem


def role_shares(samples: AttentionSamples, tokenizer) -> dict[str, np.ndarray]:
    """{role: (N, steps) share of the role word's map on each sample's digit pixels} for the roles every
    prompt has; a word of several tokens is the mean of their maps."""
    masks = digit_masks(samples.images)
    roles = [token_roles(tokenizer, p) for p in samples.prompts]
    out = {}
    for role in ROLES:
        if not all(role in r for r in roles):
            continue
        word_maps = np.stack([samples.maps[i][:, r[role]].mean(axis=1) for i, r in enumerate(roles)])
        out[role] = mass_on(word_maps, masks)
    return out


def summarise(shares: np.ndarray, area: np.ndarray, start: int) -> dict:
    """Mean shares of (N, steps) ``shares``, all steps and from step ``start``, with their standard errors
    over samples and the lift over the digit's ``area`` (N,)."""
    out = {}
    for name, s in (("all_steps", shares.mean(axis=1)), ("last_third", shares[:, start:].mean(axis=1))):
        m, sem = _mean_sem(s)
        out[name] = {"on_digit": m, "on_background": round(1 - m, 4), "sem": sem,
                     "lift": round(m / float(area.mean()), 3)}
    return out


def measure_form(pipe, evaluator, form: str, rows: np.ndarray, guidance: float = DEFAULT_GUIDANCE,
                 steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, batch: int = DEFAULT_BATCH) -> dict:
    """One word order's results (module docstring) for (digit, fg, bg) ``rows``."""
    prompts = form_prompts(form, rows)
    samples = sample_with_attention(pipe, prompts, guidance, steps, seed, batch)
    fg_read, bg_read, mask = read_colours(samples.images)
    digit_read = read_digits(evaluator, samples.images, mask)
    right = {"digit": digit_read == rows[:, 0], "fg": fg_read == rows[:, 1], "bg": bg_read == rows[:, 2]}
    all_three = right["digit"] & right["fg"] & right["bg"]
    area = digit_masks(samples.images).mean(axis=(1, 2))
    start = last_third_start(samples.maps.shape[1])
    out = {"form": form, "template": PROMPT_FORMS[form], "example": prompts[0], "n": len(prompts),
           "accuracy": {**{f"{k}_accuracy": round(float(v.mean()), 4) for k, v in right.items()},
                        "all_three": round(float(all_three.mean()), 4)},
           "digit_area": dict(zip(("mean", "sem"), _mean_sem(area))),
           "roles": {}}
    for role, s in role_shares(samples, pipe.tokenizer).items():
        entry = summarise(s, area, start)
        entry["by_correctness"] = {
            name: {"n": int(sel.sum()),
                   **({"all_steps": round(float(s[sel].mean()), 4),
                       "last_third": round(float(s[sel, start:].mean()), 4)} if sel.any() else {})}
            for name, sel in (("right_on_all_three", all_three), ("wrong", ~all_three))}
        out["roles"][role] = entry
    return out


def measure(folder, n: int = DEFAULT_N, forms=FORM_NAMES, guidance: float = DEFAULT_GUIDANCE,
            steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, batch: int = DEFAULT_BATCH, log=None) -> dict:
    """Every form of :data:`PROMPT_FORMS` in ``forms`` over the same ``n`` triples (text_eval's held-in
    triples for ``seed``), on the pipeline folder ``folder``."""
    from .text_eval import load_pipeline

    try:
        pipe = load_pipeline(folder)
    except Exception as e:  # noqa: BLE001 - whatever diffusers raises for a folder it cannot open, in one line
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ShareError(f"{folder}: cannot open it as a text-to-image pipeline ({why}); give a digits-text "
                         "pipeline folder") from None
    evaluator = load_digit_reader()
    _, rows = held_in_prompts(n, seed)
    results = []
    for form in forms:
        r = measure_form(pipe, evaluator, form, rows, guidance, steps, seed, batch)
        results.append(r)
        if log is not None:
            log.write(f"{form}: all three right {r['accuracy']['all_three']:.3f}; on the digit (all steps): " + ", ".join(
                f"{role} {v['all_steps']['on_digit']:.3f}" for role, v in r["roles"].items())
                + f"; digit area {r['digit_area']['mean']:.3f}\n")
    start = last_third_start(steps)
    return {"model": str(folder), "n": n, "seed": seed, "guidance": guidance, "steps": steps, "batch": batch,
            "sampler": "DDIM, eta 0, the scheduler's own timestep spacing (text_eval.batch_images)",
            "maps": "DAAM (heads and layers averaged) of the conditional branch, bilinear from the latent grid to "
                    "the image, each normalised to sum 1",
            "digit_pixels": f"text_eval.read_colours: distance from the border median >= {FG_FRACTION} x the "
                            "largest; background: every other pixel",
            "last_third": f"steps {start + 1}-{steps} of {steps}", "forms": results}


# ----------------------------------------------------------------------------- report
def _with_error(v: dict) -> str:
    return f"{v['on_digit']:.2f}" + ("" if v["sem"] is None else f" ± {v['sem']:.2f}")


def report(results: list[dict], labels: list[str] | None = None) -> str:
    """A markdown table of :func:`measure` results (one or several models): per form and role, the share
    on the digit (all steps / last third) against the digit's area, with each form's accuracy."""
    labels = labels or [Path(r["model"]).name for r in results]
    header = ("| model | word order | all three right | word | on the digit, all steps | last third | "
              "× chance (last third) | digit area (chance) |")
    out = [header, "|---|---|---|---|---|---|---|---|"]
    for label, res in zip(labels, results):
        for f in res["forms"]:
            for role, v in f["roles"].items():
                a, last = v["all_steps"], v["last_third"]
                out.append(f"| {label} | `{f['template']}` | {100 * f['accuracy']['all_three']:.0f} % | "
                           f"{ROLE_NAMES[role]} | {_with_error(a)} | {last['on_digit']:.2f} | {last['lift']:.2f} | "
                           f"{f['digit_area']['mean']:.2f} |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- command
def _guidance(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v >= 1):
        raise argparse.ArgumentTypeError(f"{text} is not a guidance scale (a number >= 1; 1: no guidance)")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio.evaluation.attention_share",
                                description="share of the digit, colour and background words' cross-attention "
                                            "on the digit's pixels, for prompts in several word orders")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="a digits-text pipeline folder (default: the shipped one)")
    p.add_argument("--n", type=positive(int), default=DEFAULT_N, help=f"(digit, fg, bg) triples per form (default {DEFAULT_N})")
    p.add_argument("--forms", nargs="+", choices=list(PROMPT_FORMS), default=list(PROMPT_FORMS),
                   help="the word orders measured (default: all)")
    p.add_argument("--guidance", type=_guidance, default=DEFAULT_GUIDANCE, help=f"CFG scale w (default {DEFAULT_GUIDANCE:g})")
    p.add_argument("--steps", type=positive(int), default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"triples' and noise's seed (default {DEFAULT_SEED})")
    p.add_argument("--batch", type=positive(int), default=DEFAULT_BATCH, help=f"samples per batch (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=positive(int), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", metavar="OUT.json", help="write the results there (default: print them)")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print a markdown table of saved results and exit")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="with --report: each file's model name in the table "
                   "(default: the model folder's name)")
    return p


def _report_files(files: list[str], labels: list[str] | None = None) -> str:
    results = []
    for f in files:
        try:
            results.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise ShareError(f"{f}: cannot read results ({str(e).splitlines()[0]}); give a JSON file this "
                             "command wrote") from None
        if not isinstance(results[-1], dict) or "forms" not in results[-1]:
            raise ShareError(f"{f}: not results of this command (no 'forms'); give a JSON file it wrote")
    if labels is not None and len(labels) != len(files):
        raise ShareError(f"--labels names {len(labels)} models for {len(files)} files; give one name per file")
    return report(results, labels)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.report:
            print(_report_files(a.report, a.labels))
            return 0
        if not (Path(a.model) / "model_index.json").is_file():
            raise ShareError(f"{a.model}: no model_index.json; give a digits-text pipeline folder")
        out = Path(a.json) if a.json else None
        if out is not None and not out.parent.is_dir():
            raise ShareError(f"--json {a.json}: the folder {str(out.parent)!r} does not exist; create it first")
        if a.threads:
            torch.set_num_threads(a.threads)
        res = measure(a.model, a.n, a.forms, a.guidance, a.steps, a.seed, a.batch, log=sys.stderr)
    except ShareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    if out is None:
        print(text)
    else:
        try:
            out.write_text(text + "\n")
        except OSError as e:
            print(f"error: --json {a.json}: cannot write ({e.strerror}); choose another path", file=sys.stderr)
            return 2
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
