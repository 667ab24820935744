"""Pictures of where a network looks (fer predict --explain, where.png of crossval and
evaluate): a heat map over the aligned crop, with its colour scale and what it measures.

Drawn with OpenCV, like fercli's other pictures (fercli.media.drawing)."""

from __future__ import annotations

import cv2
import numpy as np

from fercli.media.drawing import FONT, drawable

# Inferno runs from black through red to pale yellow: ordered by lightness, so a reader (and a
# greyscale print) sees which region is "more" without a legend; jet's rainbow does not.
COLOURMAP = cv2.COLORMAP_INFERNO
# The heat map over the face: this much colour, the rest the face.
OPACITY = 0.6
# A colour scale never tops out below this drop in probability: on a face the network is sure
# of, drops of 0.001 would otherwise be stretched over the whole scale and look like evidence.
MIN_SCALE = 0.05
BLACK, GREY, WHITE = (0, 0, 0), (90, 90, 90), (255, 255, 255)


def scale_top(maps: list[np.ndarray]) -> float:
    """The top of a colour scale shared by maps: their largest value, at least MIN_SCALE."""
    return max([MIN_SCALE, *(float(np.max(m)) for m in maps if m.size)])


def heat_overlay(crop: np.ndarray, heat: np.ndarray, top: float, size: int) -> np.ndarray:
    """A BGR (size, size) picture: the uint8 crop enlarged (pixels kept square, as the network
    saw them) under its heat map (values clipped to [0, top], smoothed in the enlargement)."""
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST)
    face = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    shares = np.clip(np.nan_to_num(heat) / top, 0, 1)
    levels = cv2.resize(
        (shares * 255).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR
    )
    colours = cv2.applyColorMap(np.round(levels).astype(np.uint8), COLOURMAP)
    return cv2.addWeighted(colours, OPACITY, face, 1 - OPACITY, 0)


def scale_bar(height: int, top: float, width: int = 16) -> np.ndarray:
    """A BGR colour scale (height, width + labels): top's colour at the top, 0 at the bottom,
    labelled with the values."""
    levels = np.linspace(255, 0, height).astype(np.uint8)
    bar = cv2.applyColorMap(np.repeat(levels[:, None], width, axis=1), COLOURMAP)
    labels = 56
    picture = np.full((height, width + labels, 3), 255, np.uint8)
    picture[:, :width] = bar
    cv2.rectangle(picture, (0, 0), (width - 1, height - 1), GREY, 1)
    for value, y in ((top, 10), (top / 2, height // 2 + 4), (0.0, height - 2)):
        tick = min(y - 4, height - 1)
        cv2.line(picture, (width, tick), (width + 4, tick), GREY)
        text = f"{value:.2f}" if value else "0"
        cv2.putText(picture, text, (width + 6, y), FONT, 0.42, BLACK, 1, cv2.LINE_AA)
    return picture


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=BLACK):
    cv2.putText(image, drawable(text), origin, FONT, scale, colour, 1, cv2.LINE_AA)


def explanation_image(
    crop: np.ndarray,
    heat: np.ndarray,
    label: str,
    probability: float,
    caption: str,
    patch: int,
    zoom: int = 8,
) -> np.ndarray:
    """fer predict --explain's picture of one face: the aligned crop enlarged zoom times, the
    same crop under its heat map, the colour scale, the label and probability above and what
    the colours measure below. A BGR uint8 array."""
    size = crop.shape[0] * zoom
    top = scale_top([heat])
    margin, header, footer = 12, 62, 44
    bar = scale_bar(size, top)
    width = margin + size + margin + size + margin + bar.shape[1] + margin
    picture = np.full((header + size + footer, width, 3), 255, np.uint8)
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST)
    picture[header : header + size, margin : margin + size] = face[..., None]
    right = 2 * margin + size
    picture[header : header + size, right : right + size] = heat_overlay(crop, heat, top, size)
    left = right + size + margin
    picture[header : header + size, left : left + bar.shape[1]] = bar
    _text(picture, f"{label} {probability:.2f}", (margin, 30), 0.9)
    _text(picture, caption[:90], (margin, 52), 0.42, GREY)
    _text(
        picture,
        f"colour: how much p({label}) drops when a grey patch ({patch}x{patch}) covers the spot",
        (margin, header + size + 18),
        0.42,
    )
    _text(
        picture,
        "(the network on this crop; 0 where covering changes nothing or raises it)",
        (margin, header + size + 36),
        0.38,
        GREY,
    )
    return picture


def _wrapped(text: str, width: int, scale: float) -> list[str]:
    """text in lines no wider than width pixels at scale."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        (size, _), _ = cv2.getTextSize(drawable(candidate), FONT, scale, 1)
        if lines and size <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def where_image(
    labels: list[str],
    rows: list[tuple[str, dict[str, dict], str]],
    title: str,
    note: str,
    zoom: int = 4,
) -> np.ndarray:
    """where.png: one column per class, one row per kind of face (e.g. "all test faces",
    "faces it got wrong"); each tile the mean crop of those faces under their mean map, on one
    colour scale shared by every tile, with a caption of up to two lines under it. rows: (row
    title, {label: {"face": mean uint8 crop, "map": mean map, "caption": text}}, what an
    empty tile says); a class missing from a row gets an empty tile. A BGR uint8 array."""
    tiles = [entry for _, row, _ in rows for entry in row.values()]
    size = (tiles[0]["face"].shape[0] if tiles else 32) * zoom
    top = scale_top([entry["map"] for entry in tiles])
    margin, header, row_title, caption = 12, 54, 22, 36
    column = size + margin
    bar = scale_bar(size, top)
    width = max(margin + len(labels) * column + bar.shape[1] + margin, 640)
    notes = _wrapped(note, width - 2 * margin, 0.4)
    height = header + len(rows) * (row_title + size + caption) + 16 + 18 * len(notes)
    picture = np.full((height, width, 3), 255, np.uint8)
    _text(picture, title[:120], (margin, 22), 0.55)
    for index, label in enumerate(labels):
        _text(picture, label[:16], (margin + index * column, header - 8), 0.5)
    y = header
    for name, row, empty in rows:
        _text(picture, name, (margin, y + 16), 0.45, GREY)
        y += row_title
        for index, label in enumerate(labels):
            x = margin + index * column
            entry = row.get(label)
            if entry is None:
                cv2.rectangle(picture, (x, y), (x + size - 1, y + size - 1), (200, 200, 200), 1)
                _text(picture, empty, (x + 8, y + size // 2), 0.42, GREY)
                continue
            picture[y : y + size, x : x + size] = heat_overlay(
                entry["face"], entry["map"], top, size
            )
            lines = _wrapped(entry["caption"], size, 0.38)
            if len(lines) > 2:  # the full counts are in report.json
                lines = [lines[0], lines[1].rstrip(",") + " ..."]
            for line, text in enumerate(lines):
                _text(picture, text, (x, y + size + 14 + 15 * line), 0.38)
        picture[y : y + size, width - margin - bar.shape[1] : width - margin] = bar
        y += size + caption
    for line, text in enumerate(notes):
        _text(picture, text, (margin, y + 22 + 18 * line), 0.4, GREY)
    return picture
