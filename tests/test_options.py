"""``Option``: what a declared setting accepts (normalised) and how it refuses the rest (one line)."""
from __future__ import annotations

import math

import pytest

from studio.core.options import Option, OptionError

ETA = Option("eta", 0.0, "float", "η", low=0.0, high=1.0)
SNR = Option("snr", 0.16, "float", "r", low=0.0, low_open=True, high=1.0)
STEPS = Option("steps", 50, "int", "steps", low=1, high=10000)
VAR = Option("variance", "fixed_small", "choice", "v", choices=("fixed_small", "fixed_large"))
FLAG = Option("karras", None, "bool", "k", optional=True)
TEXT = Option("prompt", None, "str", "p", optional=True, allow_empty=True, high=5)
PAIR = Option("interval", (0.0, 1.0), "pair", "i", low=0.0, high=1.0)
SCHED = Option("schedule", {}, "mapping", "s", fields=(Option("beta_end", None, "float", "b", low=0.0, high=1.0,
                                                              optional=True),
                                                       Option("name", None, "str", "n", required=True)))


@pytest.mark.parametrize("opt,value,normalised", [
    (ETA, 1, 1.0), (ETA, 0.25, 0.25), (SNR, 1.0, 1.0), (STEPS, 7, 7), (VAR, "fixed_large", "fixed_large"),
    (FLAG, False, False), (FLAG, None, None), (TEXT, "", ""), (TEXT, "a cat", "a cat"), (PAIR, [0, 0.5], (0.0, 0.5)),
    (SCHED, {"name": "x", "beta_end": 0}, {"name": "x", "beta_end": 0.0}),
])
def test_allowed_values_are_normalised(opt, value, normalised):
    out = opt.check(value)
    assert out == normalised and type(out) is type(normalised)


@pytest.mark.parametrize("opt,value,message", [
    (ETA, 1.5, "eta must be a number from 0 to 1, got 1.5"),
    (ETA, math.inf, "eta must be a number from 0 to 1, got inf"),
    (ETA, True, "eta must be a number from 0 to 1, got True"),
    (ETA, None, "eta must be a number from 0 to 1, got None"),
    (ETA, 10**400, "eta must be a number from 0 to 1, got 1000000"),
    (SNR, 0, "snr must be a number > 0 and ≤ 1, got 0"),
    (STEPS, 2.0, "steps must be an integer from 1 to 10000, got 2.0"),
    (VAR, "learned", "unknown variance 'learned'; choose one of fixed_small, fixed_large"),
    (VAR, ["fixed_small"], "variance must be one of fixed_small, fixed_large, got ['fixed_small']"),
    (FLAG, "yes", "karras must be true or false or null, got 'yes'"),
    (TEXT, "a long prompt", "prompt must be a string of at most 5 characters or null, got 'a long prompt'"),
    (TEXT, 3, "prompt must be a string of at most 5 characters or null, got 3"),
    (PAIR, [0.1, None], "interval must be a pair [start, end] of numbers from 0 to 1, got [0.1, None]"),
    (PAIR, [0.1, 2], "interval must be a pair [start, end] of numbers from 0 to 1, got [0.1, 2]"),
    (SCHED, {"name": "x", "beta_end": "1"}, "schedule.beta_end must be a number from 0 to 1 or null, got '1'"),
    (SCHED, {"beta_end": 0.1}, "schedule needs 'name' (a non-empty string)"),
    (SCHED, {"name": "x", "other": 1}, "unknown schedule setting 'other'; choose from beta_end, name"),
])
def test_refused_values_give_one_line_naming_the_setting_the_value_and_what_is_allowed(opt, value, message):
    with pytest.raises(OptionError) as e:
        opt.check(value)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_declarations_are_checked_and_flags_derived():
    with pytest.raises(ValueError, match="choices"):
        Option("x", None, "choice")
    with pytest.raises(ValueError, match="kind"):
        Option("x", None, "complex")
    assert Option("corrector_steps").cli_flag == "--corrector-steps"
    assert Option("spacing", flag="--timestep-spacing").cli_flag == "--timestep-spacing"
    assert Option("branch", flag=None).cli_flag is None
    assert VAR.named("v2").name == "v2" and VAR.labelled("fixed_small") == "fixed_small"
