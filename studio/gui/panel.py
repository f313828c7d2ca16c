"""The sampler panel: model picker and every setting of a Recipe."""
from __future__ import annotations

import random
from typing import Any, Callable, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QSizePolicy, QSlider, QToolButton, QVBoxLayout, QWidget)

from ..core.guidance import default_scale
from ..core.samplers import OPTION_SCHEMA, SAMPLERS
from ..session.recipe import Recipe
from . import option_widgets as ow
from .lora_list import LoraList, VaeChooser
from .prompt_box import PromptEdit
from .sampler_combo import sampler_combo

BUILTIN_MODELS = [("gmm", "gmm — exact Gaussian mixture"), ("default", "default — shipped digits model"),
                  ("digits-text", "digits-text — shipped text-to-image model")]
OPEN_FOLDER = "__open__"
PREVIEW_TIP = ("How each step's latents are shown while the run streams; the step you stop on and the final "
               "image always get the full VAE decode")
SLIDER_STEPS = 10  # slider ticks per unit of guidance scale
SEED_MAX = 2**31 - 1


def _combo(name: str, items, tip: str = "") -> QComboBox:
    c = QComboBox()
    c.setObjectName(name)
    for data, text in items:
        c.addItem(text, data)
    if tip:
        c.setToolTip(tip)
    return c


def _select(combo: QComboBox, data) -> bool:
    i = combo.findData(data)
    if i >= 0:
        combo.setCurrentIndex(i)
    return i >= 0


def _enable_item(combo: QComboBox, data, on: bool) -> None:
    """Enable or disable the item of ``combo`` whose data is ``data`` (whatever its position)."""
    combo.model().item(combo.findData(data)).setEnabled(on)


# a recipe field as the panel shows it: read it from the widgets, show a value on them
Binding = tuple[Callable[[], Any], Callable[[Any], None]]

# the recipe fields the panel has no widget for, and where their values come from instead
NOT_SHOWN = {
    "model": "the window's open model (recipe(model=…), show_model)",
    "classifier_form": "the last recipe set", "classifier": "the last recipe set",
    "schedule": "the last recipe set", "init_noise": "the last recipe set",
    "prediction_type": "the last recipe set",
    "init_image": "the last recipe set", "init_image_fit": "the last recipe set", "strength": "the last recipe set",
    "start_step": "the last recipe set", "init_image_sha256": "the last recipe set",
    "branch": "none: the panel describes a new run (a branch is made from the window's run)",
    "inversion": "the last recipe set (a run from an inverted image's x_T, session/inversion.py)",
}


