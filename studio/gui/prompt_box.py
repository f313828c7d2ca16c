"""The prompt and negative-prompt boxes of a text-to-image model, with the prompt's weights shown as typed.

The web UIs' weighting syntax (``(word:1.3)``, ``(word)``, ``[word]``; ``studio.core.prompt_weights``) is
read as the encoder will read it, and :class:`WeightHighlighter` shows the reading: words weighted up are
tinted warm, words weighted down cool (the stronger the weight, the stronger the tint), brackets and
weights are greyed, and what the studio refuses (red) or reads leniently as the web UIs do (amber) is
underlined. Hovering a word tells its weight; hovering an underline tells why.
"""
from __future__ import annotations

import math
from typing import Optional

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent, QPalette, QSyntaxHighlighter, QTextCharFormat, QTextDocument
from PySide6.QtWidgets import QPlainTextEdit, QToolTip

from ..core.prompt_weights import CLOSE, OPEN, Issue, Piece, prompt_issues, read_prompt

WARM = QColor(255, 120, 40)  # weighted up
COOL = QColor(40, 140, 255)  # weighted down
NEGATIVE = QColor(190, 60, 220)  # weighted below zero
REFUSED = QColor(220, 30, 30)  # an issue the studio refuses
LENIENT = QColor(230, 160, 0)  # an issue read as the web UIs read it
FULL_TINT = 4.0  # the weight (or its inverse) at which the tint is strongest


def weight_tint(weight: float) -> Optional[QColor]:
    """The background of words of this weight: None at 1, warm above, cool below, purple below zero; its
    opacity grows with |log weight| up to :data:`FULL_TINT`."""
    if weight == 1.0:
        return None
    if weight <= 0:
        colour, strength = QColor(NEGATIVE), 1.0
    else:
        colour = QColor(WARM if weight > 1 else COOL)
        strength = min(1.0, abs(math.log(weight)) / math.log(FULL_TINT))
    colour.setAlpha(int(50 + 150 * strength))
    return colour


class WeightHighlighter(QSyntaxHighlighter):
    """Colours a prompt document by its parsed weights (see the module's text). A bracket on one line can
    weight the next, so the whole document is read each time and every line re-coloured."""

    def __init__(self, document: QTextDocument, syntax_colour: QColor):
        super().__init__(document)
        self.syntax_colour = syntax_colour
        self.pieces: list[Piece] = []
        self.issues: list[Issue] = []
        self._read = None
        self._rehighlighting = False
        document.contentsChanged.connect(self._whole_document)

    def reading(self) -> tuple[list[Piece], list[Issue]]:
        """The pieces and issues of the document as it is now."""
        text = self.document().toPlainText()
        if text != self._read:
            self._read, self.pieces, self.issues = text, read_prompt(text), prompt_issues(text)
        return self.pieces, self.issues

    def _whole_document(self) -> None:
        if self.document().blockCount() > 1 and not self._rehighlighting:
            self._rehighlighting = True
            try:
                self.rehighlight()
            finally:
                self._rehighlighting = False

    def highlightBlock(self, text: str) -> None:
        pieces, issues = self.reading()
        offset = self.currentBlock().position()
        end = offset + len(text)
        for p in pieces:
            start, stop = max(p.start, offset), min(p.end, end)
            if start >= stop:
                continue
            fmt = QTextCharFormat()
            if p.kind in (OPEN, CLOSE):
                fmt.setForeground(self.syntax_colour)
            tint = weight_tint(p.weight) if p.kind not in (OPEN, CLOSE) else None
            if tint is not None:
                fmt.setBackground(tint)
            self.setFormat(start - offset, stop - start, fmt)
        for issue in issues:
            start, stop = max(issue.start, offset), min(max(issue.end, issue.start + 1), end)
            if start >= stop:
                continue
            for i in range(start, stop):  # keep each character's tint, add the underline
                fmt = self.format(i - offset)
                fmt.setUnderlineStyle(QTextCharFormat.UnderlineStyle.WaveUnderline)
                fmt.setUnderlineColor(REFUSED if issue.fatal else LENIENT)
                self.setFormat(i - offset, 1, fmt)


class PromptEdit(QPlainTextEdit):
    """A few lines of prompt text. Ctrl+Enter (Cmd+Enter on macOS) emits ``submitted`` — the run
    shortcut of every text-to-image tool — instead of inserting a newline; Enter alone does too,
    since a prompt is one paragraph (Shift+Enter inserts a line break). The prompt's weights are
    highlighted as typed (:class:`WeightHighlighter`)."""

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
        self.highlighter = WeightHighlighter(self.document(), self.palette().color(QPalette.ColorRole.PlaceholderText))

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

    # -- the weights ---------------------------------------------------------
    def weight_at(self, position: int) -> float:
        """The weight of the character at ``position`` of the text as typed (a bracket: its group's)."""
        pieces, _ = self.highlighter.reading()
        return next((p.weight for p in pieces if p.start <= position < p.end), 1.0)

    def tooltip_at(self, position: int) -> str:
        """What hovering the character at ``position`` tells: its weight where it is not 1, and the issue
        there, if any; "" for neither."""
        pieces, issues = self.highlighter.reading()
        lines = [i.message for i in issues if i.start <= position < max(i.end, i.start + 1)]
        piece = next((p for p in pieces if p.start <= position < p.end), None)
        if piece is not None and piece.kind in (OPEN, CLOSE):
            lines.insert(0, f"brackets multiplying by {piece.factor:.4g}: weight {piece.weight:.4g}")
        elif piece is not None and piece.weight != 1.0 and piece.text.strip():
            lines.insert(0, f"weight {piece.weight:.4g}")
        return "\n".join(lines)

    def viewportEvent(self, e: QEvent) -> bool:
        if e.type() == QEvent.Type.ToolTip:
            cursor = self.cursorForPosition(e.pos())
            block = cursor.block()
            rect = self.cursorRect(cursor)
            position = cursor.position() - (1 if e.pos().x() < rect.x() and cursor.positionInBlock() > 0 else 0)
            text = self.tooltip_at(min(position, block.position() + max(block.length() - 2, 0)))
            if text:
                QToolTip.showText(e.globalPos(), text, self.viewport())
                return True
        return super().viewportEvent(e)
