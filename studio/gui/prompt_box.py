"""The prompt and negative-prompt boxes of a text-to-image model."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QPlainTextEdit


class PromptEdit(QPlainTextEdit):
    """A few lines of prompt text. Ctrl+Enter (Cmd+Enter on macOS) emits ``submitted`` — the run
    shortcut of every text-to-image tool — instead of inserting a newline; Enter alone does too,
    since a prompt is one paragraph (Shift+Enter inserts a line break)."""

    submitted = Signal()
    edited = Signal()

    def __init__(self, placeholder: str = "", lines: int = 3, parent=None):
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        height = self.fontMetrics().lineSpacing() * lines + 12
        self.setFixedHeight(height)
        self.textChanged.connect(self.edited)

    def text(self) -> str:
        return self.toPlainText().strip()

    def setText(self, text: str) -> None:
        if text != self.toPlainText():
            self.setPlainText(text)

    def keyPressEvent(self, e: QKeyEvent) -> None:
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (e.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(e)
