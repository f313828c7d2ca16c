"""The sampler picker: the registry's samplers under their declared groups, as a web-UI user reads them."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QComboBox

from ..core.samplers import SAMPLER_GROUPS, SAMPLERS, samplers_by_group
from ..session.parameters import webui_sampler


def sampler_text(name: str) -> str:
    """A sampler's item text: its name, and the web UIs' name for it where that is another ("DPM++ 2M SDE")."""
    label = webui_sampler(name).label
    return name if label.lower() == name else f"{name}  ·  {label}"


def sampler_combo(object_name: str = "") -> QComboBox:
    """A combo box of every registered sampler under its group (``SamplerSpec.group``): a bold header that
    cannot be chosen per group, with the group's line as its tooltip, then its samplers, each with its
    description as tooltip. Items carry the sampler's name as data (headers carry none), so ``findData``
    and ``currentData`` work as on a flat list."""
    combo = QComboBox()
    if object_name:
        combo.setObjectName(object_name)
    model = QStandardItemModel(combo)
    bold = QFont()
    bold.setBold(True)
    for group, names in samplers_by_group().items():
        header = QStandardItem(group)
        header.setFlags(Qt.ItemFlag.NoItemFlags)  # neither selectable nor enabled: skipped by keys and wheel
        header.setFont(bold)
        header.setToolTip(SAMPLER_GROUPS[group])
        model.appendRow(header)
        for name in names:
            item = QStandardItem("    " + sampler_text(name))
            item.setData(name, Qt.ItemDataRole.UserRole)
            item.setToolTip(SAMPLERS[name].description)
            model.appendRow(item)
    combo.setModel(model)
    combo.setCurrentIndex(1)  # the first sampler, not the first header
    return combo

