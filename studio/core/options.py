"""Declared settings: what a sampler option or a recipe field is, said once and checked in one place.

An :class:`Option` names a setting and gives its default, its kind, the values it allows (a range
or a list of choices) and one line of help. ``Option.check`` accepts a value the declaration allows
(returning it normalised: an integer given for a number becomes a float, a list for a pair becomes a
tuple) and refuses anything else with an :class:`OptionError` whose message is one line naming the
setting, the value and what is allowed. The samplers' registry, the recipe, the command line and the
window all read these declarations instead of keeping their own copies.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

KINDS = ("float", "int", "bool", "str", "choice", "pair", "floats", "strs", "mapping", "object")


class OptionError(ValueError):
    """A value that its declaration does not allow; the message is one line."""


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Option:
    """One setting.

    kind:
      ``float`` / ``int``: a number (an int or a float / an int; never a bool) within ``low`` .. ``high``
      (``low_open`` / ``high_open`` make a bound exclusive); ``bool``: true or false; ``str``: a string,
      non-empty unless ``allow_empty``, of at most ``high`` characters if given; ``choice``: one of ``choices``; ``pair``: two numbers within the range, as a tuple;
      ``floats``: a list of finite numbers; ``strs``: a list of strings; ``mapping``: an object whose keys are the ``fields`` options;
      ``object``: any JSON object (checked further by its owner).
    ``optional``: null (None) is allowed too; what it means is said in ``help`` (usually "the model's
    or the sampler's own default"). ``label`` and ``choice_labels`` are the names the window shows;
    ``step`` is the natural increment (a spin box's step). ``flag`` is the command-line flag: "" derives
    ``--name-with-dashes``, None means none.
    """

    name: str = ""  # a declared() field takes the field's name
    default: Any = None
    kind: str = "float"
    help: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    optional: bool = False
    allow_empty: bool = False  # a str may be ""
    required: bool = False  # inside a mapping: the key must be present
    fields: tuple["Option", ...] = ()
    label: str = ""
    choice_labels: tuple[str, ...] = ()
    step: Optional[float] = None
    flag: Optional[str] = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name!r}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"option {self.name!r}: a choice needs its choices")
        if self.choice_labels and len(self.choice_labels) != len(self.choices):
            raise ValueError(f"option {self.name!r}: one label per choice")

    # -- describing --------------------------------------------------------------------------
    def named(self, name: str) -> "Option":
        return dataclasses.replace(self, name=name)

    @property
    def cli_flag(self) -> Optional[str]:
        """The command-line flag, or None."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None and not self.low_open and not self.high_open:
            return f"from {_num(lo)} to {_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.high_open else '≤'} {_num(hi)}")
        return " and ".join(parts)

    def allowed(self) -> str:
        """What the option allows, as words: "a number from 0 to 1", "one of a, b"."""
        rng = self.range_text()
        rng = f" {rng}" if rng else ""
        text = {
            "float": f"a number{rng}",
            "int": f"an integer{rng}",
            "bool": "true or false",
            "str": ("a string" if self.allow_empty else "a non-empty string")
            + (f" of at most {_num(self.high)} characters" if self.high is not None else ""),
            "choice": "one of " + ", ".join(map(str, self.choices)),
            "pair": f"a pair [start, end] of numbers{rng}",
            "floats": "a list of numbers",
            "strs": "a list of strings",
            "mapping": "an object with keys " + ", ".join(f.name for f in self.fields),
            "object": "an object",
        }[self.kind]
        return text + (" or null" if self.optional else "")

    def labelled(self, value: Any) -> str:
        """The window's name for a choice value."""
        if self.choice_labels and value in self.choices:
            return self.choice_labels[self.choices.index(value)]
        return str(value)

    # -- checking ----------------------------------------------------------------------------
    def refuse(self, value: Any) -> OptionError:
        if self.kind == "choice" and isinstance(value, str):
            return OptionError(f"unknown {self.name} {_show(value)}; choose one of {', '.join(map(str, self.choices))}")
        return OptionError(f"{self.name} must be {self.allowed()}, got {_show(value)}")

    def _in_range(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True

    def _number(self, v: Any, bounded: bool = True) -> bool:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        try:
            f = float(v)
        except OverflowError:
            return False
        return self._in_range(f) if bounded else math.isfinite(f)

    def check(self, value: Any) -> Any:
        """``value`` normalised if the declaration allows it; else an OptionError (one line)."""
        if value is None:
            if self.optional:
                return None
            raise self.refuse(value)
        k = self.kind
        if k in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if k == "int" else numbers.Real):
                raise self.refuse(value)
            if not self._number(value):
                raise self.refuse(value)
            return int(value) if k == "int" else float(value)
        if k == "bool":
            if value is True or value is False:
                return value
            raise self.refuse(value)
        if k == "str":
            if (isinstance(value, str) and (value or self.allow_empty)
                    and (self.high is None or len(value) <= self.high)):
                return value
            raise self.refuse(value)
        if k == "choice":
            if isinstance(value, (str, numbers.Number)) and not isinstance(value, bool) and value in self.choices:
                return value
            raise self.refuse(value)
        if k == "pair":
            if isinstance(value, (list, tuple)) and len(value) == 2 and all(self._number(v) for v in value):
                return (float(value[0]), float(value[1]))
            raise self.refuse(value)
        if k == "floats":
            if isinstance(value, (list, tuple)) and all(self._number(v, bounded=False) for v in value):
                return [float(v) for v in value]
            raise self.refuse(value)
        if k == "strs":
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            raise self.refuse(value)
        if k == "object":
            if isinstance(value, Mapping):
                return dict(value)
            raise self.refuse(value)
        # mapping
        if not isinstance(value, Mapping):
            raise self.refuse(value)
        known = {f.name: f for f in self.fields}
        out = {}
        for key, v in value.items():
            if key not in known:
                raise OptionError(f"unknown {self.name} setting {_show(key)}; "
                                  f"choose from {', '.join(known) or 'none'}")
            out[key] = known[key].named(f"{self.name}.{key}").check(v)
        for f in self.fields:
            if f.required and f.name not in out:
                raise OptionError(f"{self.name} needs {f.name!r} ({f.allowed()})")
        return out


def declared(option: Option, **field_kw) -> Any:
    """A dataclass field declared by ``option`` (its name is the field's): default and metadata in one.

    ``recipe_field: T = declared(Option(default=..., kind=..., help=...))``; read the declarations back
    with :func:`schema`."""
    default = option.default
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"option": option}, **field_kw)
    return dataclasses.field(default=default, metadata={"option": option}, **field_kw)


def schema(cls) -> dict[str, Option]:
    """Every field of dataclass ``cls`` declared with :func:`declared`, as {name: Option} in field order."""
    return {f.name: f.metadata["option"].named(f.name) for f in dataclasses.fields(cls) if "option" in f.metadata}
