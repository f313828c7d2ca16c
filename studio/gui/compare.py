"""Compare 2–4 configurations from the same seed and noise, side by side, scrubbed together by fraction."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QTimer, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSlider, QToolButton, QVBoxLayout, QWidget)

from ..checkpoints.lora_files import LoraChoice, parse_lora
from ..core.samplers import OPTION_SCHEMA, SAMPLERS
from ..session import export as ex
from ..session.parameters import webui_sampler_settings
from ..session.recipe import Recipe, RecipeError
from ..session.runner import ModelCache
from . import jobs
from . import option_widgets as ow
from .canvas import ImageCanvas
from .full_decode import shared_decoder
from .lora_list import weight_spin
from .export_dialog import export_with_confirm
from .sampler_combo import sampler_combo
from .view import SETTLE_MS
from .worker import GeneratorWorker

MAX_CONFIGS = 4
SCRUB_TICKS = 1000
# what a fresh dialog compares: four of the web UIs' most used samplers, by their menu names, on the window's
# seed, steps and scale: the ancestral default of the early web UIs, A1111's default (a multistep ODE solver on
# Karras σ), its SDE form, and the predictor–corrector many diffusers pipelines default to. Each name is
# read as a parameters text would be (``webui_sampler_settings``): UniPC as A1111 runs it, bh1 order 3.
DEFAULT_PRESET = ("Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "UniPC")
# the other preset, for a recipe with LoRAs: one LoRA at these weights (none, half, as trained), all else the same
LORA_WEIGHTS = (0.0, 0.5, 1.0)


def sampler_preset(base: Recipe) -> list[Recipe]:
    """``DEFAULT_PRESET``'s samplers, each with its web UI settings, on ``base``'s seed, steps and scale."""
    unset = {name: None for name in OPTION_SCHEMA}  # the base's own sampler options belong to its sampler
    return [base.replace(**{**unset, **webui_sampler_settings(name)}, spacing=None) for name in DEFAULT_PRESET]


def lora_weight_preset(base: Recipe, index: int, weights=LORA_WEIGHTS) -> list[Recipe]:
    """``base`` with its ``index``-th LoRA at each of ``weights``: configurations that differ in that weight only."""
    choices = [parse_lora(e) for e in base.loras]
    return [base.replace(loras=[str(LoraChoice(c.path, w) if i == index else c) for i, c in enumerate(choices)])
            for w in weights]


def label_for(r: Recipe) -> str:
    s = f"{r.sampler} · {r.steps} steps"
    for name, value in r.sampler_options().items():  # every option of the sampler, as its declaration names it
        opt = OPTION_SCHEMA[name]
        s += f" · {opt.label or name}={value:g}" if opt.kind in ("float", "int") else f" · {opt.labelled(value)}"
    if r.karras:
        s += " · Karras"
    if r.guidance != "none":
        s += f" · w={r.scale:g}"
    if r.guidance_rescale:
        s += f" · φ={r.guidance_rescale:g}"
    if r.prompt is not None:
        s += f" · “{r.prompt if len(r.prompt) <= 24 else r.prompt[:23] + '…'}”"
    for entry in r.loras:
        choice = parse_lora(entry)
        s += f" · {Path(choice.path).stem} {choice.weight:g}"
    return s


class ConfigRow(QWidget):
    """One configuration: sampler, steps, the sampler's own options, scale (and, for a text-to-image model,
    rescale φ, prompt and each LoRA's weight). The option widgets are made from the registry's declarations, as
    the panel's are, one per option of any sampler; a row shows those of its sampler."""

    def __init__(self, recipe: Recipe, guided: bool, text: bool = False, parent=None):
        super().__init__(parent)
        self.text = text  # a text-to-image model: each configuration has its own prompt and rescale φ
        schema = Recipe.schema()  # ranges and steps from the one declaration of each setting
        self.prompt = QLineEdit(recipe.prompt or "")
        self.prompt.setPlaceholderText("prompt")
        self.prompt.setMinimumWidth(180)
        self.rescale = ow.make_widget(schema["guidance_rescale"])
        self.rescale.setValue(recipe.guidance_rescale)
        self.rescale.setToolTip("Guidance rescale φ (0 = off)")
        self.sampler = sampler_combo()
        self.sampler.setCurrentIndex(self.sampler.findData(recipe.sampler))
        self.steps = ow.make_widget(schema["steps"])
        self.steps.setValue(recipe.steps)
        self.options: dict[str, QWidget] = {name: ow.make_widget(opt) for name, opt in OPTION_SCHEMA.items()}
        for name, v in recipe.sampler_options().items():
            ow.set_value(self.options[name], v)
        self._karras = recipe.karras  # None (the model's config) is kept until the box is changed
        self.karras = QCheckBox("Karras")
        self.karras.setChecked(bool(recipe.karras))
        self.karras.setToolTip(schema["karras"].help)
        self.scale = ow.make_widget(schema["scale"])
        self.scale.setValue(recipe.scale)
        self.scale.setEnabled(guided)
        # each LoRA's weight in this configuration (a weight change re-weights the open model, reloads nothing)
        choices = [parse_lora(e) for e in recipe.loras] if text else []
        self.loras: list[tuple[str, QWidget]] = [(c.path, weight_spin(c.weight)) for c in choices]
        for path, spin in self.loras:
            spin.setToolTip(f"{path}: its weight in this configuration")
        self.remove = QToolButton(text="✕")
        self.remove.setToolTip("Remove this configuration")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)

        def add(name: str, w: QWidget) -> QLabel:
            label = QLabel(name)
            lay.addWidget(label)
            lay.addWidget(w)
            return label

        lay.addWidget(self.sampler)
        add("steps", self.steps)
        lay.addWidget(self.karras)
        self._option_labels = {name: add(OPTION_SCHEMA[name].label or name, w) for name, w in self.options.items()}
        add("scale", self.scale)
        if text:
            add("φ", self.rescale)
            lay.addWidget(self.prompt)
        for path, spin in self.loras:
            add(Path(path).stem, spin)
        lay.addStretch(1)
        lay.addWidget(self.remove)
        self._show_options()
        self.sampler.currentIndexChanged.connect(self._sampler_changed)

    def own_options(self) -> dict:
        """The chosen sampler's declared options, {name: Option}."""
        return SAMPLERS[self.sampler.currentData()].options

    def _show_options(self) -> None:
        own = self.own_options()
        for name, w in self.options.items():
            w.setVisible(name in own)
            self._option_labels[name].setVisible(name in own)
        self.karras.setEnabled(SAMPLERS[self.sampler.currentData()].takes_karras)

    def _sampler_changed(self, *_) -> None:
        for name, opt in self.own_options().items():
            ow.set_value(self.options[name], opt.default)  # the sampler's own defaults (DDIM η 0, Euler a η 1)
        self._show_options()

    def karras_value(self) -> Optional[bool]:
        """Karras σ for this row: the box, or the recipe's own value (None: the model's config) while the box
        still shows it; None for a sampler on integer timesteps."""
        if not SAMPLERS[self.sampler.currentData()].takes_karras:
            return None
        on = self.karras.isChecked()
        return self._karras if on == bool(self._karras) else on

    def apply(self, base: Recipe) -> Recipe:
        own = self.own_options()
        extra = dict(prompt=self.prompt.text().strip(), guidance_rescale=round(self.rescale.value(), 4),
                     loras=[str(LoraChoice(path, ow.value(spin))) for path, spin in self.loras]) if self.text else {}
        return base.replace(sampler=self.sampler.currentData(), steps=self.steps.value(),
                            **{name: ow.value(w) if name in own else None for name, w in self.options.items()},
                            scale=round(self.scale.value(), 4),
                            spacing=None if self.sampler.currentData() != base.sampler else base.spacing,
                            karras=self.karras_value(), **extra)


