"""Recipes, drag and drop, and persistent settings of the window."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QByteArray
from PySide6.QtWidgets import QFileDialog

from ..session.recipe import Recipe, RecipeError


class RecipeFiles:
    """MainWindow's recipe and settings methods (a mixin)."""

    def open_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a recipe", str(Path.home()),
                                              "Recipes (*.json *.png);;All files (*)")
        if path:
            self.open_recipe(path)

    def open_recipe(self, path: str) -> Optional[Recipe]:
        """Restore every setting from a recipe .json or an exported .png; loads its model if needed."""
        from ..session.export import read_recipe

        try:
            recipe = read_recipe(path)
        except RecipeError as e:
            self.show_error(str(e))
            return None
        if recipe.branch:
            self.statusBar().showMessage("This recipe is a branch; its own settings are restored", 8000)
        self.panel.set_recipe(recipe)
        self.hide_error()
        if recipe.model != self.model_spec:
            self.load_model(recipe.model)
        self.statusBar().showMessage(f"Opened recipe {path}", 8000)
        return recipe

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
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
            break

    def open_path(self, path: str) -> None:
        """A dropped path: a folder is a model, a .json/.png is a recipe."""
        p = Path(path)
        if p.is_dir():
            self.load_model(str(p))
        elif p.suffix.lower() in (".json", ".png"):
            self.open_recipe(str(p))
        else:
            self.show_error(f"{p}: drop a model folder, or a recipe (.json or exported .png)")

    # == settings and closing =============================================================================
    def _restore_settings(self) -> None:
        self.panel.set_recent(self._recent())
        text = self.settings.value("recipe", "", str)
        recipe = Recipe(model="default", steps=50)
        if text:
            try:
                recipe = Recipe.from_json(text)
            except RecipeError:
                pass
        self.panel.set_recipe(recipe)
        geo = self.settings.value("geometry")
        if isinstance(geo, QByteArray):
            self.restoreGeometry(geo)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("recipe", self.current_recipe().to_json())
        if self.model_spec:
            self.settings.setValue("model", self.model_spec)
        self.settings.sync()
