"""Group photos made from the public-domain test photo, for the small-face tests and
bench/smallfaces.py: one large face and a few small ones on a background, with where each
face is.

The photo's head is cut out with a feathered ellipse and pasted, scaled so that its face is F
pixels wide (dlib's box on the photo is 88 pixels wide), turned by up to 10 degrees either way,
maybe mirrored, its brightness and contrast changed a little, onto a background: blurred
noise, a gradient, clutter (rectangles and ellipses), or a part of the photo that holds no
face (its bottom, or the right of the head) scaled up. Each face's true box is a square F
wide centred on the pasted face (dlib's convention).

kinds:
    group   one large face (120-250 px) and 2-4 small ones (40-80 px), sometimes also one of
            80-120 px
    single  one large face (100-250 px)
    empty   a background only
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PHOTO = Path(__file__).resolve().parent / "data" / "faces" / "happiness" / "astronaut.png"
SIZE = 512  # pictures are SIZE x SIZE
FACE_WIDTH = 88  # dlib's box on the photo: (179, 83) to (267, 171)
FACE_CENTRE = (179 + 44, 83 + 44)
HEAD_BOX = (135, 10, 312, 240)  # x0, y0, x1, y1: head, hair and neck in the photo
BACKGROUNDS = ("noise", "gradient", "clutter", "photo")
KINDS = ("group", "single", "empty")


@dataclass(frozen=True)
class GroupPhoto:
    """A generated picture and the true boxes of its faces."""

    name: str
    kind: str  # KINDS
    background: str  # BACKGROUNDS
    picture: np.ndarray  # (SIZE, SIZE, 3) uint8 BGR
    faces: list[tuple[int, int, int, int]]  # x, y, width, height (square), largest first


def _photo() -> np.ndarray:
    photo = cv2.imread(str(PHOTO))
    assert photo is not None, PHOTO
    return photo


def _head(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(head BGR, mask 0..1, the face's centre in the head's pixels)."""
    x0, y0, x1, y1 = HEAD_BOX
    patch = photo[y0:y1, x0:x1].copy()
    mask = np.zeros(patch.shape[:2], np.float32)
    cx, cy = FACE_CENTRE[0] - x0, FACE_CENTRE[1] - y0
    axes = (int(0.95 * FACE_WIDTH), int(1.2 * FACE_WIDTH))
    cv2.ellipse(mask, (cx, cy + 10), axes, 0, 0, 360, 1.0, -1)
    return patch, cv2.GaussianBlur(mask, (0, 0), 6), (cx, cy)


def _background(photo: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "noise":
        base = rng.uniform(40, 200, 3)
        noise = rng.normal(0, rng.uniform(10, 50), (SIZE, SIZE, 3))
        noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 4))
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        t = math.cos(angle) * xx + math.sin(angle) * yy
        t = (t - t.min()) / (t.max() - t.min())
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = a + (b - a) * t[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3))
        return np.clip(image, 0, 255).astype(np.uint8)
    if kind == "clutter":
        image = np.full((SIZE, SIZE, 3), rng.uniform(30, 220, 3), np.float64)
        for _ in range(rng.integers(8, 25)):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            x, y = (int(v) for v in rng.integers(0, SIZE, 2))
            w, h = (int(v) for v in rng.integers(10, 160, 2))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x, y), (x + w, y + h), colour, -1)
            else:
                angle = float(rng.uniform(0, 180))
                cv2.ellipse(image, (x, y), (w // 2, h // 2), angle, 0, 360, colour, -1)
        image = cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 3, image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)
    # "photo": a part of the test photo without a face, scaled up.
    if rng.random() < 0.5:  # the bottom half
        side = int(rng.integers(200, 262))
        y0, x0 = int(rng.integers(250, 512 - side + 1)), int(rng.integers(0, 512 - side + 1))
    else:  # right of the head
        side = int(rng.integers(160, 200))
        x0, y0 = int(rng.integers(312, 512 - side + 1)), int(rng.integers(0, 512 - side + 1))
    part = photo[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        part = part[:, ::-1]
    return cv2.resize(np.ascontiguousarray(part), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def _paste(image: np.ndarray, head, face: float, x: float, y: float, rng) -> tuple:
    """Paste the head with its face `face` pixels wide centred at (x, y); its true box."""
    patch, mask, (cx, cy) = head
    if rng.random() < 0.5:
        patch, mask = patch[:, ::-1], mask[:, ::-1]
        cx = patch.shape[1] - 1 - cx
    scale = face / FACE_WIDTH
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), rng.uniform(-10, 10), scale)
    matrix[:, 2] += (x - cx, y - cy)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    warped = cv2.warpAffine(np.ascontiguousarray(patch), matrix, (SIZE, SIZE), flags=interpolation)
    alpha = cv2.warpAffine(np.ascontiguousarray(mask), matrix, (SIZE, SIZE))[..., None]
    warped = np.clip(
        warped.astype(np.float32) * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20), 0, 255
    )
    image[:] = np.clip(image * (1 - alpha) + warped * alpha, 0, 255).astype(np.uint8)
    half = face / 2
    return (round(x - half), round(y - half), round(face), round(face))


