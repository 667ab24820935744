"""The pictures fercli draws: class names are shown whole."""

from __future__ import annotations

import cv2
import numpy as np

from fercli.media.drawing import FONT, confusion_image


def _drawn_alone(text: str, scale: float) -> np.ndarray:
    """text as putText draws it in black on white, cut to the box of its inked pixels."""
    canvas = np.full((60, 40 + 20 * len(text), 3), 255, np.uint8)
    cv2.putText(canvas, text, (10, 40), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    rows, columns = np.nonzero((canvas < 255).any(axis=2))
    return canvas[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def _appears_in(patch: np.ndarray, picture: np.ndarray) -> bool:
    """Whether patch sits in picture pixel for pixel (exact integers, no float kernel)."""
    height, width = patch.shape[:2]
    y0, x0 = np.argwhere((patch < 255).any(axis=2))[0]  # an inked pixel to anchor the search
    inked = np.argwhere((picture == patch[y0, x0]).all(axis=2))
    for y, x in inked - (y0, x0):
        if 0 <= y <= picture.shape[0] - height and 0 <= x <= picture.shape[1] - width:
            if np.array_equal(picture[y : y + height, x : x + width], patch):
                return True
    return False


def test_confusion_image_shows_every_class_name_whole(tmp_path):
    labels = ["anger", "happiness", "a rather long class name"]
    matrix = np.array([[5, 1, 0], [0, 7, 2], [1, 0, 9]])
    title = (
        "a dataset with a long name: 3/3 folds (subject), 80.0% +/- 5.0%, "
        "which is more than 90 characters"
    )
    picture = cv2.imread(str(confusion_image(matrix, labels, tmp_path / "confusion.png", title)))
    for label in labels:
        assert _appears_in(_drawn_alone(label, 0.45), picture), f"row name {label!r}"
        assert _appears_in(_drawn_alone(label, 0.4), picture), f"column name {label!r}"
    assert _appears_in(_drawn_alone(title, 0.5), picture)
