"""The web UIs' prompt-weighting syntax, parsed into (text, weight) runs, with where each piece came from.

AUTOMATIC1111 and Forge read emphasis from brackets in the prompt: ``(word)`` multiplies the weight of
what it encloses by 1.1, ``[word]`` divides it by 1.1, ``(word:1.3)`` multiplies it by 1.3; brackets nest
(their factors multiply), a bracket left open applies to the end of the prompt, a closing bracket that
closes nothing is text, and a backslash makes the next bracket or backslash literal (``\\(``). ``BREAK``
between spaces starts a new 75-token chunk (kept here as a run of weight -1). Adjacent runs of equal
weight are merged. The rules follow A1111's ``prompt_parser.parse_prompt_attention``, so that a weighted
prompt means here what it means there; the tests check the examples its documentation gives.

That reading is lenient: it never fails. :func:`prompt_issues` says where it is probably not what was
meant. Some of those the studio refuses (``fatal``: a weight that is not a number, a weight beyond ±100,
brackets around no words at all, A1111's prompt editing ``[word:0.5]``, which the studio does not do);
the others it reads as the web UIs do and says so (a bracket never closed, a closing bracket that
closes nothing). :func:`checked_runs` is the reading the encoders use: the runs, or a one-line
:class:`PromptWeightError` for the first fatal issue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ROUND = 1.1  # (…): × 1.1
SQUARE = 1 / 1.1  # […]: ÷ 1.1
BREAK = "BREAK"
MAX_WEIGHT = 100.0  # a token's weight (written, or the product of nested brackets) is within ±MAX_WEIGHT

_TOKEN = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
\(|\[|                        # openers
:\s*([+-]?[.\d]+)\s*\)|       # (text:weight) closer
\)|]|                         # closers
[^\\()\[\]:]+|                # plain text
:                             # a colon that is no weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")  # what a weight may be written as
# "(text:X)" where X is one word: meant as a weight; "[text:0.5]": A1111's prompt editing
_WORD_AFTER_COLON = re.compile(r":\s*([^\s:()\[\]\\]*)\s*$")
_NUMBER_AFTER_COLON = re.compile(r":\s*[+-]?[.\d]+\s*$")

TEXT, ESCAPE, BREAK_KIND, OPEN, CLOSE, STRAY = "text", "escape", "break", "open", "close", "stray"


class PromptWeightError(ValueError):
    """A prompt whose weights cannot be read (one line naming the problem and what to write instead)."""


@dataclass
class Piece:
    """A stretch ``prompt[start:end]``: words (``text``: what it adds to the encoded text; ``weight``: the
    product of the brackets around it), a bracket (``factor``: what its group multiplies by; ``closed``:
    whether it pairs with another), an escape, BREAK, or a stray closing bracket read as text."""

    start: int
    end: int
    kind: str
    text: str = ""
    weight: float = 1.0
    factor: float = 1.0
    closed: bool = True
    opener: int = -1  # a closing bracket's opening one (its index among the pieces)


@dataclass(frozen=True)
class Issue:
    """Something in ``prompt[start:end]`` that is probably not what was meant: refused when ``fatal``,
    else read as the web UIs do; ``message`` is one line."""

    start: int
    end: int
    message: str
    fatal: bool


def read_prompt(prompt: str) -> list[Piece]:
    """The prompt as pieces, in order, weighted as A1111 reads it (never fails)."""
    pieces: list[Piece] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def close(opener: int, closer: Piece, factor: float) -> None:
        pieces[opener].factor = closer.factor = factor
        closer.opener = opener
        for p in pieces[opener:]:
            p.weight *= factor
        closer.weight = pieces[opener].weight
        pieces.append(closer)

    for m in _TOKEN.finditer(prompt):
        text, weight, start, end = m.group(0), m.group(1), m.start(), m.end()
        if text.startswith("\\"):
            pieces.append(Piece(start, end, ESCAPE, text[1:]))
        elif text in "([":
            (round_open if text == "(" else square_open).append(len(pieces))
            pieces.append(Piece(start, end, OPEN))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # "1.2.3", "." — _TOKEN's weight is A1111's, looser than a number
                factor = 1.0
            close(round_open.pop(), Piece(start, end, CLOSE), factor)
        elif text == ")" and round_open:
            close(round_open.pop(), Piece(start, end, CLOSE), ROUND)
        elif text == "]" and square_open:
            close(square_open.pop(), Piece(start, end, CLOSE), SQUARE)
        elif text in (")", "]") or weight is not None:
            pieces.append(Piece(start, end, STRAY, text))
        else:
            at = start
            for b in _BREAK.finditer(text):
                pieces.append(Piece(at, start + b.start(), TEXT, text[at - start:b.start()]))
                pieces.append(Piece(start + b.start(), start + b.end(), BREAK_KIND, BREAK, -1.0))
                at = start + b.end()
            pieces.append(Piece(at, end, TEXT, text[at - start:]))
    for opener in round_open + square_open:  # A1111: an open bracket weights everything after it
        factor = ROUND if opener in round_open else SQUARE
        pieces[opener].factor, pieces[opener].closed = factor, False
        for p in pieces[opener:]:
            p.weight *= factor
    return pieces


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """The prompt as runs of (text, weight), in order; a prompt without brackets is one run of weight 1."""
    runs = [[p.text, p.weight] for p in read_prompt(prompt) if p.kind in (TEXT, ESCAPE, STRAY, BREAK_KIND)]
    if not runs:
        return [("", 1.0)]
    merged: list[list] = [runs[0]]
    for text, weight in runs[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def is_plain(prompt: str) -> bool:
    """Whether the prompt has no weighting syntax at all (it reads as itself, weight 1)."""
    return parse_weights(prompt) == [(prompt, 1.0)]


def _quote(prompt: str, start: int, end: int, most: int = 40) -> str:
    text = prompt[start:end]
    return repr(text if len(text) <= most else text[:most - 1] + "…")


def prompt_issues(prompt: str) -> list[Issue]:
    """Where the prompt's weighting is probably not what was meant, in order (see the module's text)."""
    pieces = read_prompt(prompt)
    issues: list[Issue] = []
    for p in pieces:
        if p.kind == OPEN:
            if not p.closed:
                bracket, escape = prompt[p.start], "\\" + prompt[p.start]
                issues.append(Issue(p.start, p.end, f"the {bracket!r} at character {p.start + 1} is never closed, so "
                                    f"it weights everything after it by {p.factor:.3g}, as the web UIs read it; "
                                    f"close it, or write {escape} for the bracket itself", False))
        elif p.kind == STRAY:
            escape = "\\" + p.text[-1]
            issues.append(Issue(p.start, p.end, f"the {p.text!r} at character {p.start + 1} closes no bracket and is read "
                                f"as text, as the web UIs read it; remove it, or write {escape} for the bracket itself",
                                False))
        elif p.kind == BREAK_KIND:
            issues.append(Issue(p.start, p.end, "BREAK starts a new chunk of tokens in the web UIs; the studio encodes "
                                "one chunk, as diffusers does; remove BREAK", True))
        elif p.kind == CLOSE:
            opener = p.opener
            group = _quote(prompt, pieces[opener].start, p.end)
            inner = prompt[pieces[opener].end:p.start] if prompt[p.start] in ")]" else ""
            written = prompt[p.start:p.end]
            if written.startswith(":"):
                number = written[1:-1].strip()
                if not _NUMBER.fullmatch(number):
                    issues.append(Issue(pieces[opener].start, p.end, f"the weight {number!r} in {group} is not a "
                                        "number; write it like (word:1.3)", True))
                    continue
            elif prompt[p.start] == ")":
                after = _WORD_AFTER_COLON.search(inner)
                if after:
                    what = f"the weight {after.group(1)!r} in {group} is not a number" if after.group(1) else \
                        f"the weight in {group} is missing"
                    issues.append(Issue(pieces[opener].start, p.end, f"{what}; write it like (word:1.3), or leave out "
                                        "the ':'", True))
                    continue
            elif _NUMBER_AFTER_COLON.search(inner):
                issues.append(Issue(pieces[opener].start, p.end, f"{group} is the web UIs' prompt editing (a word from "
                                    "a step on), which the studio does not do; to weight words write (word:0.5)", True))
                continue
            if abs(p.factor) > MAX_WEIGHT:
                issues.append(Issue(pieces[opener].start, p.end, f"the weight {p.factor:g} in {group} is beyond "
                                    f"±{MAX_WEIGHT:g}; use a weight from {-MAX_WEIGHT:g} to {MAX_WEIGHT:g}", True))
    for p in pieces if not any(issue.fatal for issue in issues) else []:  # one line for one problem
        if p.kind in (TEXT, ESCAPE, STRAY) and p.text.strip() and abs(p.weight) > MAX_WEIGHT:
            issues.append(Issue(p.start, p.end, f"{_quote(prompt, p.start, p.end)} ends up weighted {p.weight:.4g} (nested "
                                f"brackets multiply), beyond ±{MAX_WEIGHT:g}; use fewer brackets or a smaller weight", True))
            break
    words = "".join(p.text for p in pieces if p.kind in (TEXT, ESCAPE, STRAY))
    if not words.strip() and any(p.kind == OPEN for p in pieces):
        issues.append(Issue(0, len(prompt), f"{_quote(prompt, 0, len(prompt))} has weights but no words to weight; "
                            "write the words inside the brackets, e.g. (a red seven:1.2)", True))
    return sorted(issues, key=lambda x: x.start)


def checked_runs(prompt: str, name: str = "prompt") -> list[tuple[str, float]]:
    """``parse_weights(prompt)``, or a one-line :class:`PromptWeightError` for its first fatal issue
    (``name``: which prompt it is, for the message)."""
    for issue in prompt_issues(prompt):
        if issue.fatal:
            raise PromptWeightError(f"{name}: {issue.message}")
    return parse_weights(prompt)


def weight_notes(prompt: str, name: str = "prompt") -> list[str]:
    """The non-fatal issues, one line each: how the prompt was read where it was probably not what was meant."""
    return [f"{name}: {issue.message}" for issue in prompt_issues(prompt) if not issue.fatal]
