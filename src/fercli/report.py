"""Pictures for people: the contact sheet of aligned crops and the confusion matrix.

Drawn with OpenCV, which fercli needs anyway, rather than with a plotting library.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fercli.config import label_order
from fercli.store import atomic_write_bytes

FONT = cv2.FONT_HERSHEY_SIMPLEX


def drawable(text: str) -> str:
    """Text that cv2.putText can take. A name read from undecodable file-name bytes (a class
    folder "caf\\xe9" becomes the label "caf\\udce9") holds a lone surrogate, on which
    OpenCV's string conversion crashes the whole process; such characters become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _write_png(path: Path, image: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return atomic_write_bytes(path, encoded.tobytes())


def contact_sheet(
    crops: np.ndarray,
    labels: np.ndarray,
    path: Path,
    columns: int = 24,
    scale: int = 2,
    per_class: int = 240,
) -> Path:
    """A PNG of the aligned crops, one block per class under its name, to check alignment by eye.

    At most per_class crops of each class are shown, evenly spread over the class.
    """
    size = crops.shape[1] * scale
    header = 22
    blocks = []
    for label in label_order(set(labels.tolist())):
        indices = np.flatnonzero(labels == label)
        if len(indices) > per_class:
            indices = indices[np.linspace(0, len(indices) - 1, per_class).astype(int)]
        rows = -(-len(indices) // columns)
        block = np.full((header + rows * size, columns * size), 255, np.uint8)
        title = drawable(f"{label} ({np.count_nonzero(labels == label)})")
        cv2.putText(block, title, (4, 16), FONT, 0.5, 0, 1, cv2.LINE_AA)
        for position, index in enumerate(indices):
            row, column = divmod(position, columns)
            tile = cv2.resize(crops[index], (size, size), interpolation=cv2.INTER_NEAREST)
            block[header + row * size : header + (row + 1) * size, column * size : (column + 1) * size] = tile
        blocks.append(block)
    return _write_png(path, np.vstack(blocks))


def confusion_image(matrix: np.ndarray, labels: list[str], path: Path, title: str = "") -> Path:
    """A readable PNG of a confusion matrix: counts in each cell, shaded by row share."""
    cell, margin_left, margin_top = 64, 110, 90
    count = len(labels)
    height = margin_top + count * cell + 40
    width = margin_left + count * cell + 20
    image = np.full((height, width, 3), 255, np.uint8)
    totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    shares = matrix / totals
    for row in range(count):
        for column in range(count):
            share = float(shares[row, column])
            shade = int(255 - 200 * share)
            colour = (255, shade, shade) if row != column else (shade, 255, shade)
            top_left = (margin_left + column * cell, margin_top + row * cell)
            bottom_right = (top_left[0] + cell - 1, top_left[1] + cell - 1)
            cv2.rectangle(image, top_left, bottom_right, colour, -1)
            cv2.rectangle(image, top_left, bottom_right, (200, 200, 200), 1)
            text = str(int(matrix[row, column]))
            (text_width, _), _ = cv2.getTextSize(text, FONT, 0.5, 1)
            origin = (top_left[0] + (cell - text_width) // 2, top_left[1] + cell // 2 + 5)
            cv2.putText(image, text, origin, FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for index, label in enumerate(labels):
        short = drawable(label[:10])
        cv2.putText(image, short, (6, margin_top + index * cell + cell // 2 + 5), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x = margin_left + index * cell + 4
        cv2.putText(image, short[:8], (x, margin_top - 10), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "true (rows) vs predicted (columns)", (margin_left, margin_top - 40), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(image, drawable(title[:90]), (6, 24), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "green: correct; shade: share of the true class", (6, height - 14), FONT, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    return _write_png(path, image)


def sweep_image(rows: list[tuple[str, float, float, float]], path: Path, title: str = "") -> Path:
    """A PNG of a sweep: one line per recipe (best first), a dot at its mean accuracy and a
    bar across its interval; rows are (recipe, mean, low, high) as fractions."""
    # An accuracy is in [0, 1] whatever the t interval says.
    rows = [(name, mean, *(min(max(value, 0.0), 1.0) if np.isfinite(value) else value for value in (lo, hi)))
            for name, mean, lo, hi in rows]
    row_height, label_width, plot_width, top, bottom = 34, 330, 420, 50, 44
    height = top + row_height * max(1, len(rows)) + bottom
    width = label_width + plot_width + 80
    image = np.full((height, width, 3), 255, np.uint8)
    values = [value for _, *numbers in rows for value in numbers if np.isfinite(value)]
    low = min(values) if values else 0.0
    high = max(values) if values else 1.0
    pad = max(0.005, (high - low) * 0.08)
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    if high <= low:
        low, high = max(0.0, low - 0.01), min(1.0, high + 0.01)

    def x_of(value: float) -> int:
        return int(round(label_width + (value - low) / (high - low) * plot_width))

    for tick in np.linspace(low, high, 5):
        x = x_of(float(tick))
        cv2.line(image, (x, top - 6), (x, height - bottom), (225, 225, 225), 1)
        cv2.putText(image, f"{tick:.1%}", (x - 22, height - bottom + 18), FONT, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    for index, (name, mean, interval_low, interval_high) in enumerate(rows):
        y = top + index * row_height + row_height // 2
        cv2.putText(image, drawable(name[:44]), (6, y + 5), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        if np.isfinite(interval_low) and np.isfinite(interval_high):
            cv2.line(image, (x_of(interval_low), y), (x_of(interval_high), y), (160, 90, 20), 2, cv2.LINE_AA)
            for end in (interval_low, interval_high):
                cv2.line(image, (x_of(end), y - 6), (x_of(end), y + 6), (160, 90, 20), 2, cv2.LINE_AA)
        cv2.circle(image, (x_of(mean), y), 5, (20, 20, 200), -1, cv2.LINE_AA)
        cv2.putText(image, f"{mean:.2%}", (label_width + plot_width + 14, y + 5), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(image, drawable(title[:100]), (6, 24), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "accuracy (dot: mean over seeds; bar: 95% interval)", (label_width, height - 10), FONT, 0.4,
                (80, 80, 80), 1, cv2.LINE_AA)
    return _write_png(path, image)