def _places(faces: list[float], rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Centres for faces (largest first) inside the picture, no head covering an earlier
    face; None if they do not fit."""
    placed: list[tuple[float, float, float]] = []
    for face in faces:
        for _ in range(200):
            margin = face * 0.6
            x, y = rng.uniform(margin, SIZE - margin, 2)
            # A head pasted later reaches 0.95 F sideways and 1.3 F up or down.
            if all(
                abs(x - px) > 0.95 * face + 0.5 * pf or abs(y - py) > 1.3 * face + 0.5 * pf
                for px, py, pf in placed
            ):
                placed.append((x, y, face))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _sizes(kind: str, rng: np.random.Generator) -> list[float]:
    if kind == "group":
        sizes = [rng.uniform(120, 250), *rng.uniform(40, 80, rng.integers(2, 5))]
        if rng.random() < 0.3:
            sizes.insert(1, rng.uniform(80, 120))
        return sizes
    if kind == "single":
        return [rng.uniform(100, 250)]
    return []


def group_photos(
    groups: int = 120, singles: int = 40, empty: int = 40, seed: int = 0
) -> Iterator[GroupPhoto]:
    """The generated pictures: groups, then singles, then empty ones (the backgrounds in
    turn); the same ones for the same arguments."""
    photo = _photo()
    head = _head(photo)
    rng = np.random.default_rng(seed)
    plan = [("group", groups), ("single", singles), ("empty", empty)]
    for kind, count in plan:
        for number in range(count):
            background = BACKGROUNDS[number % len(BACKGROUNDS)]
            while True:
                sizes = _sizes(kind, rng)
                centres = _places(sizes, rng)
                if centres is not None:
                    break
            picture = _background(photo, rng, background)
            faces = [
                _paste(picture, head, size, x, y, rng)
                for size, (x, y) in zip(sizes, centres, strict=True)
            ]
            yield GroupPhoto(f"{kind}{number:03d}", kind, background, picture, faces)


def matched(found: list[tuple[float, float, float, float]], truth: list) -> tuple[set[int], int]:
    """(indexes of the true faces found, detections matching none). A detection (x, y, w, h)
    matches a true face when its centre lies in the true box and its width is 0.5 to 2 times
    the true width; one detection a face."""
    taken: set[int] = set()
    false = 0
    for x, y, w, h in found:
        cx, cy = x + w / 2, y + h / 2
        hit = next(
            (
                index
                for index, (tx, ty, tw, th) in enumerate(truth)
                if index not in taken
                and tx <= cx <= tx + tw
                and ty <= cy <= ty + th
                and 0.5 <= w / tw <= 2.0
            ),
            None,
        )
        if hit is None:
            false += 1
        else:
            taken.add(hit)
    return taken, false
