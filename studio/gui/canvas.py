"""A pixel-exact image canvas: the batch as a grid, enlarged by an integer factor, nearest neighbour.

A canvas may carry a heat-map overlay (``set_overlay``: one map per sample, e.g. a prompt token's
cross-attention): each map is coloured and blended over its sample as the attention export draws it
(``session.attention_export.heat_tile``), so the window and the exported PNGs agree."""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
from PySide6.QtCore import QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from ..session.attention_export import inferno, heat_tile
from ..session.frames import make_grid

BACKGROUND = QColor(30, 30, 34)
TEXT = QColor(225, 225, 230)
DIM = QColor(150, 150, 160)


@functools.lru_cache(maxsize=1)
def inferno_lut() -> np.ndarray:
    """(256, 3) uint8: the attention export's colour map (perceptual, dark = no attention)."""
    return inferno()


def fit_scale(img_w: int, img_h: int, avail_w: int, avail_h: int) -> float:
    """Largest integer factor that fits; below 1, an integer fraction (1/2, 1/3, …)."""
    if img_w <= 0 or img_h <= 0:
        return 1.0
    k = min(avail_w // img_w, avail_h // img_h)
    if k >= 1:
        return float(k)
    d = 2
    while img_w / d > avail_w or img_h / d > avail_h:
        d += 1
    return 1.0 / d


class ImageCanvas(QWidget):
    """Shows (B, H, W, 3) uint8 frames as a grid with a title line and a caption line.

    Hovering shows the sample index, pixel and its RGB value; double-clicking a sample shows it alone
    (``soloChanged``), double-clicking again shows the whole batch.
    """

    soloChanged = Signal(object)  # sample index or None

    def __init__(self, title: str = "", parent=None):
        super().__init__(parent)
        self.title = title
        self.caption = ""
        self.placeholder = ""
        self.frames: Optional[np.ndarray] = None
        self._grid: Optional[np.ndarray] = None
        self._qimage: Optional[QImage] = None
        self.scale = 1.0
        self.solo: Optional[int] = None
        self.overlay: Optional[np.ndarray] = None  # (B, h, w) float32 heat maps, one per sample: the source
        self.overlay_top: Optional[np.ndarray] = None  # (B,) the value drawn at the colour map's top
        self.overlay_name = ""  # what the overlay shows (a token), for the hover text
        self._drawn = QRectF()
        self.setMouseTracking(True)
        self.setMinimumSize(140, 140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def sizeHint(self) -> QSize:
        return QSize(320, 320)

    # -- content ----------------------------------------------------------------------
    def set_frames(self, frames: Optional[np.ndarray], caption: str = "", placeholder: str = "") -> None:
        self.frames = frames
        self.caption = caption
        self.placeholder = placeholder
        if frames is None:
            self._grid = self._qimage = None
        else:
            shown = slice(self.solo, self.solo + 1) if self.solo is not None and self.solo < len(frames) else slice(None)
            shown = self._blended(frames, shown)
            grid = np.ascontiguousarray(make_grid(shown, pad=1, pad_value=30))
            self._grid = grid
            h, w, _ = grid.shape
            self._qimage = QImage(grid.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.update()

    def set_overlay(self, heat: Optional[np.ndarray], top: Optional[np.ndarray] = None, name: str = "") -> None:
        """Blend ``heat`` (B, h, w), one map per sample at any resolution, over the frames; ``top`` (B,) is
        the value at the colour map's top (default: each map's maximum). None removes the overlay."""
        if heat is None and self.overlay is None:
            return  # nothing to remove: no repaint
        if heat is None:
            self.overlay = self.overlay_top = None
        else:
            self.overlay = np.asarray(heat, dtype=np.float32)
            self.overlay_top = (np.asarray(top, dtype=np.float32) if top is not None
                                else self.overlay.reshape(len(self.overlay), -1).max(axis=1))
        self.overlay_name = name if heat is not None else ""
        self.set_frames(self.frames, self.caption, self.placeholder)

    def _blended(self, frames: np.ndarray, shown: slice) -> np.ndarray:
        """The ``shown`` samples of ``frames``, the overlay drawn over each (none without one, or when the
        batch differs)."""
        if self.overlay is None or len(self.overlay) != len(frames):
            return frames[shown]
        lut = inferno_lut()
        return np.stack([heat_tile(f, m, float(t), max(f.shape[:2]), lut)
                         for f, m, t in zip(frames[shown], self.overlay[shown], self.overlay_top[shown])])

    def overlay_value(self, k: int, r: int, c: int) -> Optional[float]:
        """The overlay's value under pixel (r, c) of sample ``k`` (nearest map cell), None without one."""
        if self.overlay is None or self.frames is None or k >= len(self.overlay):
            return None
        h, w = self.frames.shape[1:3]
        mh, mw = self.overlay.shape[1:]
        return float(self.overlay[k, min(r * mh // h, mh - 1), min(c * mw // w, mw - 1)])

    def set_solo(self, index: Optional[int]) -> None:
        if index != self.solo:
            self.solo = index
            self.set_frames(self.frames, self.caption, self.placeholder)

    def sample_at(self, x: float, y: float) -> Optional[tuple[int, int, int]]:
        """(sample index, row, column) under widget point (x, y), or None."""
        if self.frames is None or self._drawn.isEmpty() or not self._drawn.contains(x, y):
            return None
        b, h, w, _ = self.frames.shape
        gx = int((x - self._drawn.x()) / self._drawn.width() * self._grid.shape[1])
        gy = int((y - self._drawn.y()) / self._drawn.height() * self._grid.shape[0])
        col, cx = divmod(gx - 1, w + 1)
        row, cy = divmod(gy - 1, h + 1)
        if gx < 1 or gy < 1 or cx >= w or cy >= h:
            return None
        if self.solo is not None:
            return (self.solo, cy, cx) if row == col == 0 else None
        cols = (self._grid.shape[1] - 1) // (w + 1)
        k = row * cols + col
        return (k, cy, cx) if k < b else None

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        hit = self.sample_at(event.position().x(), event.position().y())
        if hit is None:
            QToolTip.hideText()
            return
        k, r, c = hit
        rgb = self.frames[k, r, c]
        heat = self.overlay_value(k, r, c)
        attention = f"\nattention to {self.overlay_name!r}: {heat:.3g}" if heat is not None else ""
        QToolTip.showText(event.globalPosition().toPoint(),
                          f"sample {k}  pixel ({c}, {r})  RGB {int(rgb[0])}, {int(rgb[1])}, {int(rgb[2])}{attention}"
                          "\ndouble-click: show this sample alone / the whole batch", self)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        if self.solo is not None:
            self.set_solo(None)
        else:
            hit = self.sample_at(event.position().x(), event.position().y())
            if hit is None:
                return
            self.set_solo(hit[0])
        self.soloChanged.emit(self.solo)

    def image(self) -> Optional[np.ndarray]:
        """The grid currently shown (with its overlay), at 1:1 (for tests and export)."""
        return self._grid

    # -- painting -----------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        f = QFont(self.font())
        f.setPointSizeF(max(9.0, f.pointSizeF()))
        p.setFont(f)
        fm = p.fontMetrics()
        line = fm.height() + 4
        top, bottom = line + 6, line + 6
        p.setPen(TEXT)
        p.drawText(QRect(8, 4, self.width() - 16, line), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(self.title, Qt.TextElideMode.ElideRight, self.width() - 16))
        if self._qimage is not None:
            # integer zoom in *device* pixels, so it stays pixel-exact on high-DPI screens
            dpr = self.devicePixelRatioF() or 1.0
            iw, ih = self._qimage.width(), self._qimage.height()
            avail_w, avail_h = int((self.width() - 16) * dpr), int((self.height() - top - bottom) * dpr)
            self.scale = fit_scale(iw, ih, avail_w, avail_h)
            w, h = int(iw * self.scale), int(ih * self.scale)
            x = (int(self.width() * dpr) - w) // 2
            y = int(top * dpr) + (avail_h - h) // 2
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            self._drawn = QRectF(x / dpr, y / dpr, w / dpr, h / dpr)
            p.drawImage(self._drawn, self._qimage)
        else:
            self._drawn = QRectF()
        if self._qimage is None and self.placeholder:
            p.setPen(DIM)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
        p.setPen(DIM)
        p.drawText(QRect(8, self.height() - line - 4, self.width() - 16, line),
                   Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(self.caption, Qt.TextElideMode.ElideRight, self.width() - 16))
        if self.caption:
            self.setToolTip(self.caption)
        p.end()
