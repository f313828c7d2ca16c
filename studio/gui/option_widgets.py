"""Widgets made from declared settings (``studio.core.options.Option``): the range, choices, step and
tooltip of each come from the declaration, so the window allows exactly what a recipe allows."""
from __future__ import annotations

import math
from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from ..core.options import Option

SUFFIX = {"float": "Spin", "int": "Spin", "choice": "Combo", "bool": "Check"}


def object_name(opt: Option) -> str:
    """``corrector_steps`` (an int) → ``correctorStepsSpin``."""
    head, *rest = opt.name.split("_")
    return head + "".join(p.capitalize() for p in rest) + SUFFIX[opt.kind]


def decimals(opt: Option) -> int:
    """One decimal more than the declared step needs (step 0.1 → 2, 0.01 → 3)."""
    step = opt.step or 0.01
    return max(0, -math.floor(math.log10(step))) + 1


def combo_items(combo: QComboBox, opt: Option, none_text: str = "") -> None:
    """The declared choices (shown by their labels); a first "none_text" item for null if given."""
    if none_text:
        combo.addItem(none_text, None)
    for value in opt.choices:
        combo.addItem(opt.labelled(value), value)


def make_widget(opt: Option, none_text: str = "") -> QWidget:
    """A spin box, combo box or check box that allows what ``opt`` allows; named ``object_name(opt)``."""
    if opt.kind == "float":
        d = decimals(opt)
        low = opt.low if opt.low is not None else -1e9
        if opt.low_open:
            low += 10.0 ** -d
        w = QDoubleSpinBox(minimum=low, maximum=opt.high if opt.high is not None else 1e9, decimals=d,
                           singleStep=opt.step or 10.0 ** (1 - d))
    elif opt.kind == "int":
        w = QSpinBox(minimum=int(opt.low) + (1 if opt.low_open else 0) if opt.low is not None else -(2**31 - 1),
                     maximum=min(int(opt.high), 2**31 - 1) if opt.high is not None else 2**31 - 1,
                     singleStep=int(opt.step or 1))
    elif opt.kind == "choice":
        w = QComboBox()
        combo_items(w, opt, none_text)
    elif opt.kind == "bool":
        w = QCheckBox(opt.label or opt.name)
    else:
        raise ValueError(f"no widget for a {opt.kind} setting ({opt.name})")
    w.setObjectName(object_name(opt))
    if opt.help:
        w.setToolTip(opt.help[:1].upper() + opt.help[1:])
    if opt.default is not None:
        set_value(w, opt.default)
    return w


def value(w: QWidget) -> Any:
    """The widget's value (floats rounded to 4 decimals, as a recipe stores them)."""
    if isinstance(w, QDoubleSpinBox):
        return round(w.value(), 4)
    if isinstance(w, QSpinBox):
        return w.value()
    if isinstance(w, QComboBox):
        return w.currentData()
    if isinstance(w, QCheckBox):
        return w.isChecked()
    raise TypeError(f"not an option widget: {w!r}")


def set_value(w: QWidget, v: Any) -> None:
    if isinstance(w, (QDoubleSpinBox, QSpinBox)):
        w.setValue(v)
    elif isinstance(w, QComboBox):
        i = w.findData(v)
        if i >= 0:
            w.setCurrentIndex(i)
    elif isinstance(w, QCheckBox):
        w.setChecked(bool(v))


def changed_signal(w: QWidget):
    """The signal a widget emits when the user changes its value."""
    if isinstance(w, (QDoubleSpinBox, QSpinBox)):
        return w.valueChanged
    if isinstance(w, QComboBox):
        return w.currentIndexChanged
    return w.toggled