class ElidedLabel(QLabel):
    """A one-line grey note that ends in … when the panel is narrower than its text; the whole text is
    its tooltip. One line whatever the text, so the panel's height does not grow with a description."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setStyleSheet("color: #9a9aa6;")
        self.setMinimumWidth(1)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setPen(self.palette().color(self.foregroundRole()))
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())
        p.drawText(self.contentsRect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), shown)


def _compact(form: QFormLayout) -> QFormLayout:
    """A form with tight rows: with a text model the whole panel fits a 768 px screen without scrolling."""
    form.setVerticalSpacing(4)
    form.setContentsMargins(6, 4, 6, 4)
    return form


def _plain(w: QWidget) -> Binding:
    return (lambda: ow.value(w), lambda v: ow.set_value(w, v))


class SamplerPanel(QWidget):
    modelRequested = Signal(str)  # a model spec, or OPEN_FOLDER
    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scale_busy = False
        self._size_set = False  # a recipe chose the size; a newly opened text model keeps it if it can
        self._base = Recipe()
        self._info = None
        self._model_spec = "gmm"

        # model ----------------------------------------------------------------------------
        self.modelPicker = _combo("modelPicker", [], "The model to sample from (Ctrl+O opens a model folder; "
                                  "you can also drop a folder on the window)")
        self.modelInfo = ElidedLabel("loading…")
        schema = Recipe.schema()
        self.deviceCombo = _combo("deviceCombo", [(d, d) for d in ("auto", "cpu", "cuda", "mps")],
                                  "Where to run the model (auto: CUDA, then MPS, then CPU)")
        self.dtypeCombo = ow.make_widget(schema["dtype"])
        model_box = QGroupBox("Model")
        f = _compact(QFormLayout(model_box))
        f.addRow(self.modelPicker)
        f.addRow(self.modelInfo)
        dev = QHBoxLayout()
        dev.addWidget(self.deviceCombo)
        dev.addWidget(self.dtypeCombo)
        f.addRow("Device", dev)
        # text-to-image models: a VAE in place of the checkpoint's own, LoRAs with weight sliders (lora_list.py)
        self.vaeCombo = VaeChooser()
        self.loraList = LoraList()
        self.modelFiles = QWidget(objectName="modelFiles")
        files = QVBoxLayout(self.modelFiles)
        files.setContentsMargins(0, 0, 0, 0)
        files.setSpacing(2)
        top = QHBoxLayout()
        top.addWidget(self.vaeCombo, 1)
        top.addWidget(self.loraList.addButton)
        files.addLayout(top)
        files.addWidget(self.loraList)
        f.addRow("VAE", self.modelFiles)
        self._model_form = f

        # sampler ---------------------------------------------------------------------------
        self.samplerCombo = sampler_combo("samplerCombo")  # grouped by family, a description per sampler
        self.samplerInfo = ElidedLabel()
        self.stepsSpin = ow.make_widget(schema["steps"])
        # one widget per sampler option, made from its declaration (etaSpin, varianceCombo, correctorStepsSpin,
        # snrSpin, …); a sampler's own values are kept when another sampler is chosen (_option_values)
        self.optionWidgets: dict[str, QWidget] = {name: ow.make_widget(opt) for name, opt in OPTION_SCHEMA.items()}
        for w in self.optionWidgets.values():
            setattr(self, w.objectName(), w)
        self._option_values: dict[tuple[str, str], object] = {}  # (sampler, option) → value
        self._options_sampler: Optional[str] = None  # the sampler whose options the widgets show
        self.spacingCombo = ow.make_widget(schema["spacing"], none_text="model default")
        self.spacingCombo.setToolTip("How the steps are spread over the training timesteps")
        self.karrasCheck = QCheckBox("Karras σ", objectName="karrasCheck")
        self.karrasCheck.setToolTip("Karras et al. 2022 noise levels (σ-space samplers only)")
        self.x0Combo = ow.make_widget(schema["x0_mode"], none_text="model default")
        self.x0Combo.setObjectName("x0Combo")
        self.x0Combo.setToolTip("Processing of the predicted x₀ at each step")
        self.epsCheck = QCheckBox("ε̂ from x̂₀", objectName="epsCheck", checked=True)
        self.epsCheck.setToolTip("Re-derive ε̂ from the clipped/thresholded x̂₀ so DDIM stays consistent with it "
                                 "(needed for strong guidance; off = diffusers' DDIM default)")
        self.seedSpin = ow.make_widget(schema["seed"])  # Qt's spin box stops at 2^31 − 1 (SEED_MAX)
        self.newSeedButton = QToolButton(text="New", objectName="newSeedButton")
        self.newSeedButton.setToolTip("New random seed")
        self.batchSpin = ow.make_widget(schema["batch"])
        self.batchSpin.setMaximum(min(self.batchSpin.maximum(), 256))  # a grid of more is unreadable
        self.batchSpin.setToolTip("Images per run, shown as a grid")
        sampler_box = QGroupBox("Sampler")
        f = _compact(QFormLayout(sampler_box))
        self._sampler_form = f
        f.addRow(self.samplerCombo)
        f.addRow(self.samplerInfo)
        f.addRow("Steps", self.stepsSpin)
        for name, w in self.optionWidgets.items():
            f.addRow(OPTION_SCHEMA[name].label or name, w)
        sp = QHBoxLayout()
        sp.addWidget(self.spacingCombo, 1)
        sp.addWidget(self.karrasCheck)
        f.addRow("Spacing", sp)
        x0row = QHBoxLayout()
        x0row.addWidget(self.x0Combo, 1)
        x0row.addWidget(self.epsCheck)
        f.addRow("x₀", x0row)
        seed = QHBoxLayout()  # seed and batch share a row
        seed.addWidget(self.seedSpin, 1)
        seed.addWidget(self.newSeedButton)
        seed.addWidget(QLabel("Batch"))
        seed.addWidget(self.batchSpin)
        f.addRow("Seed", seed)

        # conditioning ----------------------------------------------------------------------
        self.labelCombo = _combo("labelCombo", [(None, "unconditional")], "Class to sample")
        self.guidanceModeCombo = ow.make_widget(schema["guidance"])
        self.guidanceModeCombo.setObjectName("guidanceModeCombo")
        self.guidanceSlider = QSlider(Qt.Orientation.Horizontal, objectName="guidanceSlider")
        self.guidanceSlider.setRange(0, 20 * SLIDER_STEPS)
        self.guidanceSpin = ow.make_widget(schema["scale"])
        self.guidanceSpin.setObjectName("guidanceSpin")
        self.guidanceSpin.setToolTip("Guidance scale (CFG w: 1 = plain conditional; classifier s)")
        interval = schema["guidance_interval"]
        self.intervalStart = QDoubleSpinBox(objectName="intervalStart", minimum=interval.low, maximum=interval.high,
                                            singleStep=interval.step, value=interval.default[0])
        self.intervalEnd = QDoubleSpinBox(objectName="intervalEnd", minimum=interval.low, maximum=interval.high,
                                          singleStep=interval.step, value=interval.default[1])
        for w in (self.intervalStart, self.intervalEnd):
            w.setToolTip("Apply guidance only in this fraction of the run (0 = first step, 1 = last)")
        # text-to-image models: prompts, size, guidance rescale (shown only for them)
        self.promptEdit = PromptEdit("a prompt, e.g. a red 7 on a blue background  (Enter runs)", 3)
        self.promptEdit.setObjectName("promptEdit")
        self.promptEdit.setToolTip("What to draw. Enter or Ctrl+Enter runs; Shift+Enter adds a line")
        self.negativeEdit = PromptEdit("negative prompt (what guidance steers away from)", 2)
        self.negativeEdit.setObjectName("negativeEdit")
        self.negativeEdit.setToolTip("The unconditional branch of classifier-free guidance: the image is pushed "
                                     "away from this text (empty: away from no text at all)")
        self.widthSpin = ow.make_widget(schema["width"])
        self.widthSpin.setObjectName("widthSpin")
        self.heightSpin = ow.make_widget(schema["height"])
        self.heightSpin.setObjectName("heightSpin")
        self.rescaleSpin = ow.make_widget(schema["guidance_rescale"])
        self.rescaleSpin.setObjectName("rescaleSpin")
        self.previewCombo = _combo("previewCombo", [("linear", "linear RGB projection"),
                                                    ("full", "full VAE decode every step"),
                                                    ("tiny", "AutoencoderTiny (TAESD) folder…")],
                                   PREVIEW_TIP)
        self._tiny_vae: Optional[str] = None
        self._preview_chosen_by_user = False  # a preview picked here outlasts the next model's default
        self.rescaleSpin.setToolTip("Guidance rescale φ (Lin et al. 2024): pulls strongly guided images back to "
                                    "the conditional prediction's contrast; 0 = off")
        cond_box = QGroupBox("Conditioning")
        f = _compact(QFormLayout(cond_box))
        self._cond_form = f
        f.addRow("Prompt", self.promptEdit)
        f.addRow("Negative", self.negativeEdit)
        size = QHBoxLayout()
        size.addWidget(self.widthSpin)
        size.addWidget(QLabel("×"))
        size.addWidget(self.heightSpin)
        f.addRow("Size", size)
        self._size_layout = size
        f.addRow("Class", self.labelCombo)
        f.addRow("Guidance", self.guidanceModeCombo)
        g = QHBoxLayout()
        g.addWidget(self.guidanceSlider, 1)
        g.addWidget(self.guidanceSpin)
        f.addRow("Scale", g)
        iv = QHBoxLayout()
        iv.addWidget(self.intervalStart)
        iv.addWidget(QLabel("to"))
        iv.addWidget(self.intervalEnd)
        f.addRow("Interval", iv)
        # attention maps (text-to-image models): the run keeps them, the view's token strip shows them
        self.attentionCheck = ow.make_widget(schema["attention"])
        self.attentionCheck.setText("Attention maps")
        rescale = QHBoxLayout()  # φ and the attention toggle share a row: the panel stays one screen high
        rescale.addWidget(self.rescaleSpin, 1)
        rescale.addWidget(self.attentionCheck)
        f.addRow("Rescale φ", rescale)
        self._rescale_layout = rescale
        f.addRow("Preview", self.previewCombo)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(model_box)
        lay.addWidget(sampler_box)
        lay.addWidget(cond_box)
        lay.addStretch(1)

        self._guard = False
        self._set_scale(self.guidanceSpin.value())  # the recipe's default, on the slider too
        self._mode_scales: dict[str, float] = {}
        self._scale_mode = self.guidanceModeCombo.currentData()  # the mode whose scale the widgets show
        self.set_recent([])
        self.modelPicker.activated.connect(self._model_activated)
        self.samplerCombo.currentIndexChanged.connect(self._sampler_changed)
        self.guidanceSlider.valueChanged.connect(lambda v: self._set_scale(v / SLIDER_STEPS, from_slider=True))
        self.guidanceSpin.valueChanged.connect(lambda v: self._set_scale(v))
        self.guidanceModeCombo.currentIndexChanged.connect(self._mode_changed)
        self.newSeedButton.clicked.connect(self.new_seed)
        for w in (self.stepsSpin, self.seedSpin, self.batchSpin):
            w.valueChanged.connect(self.changed)
        for w in (self.guidanceSpin, self.intervalStart, self.intervalEnd):
            w.valueChanged.connect(self.changed)
        for w in self.optionWidgets.values():
            ow.changed_signal(w).connect(self.changed)
        for w in (self.samplerCombo, self.labelCombo, self.guidanceModeCombo, self.spacingCombo, self.x0Combo):
            w.currentIndexChanged.connect(self.changed)
        self.karrasCheck.toggled.connect(self.changed)
        self.epsCheck.toggled.connect(self.changed)
        for w in (self.promptEdit, self.negativeEdit):
            w.edited.connect(self.changed)
        for w in (self.widthSpin, self.heightSpin, self.rescaleSpin, self.attentionCheck):
            ow.changed_signal(w).connect(self.changed)
        self.previewCombo.activated.connect(self._preview_chosen)
        self.loraList.changed.connect(self.changed)
        self.vaeCombo.changed.connect(self.changed)
        self.bindings = self._make_bindings()  # recipe field → (read, show): what recipe() and set_recipe() use
        self._sampler_changed()
        self._mode_changed()
        self._show_text_rows(False)

    # -- model picker -------------------------------------------------------------------------
    def set_recent(self, recent: list[str]) -> None:
        self._guard = True
        self.modelPicker.clear()
        for spec, text in BUILTIN_MODELS:
            self.modelPicker.addItem(text, spec)
        if recent:
            self.modelPicker.insertSeparator(self.modelPicker.count())
            for path in recent:
                self.modelPicker.addItem(path, path)
        self.modelPicker.insertSeparator(self.modelPicker.count())
        self.modelPicker.addItem("Open model folder…", OPEN_FOLDER)
        self._guard = False
        self.show_model(self._model_spec)

    def show_model(self, spec: str) -> None:
        """Select ``spec`` in the picker (adding it if it is a folder not yet listed)."""
        self._model_spec = spec
        self._guard = True
        if not _select(self.modelPicker, spec):
            self.modelPicker.insertItem(self.modelPicker.count() - 2, spec, spec)
            _select(self.modelPicker, spec)
        self._guard = False

    def _model_activated(self, index: int) -> None:
        if self._guard:
            return
        spec = self.modelPicker.itemData(index)
        if spec == OPEN_FOLDER:
            self.show_model(self._model_spec)
        self.modelRequested.emit(spec)

    def set_model_info(self, info, device: str = "") -> None:
        self._info = info
        self._mode_scales = {}  # scales chosen per guidance mode belonged to the previous model,
        self._scale_mode = None  # and so does the one shown: not remembered for the new one
        classes = f"{info.num_classes} classes" if info.num_classes else "unconditional"
        text = info.text_conditioned
        if text:
            self.modelInfo.setText(f"text-to-image, {info.image_size}×{info.image_size} from "
                                   f"{info.in_channels}×{info.sample_size}×{info.sample_size} latents, "
                                   f"{info.prediction_type}" + (f" — on {device}" if device else ""))
        else:
            self.modelInfo.setText(f"{info.sample_size}×{info.sample_size}, {info.in_channels} ch, {classes}, "
                                   f"{info.prediction_type}" + (f" — on {device}" if device else ""))
        self._show_text_rows(text)
        if text:
            f = info.vae_scale_factor
            for spin in (self.widthSpin, self.heightSpin):
                spin.setSingleStep(f)
                spin.setMinimum(f)
                if spin.value() < f or spin.value() % f or not self._size_set:
                    spin.setValue(info.image_size)
            if not self.promptEdit.text() and info.sample_prompt:
                self.promptEdit.setText(info.sample_prompt)
        self.modelInfo.setToolTip(info.describe())
        current = self.labelCombo.currentData()
        self.labelCombo.blockSignals(True)
        self.labelCombo.clear()
        self.labelCombo.addItem("unconditional", None)
        for k in range(info.num_classes):
            name = info.class_names[k] if k < len(info.class_names) else f"class {k}"
            self.labelCombo.addItem(f"{k}: {name}", k)
        if current is None or not _select(self.labelCombo, current):
            self.labelCombo.setCurrentIndex(0)
        self.labelCombo.blockSignals(False)
        self.labelCombo.setEnabled(info.conditional)
        cfg_ok = info.null_label is not None or text  # a text model's unconditional branch is a prompt
        _enable_item(self.guidanceModeCombo, "cfg", cfg_ok)
        _enable_item(self.guidanceModeCombo, "classifier", bool(info.has_classifier))
        mode = self.guidanceModeCombo.currentData()
        if (mode == "cfg" and not cfg_ok) or (mode == "classifier" and not info.has_classifier):
            _select(self.guidanceModeCombo, "none")
        if text and mode == "none":
            _select(self.guidanceModeCombo, "cfg")  # what a text-to-image user expects
        self.changed.emit()

    # -- recipe <-> widgets ----------------------------------------------------------------------
    def _make_bindings(self) -> dict[str, Binding]:
        """How each recipe field the panel shows is read from its widgets and shown on them, by field name
        (``Recipe.schema()``; the others are ``NOT_SHOWN``). A class label, or a prompt, size and rescale φ,
        belong to the open model's kind: the other kind's fields read as unset."""
        b: dict[str, Binding] = {name: _plain(w) for name, w in (
            ("sampler", self.samplerCombo), ("steps", self.stepsSpin), ("guidance", self.guidanceModeCombo),
            ("spacing", self.spacingCombo), ("x0_mode", self.x0Combo), ("eps_from_x0", self.epsCheck),
            ("device", self.deviceCombo), ("dtype", self.dtypeCombo))}
        for name in self.optionWidgets:
            b[name] = (lambda name=name: self._read_option(name), lambda v, name=name: self._show_option(name, v))
        b["scale"] = (lambda: ow.value(self.guidanceSpin), self._show_scale)
        b["guidance_interval"] = (lambda: (ow.value(self.intervalStart), ow.value(self.intervalEnd)),
                                  self._show_interval)
        b["label"] = (lambda: None if self.is_text else self.labelCombo.currentData(), self._show_label)
        b["prompt"] = (lambda: self.promptEdit.text() if self.is_text else None, self._show_prompt)
        b["negative_prompt"] = (lambda: (self.negativeEdit.text() or None) if self.is_text else None,
                                lambda v: self.negativeEdit.setText(v or ""))
        for name, spin in (("width", self.widthSpin), ("height", self.heightSpin)):
            b[name] = (lambda spin=spin: spin.value() if self.is_text else None,
                       lambda v, spin=spin: self._show_size(spin, v))
        b["guidance_rescale"] = (lambda: ow.value(self.rescaleSpin) if self.is_text else 0.0, self.rescaleSpin.setValue)
        b["attention"] = (lambda: self.attentionCheck.isChecked() if self.is_text else False,
                          lambda v: self.attentionCheck.setChecked(bool(v)))
        b["seed"] = (self._read_seed, lambda v: self.seedSpin.setValue(min(v, SEED_MAX)))
        b["batch"] = (self.batchSpin.value, lambda v: self.batchSpin.setValue(min(v, self.batchSpin.maximum())))
        b["karras"] = (lambda: self.karrasCheck.isChecked() and self.karrasCheck.isEnabled(),
                       lambda v: self.karrasCheck.setChecked(bool(v)))
        b["loras"] = (lambda: self.loraList.loras() if self.is_text else [], self.loraList.set_loras)
        b["vae"] = (lambda: self.vaeCombo.value() if self.is_text else None, self.vaeCombo.set_value)
        return b

    def recipe(self, model: Optional[str] = None) -> Recipe:
        """The recipe the widgets describe (settings the panel doesn't show come from the last recipe set)."""
        shown = {name: read() for name, (read, _) in self.bindings.items()}
        return self._base.replace(model=model or self._model_spec, branch=None, **shown)

    def set_recipe(self, r: Recipe) -> None:
        self._base = r.replace(branch=None)
        for name in Recipe.schema():  # in field order: the sampler before its options, the mode before its scale
            if name in self.bindings:
                self.bindings[name][1](getattr(r, name))
        self._sampler_changed()
        self._mode_changed()

    def _read_option(self, name: str):
        """A sampler option: the widget's value for the chosen sampler's own options, else unset."""
        own = SAMPLERS[self.samplerCombo.currentData()].options
        return ow.value(self.optionWidgets[name]) if name in own else None

    def _show_option(self, name: str, v) -> None:
        opt = SAMPLERS[self.samplerCombo.currentData()].options.get(name)
        if opt is not None:  # unset: the sampler's declared default
            ow.set_value(self.optionWidgets[name], opt.default if v is None else v)

    def _show_scale(self, v: float) -> None:
        self._set_scale(float(v))
        self._scale_mode = self.guidanceModeCombo.currentData()  # the recipe's scale is the one of its mode

    def _show_interval(self, v: tuple[float, float]) -> None:
        self.intervalStart.setValue(v[0])
        self.intervalEnd.setValue(v[1])

    def _show_prompt(self, v: Optional[str]) -> None:
        if v is not None:  # a class recipe keeps the prompt typed for a text model
            self.promptEdit.setText(v)

    def _show_label(self, label: Optional[int]) -> None:
        if label is not None and self.labelCombo.findData(label) < 0:
            self.labelCombo.addItem(f"{label}", label)
        _select(self.labelCombo, label)

    def _show_size(self, spin, v: Optional[int]) -> None:
        if v is not None:
            spin.setValue(v)
            self._size_set = True

    def _read_seed(self) -> int:
        """The seed shown, or the last recipe's when it is beyond what the spin box holds and unchanged."""
        if self._base.seed > SEED_MAX and self.seedSpin.value() == SEED_MAX:
            return self._base.seed
        return self.seedSpin.value()

    # -- behaviour -------------------------------------------------------------------------------
    @property
    def is_text(self) -> bool:
        """The open model is text-to-image: prompts instead of a class."""
        return self._info is not None and self._info.text_conditioned

    def _show_text_rows(self, text: bool) -> None:
        f = self._cond_form
        for field in (self.promptEdit, self.negativeEdit, self._size_layout, self._rescale_layout, self.previewCombo):
            f.setRowVisible(field, text)
        f.setRowVisible(self.labelCombo, not text)
        self._model_form.setRowVisible(self.modelFiles, text)  # LoRAs and VAEs are for text-to-image models

    def preview_setting(self) -> tuple[str, Optional[str]]:
        """(mode, AutoencoderTiny folder) for the next run of a text-to-image model."""
        mode = self.previewCombo.currentData()
        return (mode, self._tiny_vae if mode == "tiny" else None)

    def set_default_preview(self, mode: str, decode_share: Optional[float] = None) -> None:
        """The preview a newly opened text model streams by default (measured: jobs.load_job), unless the
        user has picked one; the tooltip says what the measurement found."""
        tip = PREVIEW_TIP
        if decode_share is not None:
            tip += (f".\nOn this model and device a full decode costs {decode_share:.0%} of a UNet evaluation, "
                    f"so runs stream the {'full decode' if mode == 'full' else 'linear projection'} by default")
        self.previewCombo.setToolTip(tip)
        if not self._preview_chosen_by_user:
            _select(self.previewCombo, mode)

    def _preview_chosen(self, *_) -> None:
        self._preview_chosen_by_user = True
        if self.previewCombo.currentData() != "tiny":
            return
        folder = QFileDialog.getExistingDirectory(self, "An AutoencoderTiny folder (e.g. TAESD)", self._tiny_vae or "")
        if folder:
            self._tiny_vae = folder
            self.previewCombo.setItemText(2, f"AutoencoderTiny: {folder.rstrip('/').split('/')[-1]}")
        elif self._tiny_vae is None:
            _select(self.previewCombo, "linear")

    def new_seed(self) -> None:
        self.seedSpin.setValue(random.randrange(SEED_MAX))

    def _sampler_changed(self, *_) -> None:
        name = self.samplerCombo.currentData()
        spec = SAMPLERS[name]
        self.samplerInfo.setText(spec.description)
        shown = self._options_sampler
        if name != shown:
            # each sampler keeps its own option values (DDIM's η = 0 and Euler a's η = 1 are both defaults)
            if shown is not None:
                for opt in SAMPLERS[shown].options:
                    self._option_values[(shown, opt)] = ow.value(self.optionWidgets[opt])
            for opt_name, opt in spec.options.items():
                ow.set_value(self.optionWidgets[opt_name], self._option_values.get((name, opt_name), opt.default))
            self._options_sampler = name
        for opt_name, w in self.optionWidgets.items():  # only the chosen sampler's options take room
            w.setEnabled(opt_name in spec.options)
            self._sampler_form.setRowVisible(w, opt_name in spec.options)
        self.karrasCheck.setEnabled(spec.takes_karras)

    def recommended_scale(self, mode: str) -> float:
        """The scale ``mode`` starts at: the model's recommendation, else the studio's (``default_scale``,
        as ``studio sample`` and sweeps)."""
        return default_scale(mode, self._info.recommended_scales if self._info is not None else None)

    def _mode_changed(self, *_) -> None:
        mode = self.guidanceModeCombo.currentData()
        on = mode != "none"
        for w in (self.guidanceSlider, self.guidanceSpin, self.intervalStart, self.intervalEnd):
            w.setEnabled(on)
        # each mode keeps its own scale (a CFG w of 3 means little as a classifier scale, and back)
        shown = self._scale_mode
        if mode != shown:
            if shown not in (None, "none"):
                self._mode_scales[shown] = self.guidanceSpin.value()
            if on:
                self._set_scale(self._mode_scales.get(mode, self.recommended_scale(mode)))
            self._scale_mode = mode
        if on and not self.is_text and self.labelCombo.currentData() is None and self.labelCombo.count() > 1:
            self.labelCombo.setCurrentIndex(1)

    def _set_scale(self, value: float, from_slider: bool = False) -> None:
        if self._scale_busy:  # the slider and the spin box update each other once, not back and forth
            return
        self._scale_busy = True
        try:
            if not from_slider:
                self.guidanceSlider.setValue(int(round(min(value, 20) * SLIDER_STEPS)))
            if abs(self.guidanceSpin.value() - value) > 1e-9 and (from_slider or self.guidanceSpin.value() != value):
                self.guidanceSpin.setValue(value)
        finally:
            self._scale_busy = False

