"""The export dialog: says which run it exports, picks a format and a destination (a missing folder is
created), and asks once before overwriting (naming everything that would be replaced)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QMessageBox, QPushButton, QSpinBox, QVBoxLayout)

from ..session import export as ex
from ..session.attention_export import export_attention

# where each export keeps the recipe (session/export.py): in the PNG's text chunk, and/or beside it
RECIPE_NOTE = {"frames": "Every PNG carries the recipe, and recipe.json is in the folder.",
               "final": "The PNG carries the recipe; a .recipe.json goes beside it.",
               "contact": "The PNG carries the recipe; a .recipe.json goes beside it.",
               "apng": "The APNG carries the recipe; a .recipe.json goes beside it.",
               "gif": "A GIF has no place for the recipe: it goes beside it, as a .recipe.json.",
               "mp4": "An MP4 does not carry the recipe: it goes beside it, as a .recipe.json.",
               "attention": "The maps carry no recipe (the other kinds do); attention.json indexes them."}
SUFFIX = {"frames": "", "gif": ".gif", "apng": ".png", "mp4": ".mp4", "contact": ".png", "final": ".png",
          "attention": ""}
DEFAULT_NAME = {"frames": "frames", "gif": "run", "apng": "run-anim", "mp4": "run", "contact": "contact-sheet",
                "final": "final", "attention": "attention"}
# a run that kept cross-attention maps (--attention, the panel's Attention maps) offers them as one more kind
ATTENTION_KIND = "attention maps: heat maps, animation, arrays (folder)"


def export_with_confirm(parent, do_export, path) -> bool:
    """Call ``do_export(overwrite)``; if anything it writes exists, ask once (listing all of it) first.
    Errors become a message box."""
    try:
        do_export(False)
        return True
    except ex.TargetExists as e:
        names = "\n".join(f"  {p}" for p in e.paths)
        these = "it" if len(e.paths) == 1 else "them"
        answer = QMessageBox.question(parent, "Overwrite?", f"This export would replace:\n{names}\n\nReplace {these}?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return False
    except ex.ExportError as e:
        QMessageBox.warning(parent, "Export failed", str(e))
        return False
    try:
        do_export(True)
        return True
    except ex.ExportError as e:
        QMessageBox.warning(parent, "Export failed", str(e))
        return False


class ExportDialog(QDialog):
    exported = Signal(str)

    def __init__(self, trajectory, parent=None, settings=None, source: str = "", attention_step=None):
        """``attention_step``: the 1-based step whose attention heat maps are written beside the last
        step's (the view's scrubbed step; None: the middle kept step)."""
        super().__init__(parent)
        self.setWindowTitle("Export")
        self.traj = trajectory
        self.attention_step = attention_step
        self.settings = settings
        done = len(trajectory)
        steps = f"{done} of {trajectory.steps} steps" if done < trajectory.steps else f"all {done} steps"
        self.what = QLabel(f"Exporting the {source or 'run'}: {steps}", objectName="exportWhat")
        self.what.setWordWrap(True)
        self.what.setStyleSheet("font-weight: bold;")
        self.kind = QComboBox(objectName="exportKind")
        for key, text in ex.KINDS.items():
            self.kind.addItem(text, key)
        if not ex.mp4_available():
            i = self.kind.findData("mp4")
            self.kind.model().item(i).setEnabled(False)
            self.kind.setItemText(i, "MP4 video (needs imageio-ffmpeg)")
        maps = getattr(trajectory, "attention", None)
        if maps is not None and len(maps):
            self.kind.addItem(ATTENTION_KIND, "attention")
        self.which = QComboBox(objectName="exportWhich")
        for key, text in (("both", "x_t and x̂₀ side by side"), ("x0", "x̂₀ (predicted clean image)"),
                          ("xt", "x_t (noisy state)")):
            self.which.addItem(text, key)
        self.scale = QSpinBox(minimum=1, maximum=32, value=4)
        self.scale.setToolTip("Integer nearest-neighbour enlargement (pixel-exact)")
        self.fps = QSpinBox(minimum=1, maximum=60, value=10)
        self.every = QSpinBox(minimum=1, maximum=1000, value=max(1, len(trajectory) // 10))
        self.every.setToolTip("Contact sheet: every k-th step")
        folder = settings.value("export_folder", str(Path.home()), str) if settings is not None else str(Path.home())
        self.folder = QLineEdit(folder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.name = QLineEdit()
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #9a9aa6;")
        f = QFormLayout()
        f.addRow("Format", self.kind)
        f.addRow("Frames", self.which)
        f.addRow("Scale", self.scale)
        f.addRow("FPS", self.fps)
        f.addRow("Every k-th step", self.every)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        f.addRow("Folder", row)
        f.addRow("Name", self.name)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._save)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.what)
        lay.addLayout(f)
        lay.addWidget(self.note)
        lay.addWidget(buttons)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._kind_changed()

    def _kind_changed(self, *_) -> None:
        k = self.kind.currentData()
        self.which.setEnabled(k in ("frames", "gif", "apng", "mp4"))
        self.fps.setEnabled(k in ("gif", "apng", "mp4"))
        self.every.setEnabled(k == "contact")
        self.scale.setEnabled(k != "attention")
        self.scale.setValue(1 if k in ("frames", "final") else 4 if k != "contact" else 2)
        self.name.setText(DEFAULT_NAME[k] + SUFFIX[k])
        notes = {"frames": "A folder of numbered PNGs with recipe.json: xt_0000.png is the initial noise, xt_000k.png "
                           "the state after step k, x0_000k.png the x̂₀ predicted during step k (as the CLI's "
                           "xt/ and x0/ folders).",
                 "contact": "x_t on top, x̂₀ below, every k-th step.",
                 "mp4": "" if ex.mp4_available() else "MP4 needs imageio-ffmpeg: pip install imageio-ffmpeg",
                 "attention": self._attention_note()}
        self.note.setText(notes.get(k, "") + f"  {RECIPE_NOTE[k]} A folder that does not exist yet is created.")

    def _attention_note(self) -> str:
        step = f"step {self.attention_step}" if self.attention_step else "the middle kept step"
        return ("A folder: each token's heat map over the final image and over x̂₀ at " + step + " (PNGs and "
                "grids), attention.gif over the kept steps, maps.npz with every map (float16) and attention.json.")

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if d:
            self.folder.setText(d)

    def target(self) -> Path:
        return Path(self.folder.text()).expanduser() / self.name.text().strip()

    def _save(self) -> None:
        kind, path = self.kind.currentData(), self.target()
        kw = dict(which=self.which.currentData(), scale=self.scale.value(), fps=self.fps.value(),
                  every=self.every.value())
        if kind == "attention":
            def write(overwrite):
                return export_attention(self.traj, path, step=self.attention_step, overwrite=overwrite)
        else:
            def write(overwrite):
                return ex.export(self.traj, kind, path, overwrite=overwrite, **kw)
        if export_with_confirm(self, write, path):
            if self.settings is not None:
                self.settings.setValue("export_folder", self.folder.text())
            self.exported.emit(str(path))
            self.accept()
