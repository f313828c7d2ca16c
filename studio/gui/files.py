"""Recipes, drag and drop, and persistent settings of the window."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QByteArray
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog

from ..session.recipe import Recipe, RecipeError

# File → Open image…'s filter: the usual formats first (any format Pillow reads opens, ``image_suffixes``)
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif);;All files (*)"


def image_suffixes() -> set[str]:
    """Every file suffix Pillow can open (``.png``, ``.jpg``, ``.webp``, …), lower case."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def png_carries_settings(path: str) -> bool:
    """Whether a PNG holds a studio recipe or a web UI's ``parameters`` (then a drop opens it as a recipe);
    False for a plain or unreadable image, which opens as an image (and an unreadable one says why there)."""
    import warnings

    from PIL import Image

    from ..core.file_reading import FileReadError, open_regular

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression bomb's warning: the image opener refuses it
            with open_regular(path, FileReadError) as f, Image.open(f) as im:
                # the text chunks ahead of the pixels, where Pillow (the studio's export) and the web UIs write
                # them: read without decoding the image
                return bool(im.info.get("recipe") or im.info.get("parameters"))
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files: the image opener names the problem
        return False


class RecipeFiles:
    """MainWindow's recipe and settings methods (a mixin)."""

    def open_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a recipe", str(Path.home()),
                                              "Recipes (*.json *.png);;All files (*)")
        if path:
            self.open_recipe(path)

    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", str(Path.home()), IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str) -> None:
        """Show the image in the forward view (gui/forward_view.py), fitted to the open model. A file that is
        not a usable image is one line in the error bar; the run and the model shown stay as they are."""
        self.hide_error()
        self.statusBar().showMessage(f"Opening image {path}…", 5000)
        self.forwardPanel.open_image(path)

    def open_recipe(self, path: str) -> Optional[Recipe]:
        """Restore every setting from a recipe .json or an exported .png; loads its model if needed.

        Anything wrong with the file (unreadable, not a PNG, bad JSON, a field of the wrong type) is
        one line in the window's error bar and changes nothing."""
        from ..session.export import read_recipe_document
        from ..session.provenance import recorded_weights

        warnings: list[str] = []
        try:
            recipe, document = read_recipe_document(path)
        except RecipeError as e:
            try:
                webui = self._webui_recipe(path, warnings)
            except RecipeError as why:
                self.show_error(str(why))
                return None
            if webui is None:
                self.show_error(str(e))
                return None
            recipe, document = webui, {}
        previous = self.current_recipe()
        try:
            self.panel.set_recipe(recipe)
        except Exception as e:  # noqa: BLE001 - a value the panel cannot show must not half-apply
            self.panel.set_recipe(previous)
            self.show_error(f"{path}: cannot show this recipe ({e.__class__.__name__}: {e})")
            return None
        self.hide_error()
        if warnings:  # a web UI's sampler or schedule the studio lacks, and what it was read as
            self.show_error("Warning: " + "; ".join(warnings))
        self.statusBar().showMessage(f"Opened recipe {path}" + ("; it is a branch, its own settings are restored"
                                                               if recipe.branch else ""), 8000)
        recorded = recorded_weights(document)
        self._recipe_weights = (recipe.model, recorded) if recorded else None
        if recipe.model != self.model_spec:
            self.load_model(recipe.model)
        else:
            self.check_recipe_weights()
        return recipe

    def _webui_recipe(self, path: str, warnings: list[str]) -> Optional[Recipe]:
        """A PNG without the studio's recipe but with the web UIs' ``parameters``: its prompt and settings
        on the open model (what was read approximately is added to ``warnings``); None when it has no such
        chunk, a RecipeError when they do not fit."""
        from ..session.export import read_webui_parameters

        if Path(path).suffix.lower() not in (".png", ".apng"):
            return None
        settings = read_webui_parameters(path, self.current_recipe())
        if settings is None:
            return None
        warnings.extend(settings.pop("warnings"))
        try:
            return self.current_recipe().replace(**settings, label=None).validate()
        except RecipeError as e:
            raise RecipeError(f"{path}: its settings do not fit the open model ({e})") from None

    def check_recipe_weights(self) -> None:
        """Warn (one line) when the open model's weights differ from those the opened recipe recorded."""
        from ..session.provenance import weights_warning

        if self._recipe_weights is None or self.summary is None:
            return
        model, recorded = self._recipe_weights
        if model != self.summary.spec:
            return
        self._recipe_weights = None
        warning = weights_warning(recorded, self.summary.weights)
        if warning:
            self.show_error(f"Warning: {warning}")

    def save_recipe_dialog(self) -> None:
        from ..session.export import ExportError, export_recipe

        path, _ = QFileDialog.getSaveFileName(self, "Save recipe", str(Path.home() / "recipe.json"), "Recipes (*.json)")
        if not path:
            return
        try:
            export_recipe(self.current_recipe(), path, overwrite=True)  # the file dialog already asked
        except ExportError as e:
            self.show_error(str(e))

    # == drag and drop ===================================================================================
    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if not urls:
            return
        if not urls[0].isLocalFile():
            self.show_error(f"{urls[0].toString()}: drop a local model folder, checkpoint file, recipe file or image")
            return
        event.acceptProposedAction()
        self.open_path(urls[0].toLocalFile())

    def open_path(self, path: str) -> None:
        """A dropped path: a folder or a single-file checkpoint (``CHECKPOINT_SUFFIXES``) is a model, a .json
        or a PNG carrying a recipe (the studio's, or a web UI's parameters) is a recipe, any other image
        (``image_suffixes``) opens in the forward view."""
        from ..checkpoints import CHECKPOINT_SUFFIXES

        p = Path(path)
        if p.is_dir() or p.suffix.lower() in CHECKPOINT_SUFFIXES:
            self.open_model(str(p))
        elif p.suffix.lower() == ".json" or (p.suffix.lower() in (".png", ".apng") and png_carries_settings(str(p))):
            self.open_recipe(str(p))
        elif p.suffix.lower() in image_suffixes():
            self.open_image(str(p))
        else:
            self.show_error(f"{p}: drop a model folder, a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}), a "
                            "recipe (.json or exported .png) or an image (PNG, JPEG, WebP, …)")

    # == settings and closing =============================================================================
    def _restore_settings(self) -> None:
        self.panel.set_recent(self._recent())
        text = self.settings.value("recipe", "", str)
        recipe = Recipe(model="default", steps=50)
        if text:
            try:
                recipe = Recipe.from_json(text)
            except Exception:  # noqa: BLE001 - a damaged or outdated settings file: start from the defaults
                pass
        try:
            self.panel.set_recipe(recipe)
        except Exception:  # noqa: BLE001 - a saved value this panel cannot show: the defaults instead
            self.panel.set_recipe(Recipe(model="default", steps=50))
        geo = self.settings.value("geometry")
        if not (isinstance(geo, QByteArray) and self.restoreGeometry(geo)):
            from .main_window import first_geometry

            screen = self.screen() or QGuiApplication.primaryScreen()
            self.setGeometry(first_geometry(screen.availableGeometry()))

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("recipe", self.current_recipe().to_json())
        if self.model_spec:
            self.settings.setValue("model", self.model_spec)
        self.settings.sync()
