"""The web UIs' emphasis syntax: the examples AUTOMATIC1111's ``parse_prompt_attention`` documents, as
independent truth (modules/prompt_parser.py), and the rules they imply."""
from __future__ import annotations

import pytest

from studio.core.prompt_weights import parse_weights

A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]


@pytest.mark.parametrize("prompt,runs", A1111_EXAMPLES)
def test_the_documented_examples(prompt, runs):
    got = parse_weights(prompt)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs], rel=1e-12)


def test_square_brackets_divide_and_nesting_multiplies():
    assert parse_weights("[faded]") == [("faded", pytest.approx(1 / 1.1))]
    assert parse_weights("((a:2) b)") == [("a", pytest.approx(2.2)), (" b", pytest.approx(1.1))]
    assert parse_weights("[[x]]") == [("x", pytest.approx(1 / 1.21))]


def test_break_and_colons_and_the_empty_prompt():
    assert parse_weights("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_weights("ratio 16:9") == [("ratio 16:9", 1.0)]  # a colon outside (…:w) is text
    assert parse_weights("") == [("", 1.0)]
    assert parse_weights("a \\\\ b") == [("a \\ b", 1.0)]
