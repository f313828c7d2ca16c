"""argparse ``type=`` functions for numbers with a range: a bad value is a one-line usage error
(argparse prints it and exits 2) before anything runs. Shared by every command line."""
from __future__ import annotations

import argparse
import math


def positive(cast):
    """A number > 0 of type ``cast`` (``int`` or ``float``; NaN and infinity refused)."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return v
    parse.__name__ = cast.__name__
    return parse


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    v = positive(float)(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def non_negative(text: str) -> float:
    """A finite number ≥ 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text!r}")
    return v
