"""Pictures for people (PNG files): the contact sheet of aligned crops, the confusion matrix,
the video timeline and the sweep chart.

Drawn with OpenCV, which fercli needs anyway, rather than with a plotting library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fercli.core.labels import label_order
from fercli.media.images import write_png

FONT = cv2.FONT_HERSHEY_SIMPLEX


def drawable(text: str) -> str:
    """Text that cv2.putText can take. A name read from undecodable file-name bytes (a class
    folder "caf\\xe9" becomes the label "caf\\udce9") holds a lone surrogate, on which
    OpenCV's string conversion crashes the whole process; such characters become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


def line_thickness(image: np.ndarray) -> int:
    """The width of box lines on an image: 2 pixels from about 400 pixels across, more on
    larger ones, so that a box stays visible once the picture is shown scaled down."""
    return max(1, round(max(image.shape[:2]) / 250))


def labelled_box(
    image: np.ndarray, box: tuple[int, int, int, int], text: str, colour, thickness: int
) -> tuple[int, int, int, int]:
    """Draw a face's box on a BGR image, in place, with text (made drawable) on a filled label
    just above it (inside the box's top when there is no room above). The label's size follows
    the face's, not the image's, so that labels of neighbouring faces do not run into each
    other; it is kept inside the image. Returns the label's (x, y, width, height)."""
    x, y, width, height = box
    cv2.rectangle(image, (x, y), (x + width, y + height), colour, thickness)
    text = drawable(text)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (unit_width, unit_height), _ = cv2.getTextSize(text, font, 1.0, 1)
    # As wide as the box at most, yet never too small to read (about 9 pixels high).
    scale = float(np.clip(width / max(1, unit_width), 0.35, 1.5))
    weight = max(1, round(scale * 2))
    (text_width, text_height), baseline = cv2.getTextSize(text, font, scale, weight)
    pad = max(2, round(text_height * 0.25))
    label_width, label_height = text_width + 2 * pad, text_height + baseline + 2 * pad
    image_height, image_width = image.shape[:2]
    left = int(np.clip(x, 0, max(0, image_width - label_width)))
    top = y - label_height if y - label_height >= 0 else y + thickness
    top = int(np.clip(top, 0, max(0, image_height - label_height)))
    cv2.rectangle(
        image, (left, top), (left + label_width - 1, top + label_height - 1), colour, cv2.FILLED
    )
    # Dark text on a light label, white on a dark one.
    blue, green, red = colour[:3]
    ink = (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 140 else (255, 255, 255)
    cv2.putText(
        image,
        text,
        (left + pad, top + pad + text_height),
        font,
        scale,
        ink,
        weight,
        cv2.LINE_AA,
    )
    return left, top, label_width, label_height


def contact_sheet(
    crops: np.ndarray,
    labels: np.ndarray,
    path: Path,
    columns: int = 24,
    scale: int = 2,
    per_class: int = 240,
    padding: np.ndarray | None = None,
) -> Path:
    """A PNG of the aligned crops, one block per class under its name, to check alignment by eye.

    At most per_class crops of each class are shown, evenly spread over the class. Crops
    that passed the photo's edge by more than 5% (padding: the share filled in, per crop)
    get a black triangle in their top right corner.
    """
    size = crops.shape[1] * scale
    header = 22
    blocks = []
    marked = padding is not None and bool(np.any(padding > MARKED_PADDING))
    for label in label_order(set(labels.tolist())):
        indices = np.flatnonzero(labels == label)
        if len(indices) > per_class:
            indices = indices[np.linspace(0, len(indices) - 1, per_class).astype(int)]
        rows = -(-len(indices) // columns)
        block = np.full((header + rows * size, columns * size), 255, np.uint8)
        title = drawable(f"{label} ({np.count_nonzero(labels == label)})")
        if marked:
            title += "   corner mark: more than 5% of the crop lay outside the photo"
        cv2.putText(block, title, (4, 16), FONT, 0.5, 0, 1, cv2.LINE_AA)
        for position, index in enumerate(indices):
            row, column = divmod(position, columns)
            tile = cv2.resize(crops[index], (size, size), interpolation=cv2.INTER_NEAREST)
            if padding is not None and padding[index] > MARKED_PADDING:
                corner = np.array([[size - 9, 0], [size - 1, 0], [size - 1, 8]], np.int32)
                cv2.fillConvexPoly(tile, corner, 0)
            block[
                header + row * size : header + (row + 1) * size, column * size : (column + 1) * size
            ] = tile
        blocks.append(block)
    return write_png(path, np.vstack(blocks))


# Crops with more than this share filled in past the photo's edge are marked on the sheet.
MARKED_PADDING = 0.05


def _text_width(text: str, scale: float) -> int:
    (width, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    return width


def confusion_image(matrix: np.ndarray, labels: list[str], path: Path, title: str = "") -> Path:
    """A readable PNG of a confusion matrix: counts in each cell, shaded by row share."""
    names = [drawable(label) for label in labels]
    # Sized to the longest class name, so that none is cut ("happiness" is wider than 64 px).
    row_names = max((_text_width(name, 0.45) for name in names), default=0)
    column_names = max((_text_width(name, 0.4) for name in names), default=0)
    cell = max(64, column_names + 8)
    margin_left, margin_top = max(110, row_names + 16), 90
    count = len(labels)
    height = margin_top + count * cell + 40
    title = drawable(title)
    width = max(margin_left + count * cell + 20, _text_width(title, 0.5) + 12)
    image = np.full((height, width, 3), 255, np.uint8)
    _confusion_cells(image, matrix, count, (margin_left, margin_top), cell)
    for index, name in enumerate(names):
        cv2.putText(
            image,
            name,
            (6, margin_top + index * cell + cell // 2 + 5),
            FONT,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        x = margin_left + index * cell + 4
        cv2.putText(image, name, (x, margin_top - 10), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        image,
        "true (rows) vs predicted (columns)",
        (margin_left, margin_top - 40),
        FONT,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    if title:
        cv2.putText(image, title, (6, 24), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        image,
        "green: correct; shade: share of the true class",
        (6, height - 14),
        FONT,
        0.4,
        (80, 80, 80),
        1,
        cv2.LINE_AA,
    )
    return write_png(path, image)


def _confusion_cells(
    image: np.ndarray, matrix: np.ndarray, count: int, corner: tuple[int, int], cell: int
) -> None:
    """confusion_image's count x count cells from corner (its top left), cell pixels square:
    each count, shaded by its share of the true class's row (green on the diagonal)."""
    margin_left, margin_top = corner
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


# Line colours (BGR) of the classes on a timeline, in class order; more classes reuse them.
TIMELINE_COLOURS = [
    (40, 40, 220),
    (40, 150, 40),
    (160, 60, 160),
    (0, 170, 240),
    (200, 120, 30),
    (30, 200, 200),
    (120, 120, 120),
    (90, 60, 20),
    (200, 60, 200),
    (0, 100, 200),
]


def timeline_image(
    tracks: list[tuple[int, list[float], np.ndarray]],
    classes: list[str],
    duration: float,
    path: Path,
    title: str = "",
    gap: float = 1.0,
    keep_existing: bool = False,
) -> Path:
    """A PNG of each class's probability over time, one panel per track; the path written.

    tracks: (track id, times in seconds, (frames, classes) probabilities) each; duration: the
    video's length, the width of every panel's time axis. Lines break where a track was not
    seen for more than gap seconds. keep_existing: see media.images.write_png."""
    width, left, right, panel, top = 960, 60, 20, 130, 56
    plot_width = width - left - right
    height = top + max(1, len(tracks)) * (panel + 16) + 30
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, drawable(title), (8, 20), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    _timeline_legend(image, classes)
    scale = plot_width / duration if duration > 0 else 0.0
    if not tracks:
        cv2.putText(image, "no face found", (left, top + 40), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for row, (track_id, times, probabilities) in enumerate(tracks):
        y0 = top + row * (panel + 16) + 12
        y1 = y0 + panel - 12
        cv2.rectangle(image, (left, y0), (left + plot_width, y1), (180, 180, 180), 1)
        for level in (0.5,):
            y = round(y1 - level * (y1 - y0))
            cv2.line(image, (left, y), (left + plot_width, y), (225, 225, 225), 1)
        cv2.putText(image, f"track {track_id}", (4, y0 + 12), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, "1", (left - 12, y0 + 5), FONT, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(image, "0", (left - 12, y1 + 4), FONT, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
        times = np.asarray(times, np.float64)
        xs = left + times * scale
        # Runs of frames without a gap longer than gap seconds, each drawn as one line.
        breaks = np.flatnonzero(np.diff(times) > gap) + 1
        for index in range(len(classes)):
            colour = TIMELINE_COLOURS[index % len(TIMELINE_COLOURS)]
            ys = y1 - probabilities[:, index] * (y1 - y0)
            for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(times)], strict=True):
                points = np.round(np.column_stack([xs[start:end], ys[start:end]])).astype(np.int32)
                if len(points) == 1:
                    cv2.circle(image, tuple(int(v) for v in points[0]), 1, colour, -1)
                else:
                    cv2.polylines(image, [points], False, colour, 1, cv2.LINE_AA)
    _time_ticks(image, duration, left, scale, height - 16)
    return write_png(path, image, keep_existing=keep_existing)


def _timeline_legend(image: np.ndarray, classes: list[str]) -> None:
    """timeline_image's legend, under its title: each class's colour and name, in a row."""
    x = 8
    for index, label in enumerate(classes):
        colour = TIMELINE_COLOURS[index % len(TIMELINE_COLOURS)]
        cv2.line(image, (x, 38), (x + 18, 38), colour, 3)
        cv2.putText(image, drawable(label), (x + 22, 43), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        x += 22 + _text_width(drawable(label), 0.42) + 14


def _time_ticks(image: np.ndarray, duration: float, left: int, scale: float, y: int) -> None:
    """timeline_image's time ticks at y, under the last panel: six times from 0 to duration
    seconds (scale: pixels a second from left)."""
    for step in range(6):
        seconds = duration * step / 5
        x = round(left + seconds * scale)
        cv2.putText(
            image, f"{seconds:.1f} s", (max(0, x - 14), y), FONT, 0.38, (80, 80, 80), 1, cv2.LINE_AA
        )


def sweep_image(rows: list[tuple[str, float, float, float]], path: Path, title: str = "") -> Path:
    """A PNG of a sweep: one line per recipe (best first), a dot at its mean accuracy and a
    bar across its interval; rows are (recipe, mean, low, high) as fractions."""
    rows = _accuracy_intervals(rows)
    row_height, label_width, plot_width, top, bottom = 34, 330, 420, 50, 44
    height = top + row_height * max(1, len(rows)) + bottom
    width = label_width + plot_width + 80
    image = np.full((height, width, 3), 255, np.uint8)
    low, high = _sweep_range(rows)

    def x_of(value: float) -> int:
        return int(round(label_width + (value - low) / (high - low) * plot_width))

    _sweep_ticks(image, x_of, low, high, top, height - bottom)
    for index, (name, mean, interval_low, interval_high) in enumerate(rows):
        y = top + index * row_height + row_height // 2
        cv2.putText(image, drawable(name[:44]), (6, y + 5), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        if np.isfinite(interval_low) and np.isfinite(interval_high):
            cv2.line(
                image,
                (x_of(interval_low), y),
                (x_of(interval_high), y),
                (160, 90, 20),
                2,
                cv2.LINE_AA,
            )
            for end in (interval_low, interval_high):
                cv2.line(
                    image, (x_of(end), y - 6), (x_of(end), y + 6), (160, 90, 20), 2, cv2.LINE_AA
                )
        cv2.circle(image, (x_of(mean), y), 5, (20, 20, 200), -1, cv2.LINE_AA)
        cv2.putText(
            image,
            f"{mean:.2%}",
            (label_width + plot_width + 14, y + 5),
            FONT,
            0.42,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    if title:
        cv2.putText(image, drawable(title[:100]), (6, 24), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        image,
        "accuracy (dot: mean over seeds; bar: 95% interval)",
        (label_width, height - 10),
        FONT,
        0.4,
        (80, 80, 80),
        1,
        cv2.LINE_AA,
    )
    return write_png(path, image)


def _accuracy_intervals(
    rows: list[tuple[str, float, float, float]],
) -> list[tuple[str, float, float, float]]:
    """sweep_image's rows with each interval's ends clipped to [0, 1] (an accuracy is in
    [0, 1] whatever the t interval says); ends that are not finite stay as they are."""
    return [
        (
            name,
            mean,
            *(min(max(value, 0.0), 1.0) if np.isfinite(value) else value for value in (lo, hi)),
        )
        for name, mean, lo, hi in rows
    ]


def _sweep_range(rows: list[tuple[str, float, float, float]]) -> tuple[float, float]:
    """The accuracies sweep_image's axis spans: every finite mean and interval end, padded a
    little, within [0, 1]; 0 to 1 when there is none."""
    values = [value for _, *numbers in rows for value in numbers if np.isfinite(value)]
    low = min(values) if values else 0.0
    high = max(values) if values else 1.0
    pad = max(0.005, (high - low) * 0.08)
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    if high <= low:
        low, high = max(0.0, low - 0.01), min(1.0, high + 0.01)
    return low, high


def _sweep_ticks(
    image: np.ndarray, x_of: Callable[[float], int], low: float, high: float, top: int, axis: int
) -> None:
    """Five accuracy ticks from low to high on sweep_image's plot: a light line from top to the
    axis (a y) at each, its percentage under it; x_of: an accuracy's x."""
    for tick in np.linspace(low, high, 5):
        x = x_of(float(tick))
        cv2.line(image, (x, top - 6), (x, axis), (225, 225, 225), 1)
        cv2.putText(
            image, f"{tick:.1%}", (x - 22, axis + 18), FONT, 0.4, (80, 80, 80), 1, cv2.LINE_AA
        )
