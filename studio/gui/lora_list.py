"""The panel's LoRA list and VAE chooser: the window side of a recipe's ``loras`` and ``vae``.

Each LoRA has a slider over the weights users reach for (−2 to 2, in the declared step) and a spin
box that allows what a recipe allows (``lora_files.WEIGHT``). A file is checked from its header when
it is added, with the same one-line refusals as ``--lora`` (``lora_files.lora_layout``: not a LoRA,
a LyCORIS network, a checkpoint or VAE; ``check_family``: a LoRA for another family than the open
model's). What only the weights can tell (NaN values, layers that match nothing) is refused when a
run loads the file (``checkpoints/lora.py``). Changing a weight reloads nothing: the next run, branch
or comparison sets the adapters' weights on the open model (``apply_loras`` → ``set_adapters``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QSlider,
                               QToolButton, QVBoxLayout, QWidget)

from ..checkpoints.header import CheckpointError, read_header
from ..checkpoints.lora_files import WEIGHT, LoraChoice, check_family, lora_layout, parse_lora
from . import option_widgets as ow

SLIDER_RANGE = (-2.0, 2.0)  # the weights the slider covers; the spin box takes the whole declared range
OWN_VAE = "the checkpoint's own"
CHOOSE_FILE, CHOOSE_FOLDER = "__vae_file__", "__vae_folder__"
NAME_WIDTH = 64  # pixels for a LoRA's file name beside its slider (elided in the middle; the tooltip has the path)


def lora_problem(path: str, model=None) -> Optional[str]:
    """Why ``path`` cannot be added as a LoRA, in the one line ``--lora`` gives (None: it can be): the header
    says it is no LoRA diffusers reads, or — with ``model``, a text-to-image model — that it was made for
    another family."""
    p = Path(path).expanduser().resolve()
    try:
        layout = lora_layout(read_header(p))
        if model is not None and getattr(model.info, "text_conditioned", False):
            check_family(p, layout, model)
    except CheckpointError as e:
        return str(e)
    return None


def weight_spin(weight: float) -> QDoubleSpinBox:
    """A spin box over the declared weights (``WEIGHT``), showing ``weight``."""
    spin = ow.make_widget(WEIGHT)
    spin.setValue(weight)
    return spin


class LoraEntry(QWidget):
    """One LoRA: its file name, a weight slider (``SLIDER_RANGE``) and spin box that follow each other, ✕."""
    weightChanged = Signal(float)

    def __init__(self, choice: LoraChoice, parent=None):
        super().__init__(parent)
        self.path = choice.path
        self._busy = False
        self.nameLabel = QLabel(objectName="loraName")
        self.nameLabel.setToolTip(choice.path)
        self.nameLabel.setFixedWidth(NAME_WIDTH)
        self.nameLabel.setText(self.nameLabel.fontMetrics().elidedText(Path(choice.path).stem,
                                                                       Qt.TextElideMode.ElideMiddle, NAME_WIDTH))
        self.slider = QSlider(Qt.Orientation.Horizontal, objectName="loraSlider")
        self.slider.setRange(*(round(w / WEIGHT.step) for w in SLIDER_RANGE))
        self.slider.setToolTip(f"{choice.path}\nweight {SLIDER_RANGE[0]:g} to {SLIDER_RANGE[1]:g} "
                               f"(the box beside it takes {WEIGHT.allowed()})")
        self.spin = weight_spin(choice.weight)
        self.spin.setObjectName("loraWeightSpin")
        self.removeButton = QToolButton(text="✕", objectName="loraRemove")
        self.removeButton.setToolTip("Remove this LoRA")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.nameLabel)
        lay.addWidget(self.slider, 2)
        lay.addWidget(self.spin)
        lay.addWidget(self.removeButton)
        self._show_on_slider(choice.weight)
        self.slider.valueChanged.connect(lambda v: self._set(v * WEIGHT.step, from_slider=True))
        self.spin.valueChanged.connect(lambda v: self._set(v))

    @property
    def weight(self) -> float:
        return ow.value(self.spin)

    def choice(self) -> LoraChoice:
        return LoraChoice(self.path, self.weight)

    def set_weight(self, weight: float) -> None:
        self.spin.setValue(weight)

    def _show_on_slider(self, weight: float) -> None:
        low, high = SLIDER_RANGE
        self.slider.setValue(round(min(max(weight, low), high) / WEIGHT.step))

    def _set(self, weight: float, from_slider: bool = False) -> None:
        if self._busy:  # the slider and the spin box update each other once, not back and forth
            return
        self._busy = True
        try:
            if from_slider:
                self.spin.setValue(round(weight, 4))
            else:
                self._show_on_slider(weight)
        finally:
            self._busy = False
        self.weightChanged.emit(self.weight)


class LoraList(QWidget):
    """The recipe's LoRAs, one ``LoraEntry`` each, with a one-line error for a file refused when added.
    ``addButton`` is placed by the panel; ``model_source`` gives the open model (or None) to check a LoRA's
    family against."""
    changed = Signal()
    refused = Signal(str)  # the one line a file was refused with

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("loraList")
        self.model_source: Callable[[], object] = lambda: None
        self.entries: list[LoraEntry] = []
        self.addButton = QToolButton(text="+ LoRA…", objectName="loraAddButton")
        self.addButton.setToolTip("Add a LoRA (.safetensors, kohya / web UI or diffusers/PEFT) with a weight slider; "
                                  "changing a weight reloads nothing")
        self.addButton.clicked.connect(self.add_dialog)
        self.errorLabel = QLabel(objectName="loraError", wordWrap=True)
        self.errorLabel.setStyleSheet("color: #e0787a;")
        self.errorLabel.hide()
        self._rows = QVBoxLayout()
        self._rows.setContentsMargins(0, 0, 0, 0)
        self._rows.setSpacing(2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(self._rows)
        lay.addWidget(self.errorLabel)
        self._update()

    # -- the recipe's field ----------------------------------------------------------------------
    def loras(self) -> list[str]:
        """The ``loras`` field: ``FILE:WEIGHT`` for each LoRA, in list order."""
        return [str(e.choice()) for e in self.entries]

    def set_loras(self, entries) -> None:
        """Show a recipe's ``loras`` (not checked here: a run refuses a file that is missing or wrong)."""
        for e in self.entries:
            e.setParent(None)
            e.deleteLater()
        self.entries = []
        for text in entries or ():
            self._append(parse_lora(text))
        self._show_error(None)
        self.changed.emit()

    # -- adding and removing ---------------------------------------------------------------------
    def add_dialog(self) -> None:
        start = str(Path(self.entries[-1].path).parent) if self.entries else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Add a LoRA", start, "LoRA files (*.safetensors);;All files (*)")
        if path:
            self.add_file(path)

    def add_file(self, path: str, weight: float = WEIGHT.default) -> bool:
        """Add the LoRA at ``path`` (made absolute, as ``--lora`` makes it) at ``weight``; False, with the one-line
        refusal shown and the list as it was, when it is not a LoRA for the open model or is listed already."""
        full = str(Path(path).expanduser().resolve())
        problem = lora_problem(full, self.model_source())
        if problem is None and any(Path(e.path).expanduser().resolve() == Path(full) for e in self.entries):
            problem = f"{full}: already in the list; change its weight there"
        if problem is not None:
            self._show_error(problem)
            self.refused.emit(problem)
            return False
        self._show_error(None)
        self._append(LoraChoice(full, weight))
        self.changed.emit()
        return True

    def remove(self, entry: LoraEntry) -> None:
        self.entries.remove(entry)
        entry.setParent(None)
        entry.deleteLater()
        self._show_error(None)
        self._update()
        self.changed.emit()

    def _append(self, choice: LoraChoice) -> LoraEntry:
        entry = LoraEntry(choice)
        entry.weightChanged.connect(lambda _: self.changed.emit())
        entry.removeButton.clicked.connect(lambda: self.remove(entry))
        self.entries.append(entry)
        self._rows.addWidget(entry)
        self._update()
        return entry

    def _show_error(self, text: Optional[str]) -> None:
        self.errorLabel.setText(text or "")
        self.errorLabel.setToolTip(text or "")
        self.errorLabel.setVisible(bool(text))
        self._update()

    def _update(self) -> None:
        """Take no room while there is nothing to show (the panel must fit a laptop screen)."""
        self.setVisible(bool(self.entries) or bool(self.errorLabel.text()))