class CompareDialog(QDialog):
    compareFinished = Signal(list)  # the trajectories, in configuration order

    def __init__(self, base: Recipe, summary, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Compare samplers — same seed, same noise")
        self.setObjectName("compareDialog")
        self.base = base
        self.summary = summary
        self.cache = ModelCache()
        main_cache = getattr(parent, "cache", None)
        if main_cache is not None and main_cache.key == ModelCache.key_for(base):
            self.cache.put(base, main_cache.model)  # reuse the open model instead of loading it again
        self.worker: Optional[GeneratorWorker] = None
        self.trajs: list = []
        self.labels: list[str] = []
        self.rows: list[ConfigRow] = []

        self.rowBox = QVBoxLayout()
        self.presetCombo = QComboBox(objectName="comparePreset")
        self.presetCombo.setToolTip("Replace the configurations with a preset (each stays editable)")
        self.presetCombo.addItem("Preset: " + ", ".join(DEFAULT_PRESET), "samplers")
        text = summary is not None and summary.info.text_conditioned
        for i, entry in enumerate(base.loras if text else ()):
            name = Path(parse_lora(entry).path).stem
            self.presetCombo.addItem(f"Preset: {name} at weights {', '.join(f'{w:g}' for w in LORA_WEIGHTS)}", i)
        self.presetCombo.activated.connect(lambda i: self.apply_preset(self.presetCombo.itemData(i)))
        self.addButton = QPushButton("Add configuration")
        self.addButton.clicked.connect(lambda: self.add_config())
        self.runButton = QPushButton("Run comparison", objectName="compareRunButton")
        self.runButton.setDefault(True)
        self.runButton.clicked.connect(self.run)
        self.stopButton = QPushButton("Stop")
        self.stopButton.clicked.connect(self.stop)
        self.stopButton.setEnabled(False)
        self.gridButton = QPushButton("Export grid…")
        self.gridButton.clicked.connect(lambda: self._export_dialog("png"))
        self.gifButton = QPushButton("Export GIF…")
        self.gifButton.clicked.connect(lambda: self._export_dialog("gif"))
        self.which = QComboBox()
        self.which.addItem("x̂₀", "x0")
        self.which.addItem("x_t", "xt")
        self.which.currentIndexChanged.connect(self.refresh)
        self.slider = QSlider(Qt.Orientation.Horizontal, objectName="compareScrubber")
        self.slider.setRange(0, SCRUB_TICKS)
        self.slider.setValue(SCRUB_TICKS)
        self.slider.valueChanged.connect(self.refresh)
        self.fracLabel = QLabel("100 % of the run")
        self.fracLabel.setMinimumWidth(120)
        self.status = QLabel("Each configuration starts from the same seed and the same initial noise.")
        self.status.setStyleSheet("color: #9a9aa6;")
        self.canvasGrid = QGridLayout()
        # before a run, one placeholder takes the space the canvases will fill (otherwise the layout
        # spreads the configuration rows over an empty window)
        self.placeholder = QLabel("Run the comparison to see the configurations side by side here.",
                                  objectName="comparePlaceholder")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #7a7a86; border: 1px dashed #4a4a55; border-radius: 6px;")
        self.canvasGrid.addWidget(self.placeholder, 0, 0)
        self.canvases: list[ImageCanvas] = []

        buttons = QHBoxLayout()
        for b in (self.presetCombo, self.addButton, self.runButton, self.stopButton):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(QLabel("show"))
        buttons.addWidget(self.which)
        buttons.addWidget(self.gridButton)
        buttons.addWidget(self.gifButton)
        scrub = QHBoxLayout()
        scrub.addWidget(self.slider, 1)
        scrub.addWidget(self.fracLabel)
        lay = QVBoxLayout(self)
        lay.addLayout(self.rowBox)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addLayout(self.canvasGrid, 1)
        lay.addLayout(scrub)
        self._timer = QTimer(self, interval=33)
        self._timer.timeout.connect(self.refresh)
        # a latent run's previews give way to full decodes where the slider settles, as in the main view
        self._settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(self._request_decode)
        self.decoder = shared_decoder()
        self.decoder.ready.connect(self._decoded)

        self.apply_preset("samplers")
        self.resize(1000, 640)
        self._update_buttons()

    # -- configurations ------------------------------------------------------------------------
    def add_config(self, recipe: Optional[Recipe] = None) -> Optional[ConfigRow]:
        if len(self.rows) >= MAX_CONFIGS:
            return None
        text = self.summary is not None and self.summary.info.text_conditioned
        row = ConfigRow(recipe or self.base, self.base.guidance != "none", text)
        row.remove.clicked.connect(lambda: self.remove_config(row))
        self.rows.append(row)
        self.rowBox.addWidget(row)
        self._update_buttons()
        return row

    def remove_config(self, row: ConfigRow) -> None:
        if len(self.rows) <= 2:
            return
        self._drop(row)
        self._update_buttons()

    def _drop(self, row: ConfigRow) -> None:
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()

    def apply_preset(self, preset) -> None:
        """Replace the configurations with a preset: "samplers" (``DEFAULT_PRESET``), or the index of one of
        the base's LoRAs, at each of ``LORA_WEIGHTS``."""
        if self.worker is not None:
            return
        for row in list(self.rows):
            self._drop(row)
        recipes = sampler_preset(self.base) if preset == "samplers" else lora_weight_preset(self.base, int(preset))
        for r in recipes:
            self.add_config(r)
        self.presetCombo.setCurrentIndex(max(self.presetCombo.findData(preset), 0))

    def recipes(self) -> list[Recipe]:
        return [row.apply(self.base).validate() for row in self.rows]

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.addButton.setEnabled(len(self.rows) < MAX_CONFIGS and not running)
        self.presetCombo.setEnabled(not running)
        self.runButton.setEnabled(not running)
        self.stopButton.setEnabled(running)
        done = bool(self.trajs) and not running
        self.gridButton.setEnabled(done)
        self.gifButton.setEnabled(done)
        for row in self.rows:
            row.remove.setEnabled(len(self.rows) > 2 and not running)

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> None:
        if self.worker is not None:
            return
        try:
            recipes = self.recipes()
        except RecipeError as e:
            self.status.setText(f"⚠ {e}")
            return
        self.trajs = [None] * len(recipes)
        self.labels = [label_for(r) for r in recipes]
        self._make_canvases(len(recipes))
        self.slider.setValue(SCRUB_TICKS)
        self.status.setText("Running…")
        w = GeneratorWorker(jobs.compare_job, self.cache, recipes, kind="compare")
        w.deliver_to(self._on_item)
        w.finished.connect(self._finished)
        self.worker = w
        self._update_buttons()
        self._timer.start()
        w.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.abort()

    def _on_item(self, item) -> None:
        if isinstance(item, jobs.Started):
            self.trajs[item.tag] = item.trajectory

    def _finished(self) -> None:
        w, self.worker = self.worker, None
        if w is None:
            return
        w.wait()
        self._timer.stop()
        self.trajs = [t for t in self.trajs if t is not None and len(t)]
        if w.outcome == "done":
            self.status.setText("Done. Scrub to compare the runs at the same fraction of their steps.")
        elif w.outcome == "error":
            self.status.setText(f"⚠ {w.message}")
        else:
            self.status.setText("Stopped.")
        self.refresh()
        self._update_buttons()
        w.deleteLater()
        self.compareFinished.emit(self.trajs)

    def shutdown(self) -> None:
        w = self.worker
        if w is not None:
            w.abort()
            w.wait()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def reject(self) -> None:
        self.shutdown()
        super().reject()

    # -- display ----------------------------------------------------------------------------------
    def _make_canvases(self, n: int) -> None:
        self.placeholder.hide()
        for c in self.canvases:
            c.setParent(None)
            c.deleteLater()
        self.canvases = []
        for i in range(n):
            c = ImageCanvas(self.labels[i])
            c.setObjectName(f"compareCanvas{i}")
            self.canvasGrid.addWidget(c, 0, i)
            self.canvases.append(c)

    @property
    def fraction(self) -> float:
        return self.slider.value() / SCRUB_TICKS

    def positions(self) -> list[int]:
        return [ex.at_fraction(t, self.fraction) if t is not None else 0 for t in self.trajs]

    def refresh(self, *_) -> None:
        self.fracLabel.setText(f"{self.fraction * 100:.0f} % of the run")
        which = self.which.currentData()
        for i, (canvas, traj) in enumerate(zip(self.canvases, self.trajs)):
            if traj is None or len(traj.xt) == 0:
                canvas.set_frames(None, "", "waiting…")
                continue
            pos = self._position(traj, which)
            frames, full = self._frames(traj, pos, which)
            canvas.set_frames(frames, ex.step_caption(traj, pos, which, full), "waiting…")
        if self.worker is None:
            self._settle.start()

    def _position(self, traj, which: str) -> int:
        pos = ex.at_fraction(traj, self.fraction)
        return (max(pos, 1) if len(traj.x0) else 0) if which == "x0" else pos

    @staticmethod
    def _frames(traj, pos: int, which: str):
        """(frames, whether they are the full decode) of ``traj`` at ``pos``: a latent run's full decode
        once it is made, else its preview (a pixel model's frames are the images)."""
        decodes = traj.decodes
        if which == "x0":
            if not pos:
                return None, False
            full = decodes.peek(pos - 1, "x0") if decodes is not None else None
            return (full, True) if full is not None else (traj.frame_x0(pos - 1), False)
        full = decodes.peek(pos, "xt") if decodes is not None else None
        return (full, True) if full is not None else (traj.frame_xt(pos), False)

    def _request_decode(self) -> None:
        """Ask for the full decode of the first run still showing a preview (the next follows when it is ready)."""
        if self.worker is not None:
            return
        which = self.which.currentData()
        for traj in self.trajs:
            if traj is not None and traj.decodes is not None and len(traj.xt):
                pos = self._position(traj, which)
                if not self._frames(traj, pos, which)[1] and pos < len(traj.xt):
                    self.decoder.request(traj, pos)
                    return

    def _decoded(self, traj, pos: int) -> None:
        if any(t is traj for t in self.trajs):
            self.refresh()

    # -- export -----------------------------------------------------------------------------------
    def export_grid(self, path, overwrite: bool = False):
        return ex.export_compare_grid(self.trajs, self.labels[:len(self.trajs)], path, which=self.which.currentData(),
                                      overwrite=overwrite)

    def export_gif(self, path, overwrite: bool = False):
        return ex.export_compare_animation(self.trajs, self.labels[:len(self.trajs)], path,
                                           which=self.which.currentData(), overwrite=overwrite)

    def _export_dialog(self, kind: str) -> None:
        filt = "PNG image (*.png)" if kind == "png" else "Animated GIF (*.gif)"
        path, _ = QFileDialog.getSaveFileName(self, "Export comparison", f"compare.{kind}", filt,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if not path:
            return
        fn = self.export_grid if kind == "png" else self.export_gif
        if export_with_confirm(self, lambda overwrite: fn(path, overwrite=overwrite), path):
            self.status.setText(f"Exported {path}")
