"""The web UIs' prompt-weighting syntax, parsed into (text, weight) runs.

AUTOMATIC1111 and Forge read emphasis from brackets in the prompt: ``(word)`` multiplies the weight of
what it encloses by 1.1, ``[word]`` divides it by 1.1, ``(word:1.3)`` multiplies it by 1.3; brackets nest
(their factors multiply), a bracket left open applies to the end of the prompt, and a backslash makes
the next bracket or backslash literal (``\\(``). ``BREAK`` between spaces starts a new 75-token chunk
(kept here as a run of weight -1). Adjacent runs of equal weight are merged. The rules follow A1111's
``prompt_parser.parse_prompt_attention``, so that a weighted prompt means here what it means there;
the tests check the examples its documentation gives.
"""
from __future__ import annotations

import re

ROUND = 1.1  # (…): × 1.1
SQUARE = 1 / 1.1  # […]: ÷ 1.1
BREAK = "BREAK"

_TOKEN = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
\(|\[|                        # openers
:\s*([+-]?[.\d]+)\s*\)|       # (text:weight) closer
\)|]|                         # closers
[^\\()\[\]:]+|                # plain text
:                             # a colon that is no weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """The prompt as runs of (text, weight), in order; a prompt without brackets is one run of weight 1."""
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _TOKEN.finditer(prompt):
        text, weight = m.group(0), m.group(1)
        if text.startswith("\\"):
            runs.append([text[1:], 1.0])
        elif text == "(":
            round_open.append(len(runs))
        elif text == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif text == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for k, part in enumerate(_BREAK.split(text)):
                if k:
                    runs.append([BREAK, -1.0])
                runs.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not runs:
        runs = [["", 1.0]]
    merged: list[list] = [runs[0]]
    for text, weight in runs[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]