class VaeChooser(QComboBox):
    """The recipe's ``vae``: the checkpoint's own (None), or a VAE file or diffusers VAE folder chosen here
    (a run refuses one that does not fit the model, in one line: ``checkpoints/vae_file.py``)."""
    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("vaeCombo")
        self.setToolTip("The VAE that decodes the images: the checkpoint's own, or a standalone VAE file "
                        "(.safetensors) or diffusers VAE folder in its place")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.addItem(OWN_VAE, None)
        self.insertSeparator(1)
        self.addItem("VAE file…", CHOOSE_FILE)
        self.addItem("VAE folder…", CHOOSE_FOLDER)
        self._value: Optional[str] = None
        self.activated.connect(self._activated)

    def value(self) -> Optional[str]:
        return self._value

    def set_value(self, path: Optional[str]) -> None:
        """Show ``path`` (None: the checkpoint's own), adding it to the list if it is not there yet."""
        if path is not None and self.findData(path) < 0:
            self.insertItem(1, Path(path).name or path, path)
            self.setItemData(1, path, Qt.ItemDataRole.ToolTipRole)
        self.setCurrentIndex(0 if path is None else self.findData(path))
        if path != self._value:
            self._value = path
            self.changed.emit()

    def _activated(self, index: int) -> None:
        data = self.itemData(index)
        if data == CHOOSE_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "A VAE file", self._start(),
                                                  "VAE files (*.safetensors);;All files (*)")
        elif data == CHOOSE_FOLDER:
            path = QFileDialog.getExistingDirectory(self, "A diffusers VAE folder (config.json + weights)",
                                                    self._start())
        else:
            self.set_value(data)
            return
        self.set_value(str(Path(path).expanduser().resolve()) if path else self._value)  # cancelled: as it was

    def _start(self) -> str:
        return str(Path(self._value).parent) if self._value else str(Path.home())
