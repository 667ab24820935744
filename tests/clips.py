"""Video clips made from the public-domain test photo, for the video tests and bench/video.py.

The face region of the photo is pasted onto a plain background, moving and changing size from
frame to frame; a second copy (mirrored) can join, and frames can be left without a face.
Written with OpenCV's VideoWriter: MJPG in .avi (OpenCV's own encoder, present in every build)
or mp4v in .mp4 (and .mkv, MPEG-1 in .mpg) where FFmpeg is there to write it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

PHOTO = Path(__file__).resolve().parent / "data" / "faces" / "happiness" / "astronaut.png"
# The face and some of its surroundings (the face itself is about 88 pixels wide).
FACE_REGION = (150, 40, 300, 210)  # x0, y0, x1, y1
CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "mp4v", ".mpg": "PIM1"}


def face_patch() -> np.ndarray:
    """The face region of the test photo, BGR."""
    photo = cv2.imread(str(PHOTO))
    x0, y0, x1, y1 = FACE_REGION
    return np.ascontiguousarray(photo[y0:y1, x0:x1])


def can_write(suffix: str) -> bool:
    """Whether this OpenCV build writes (and reads back) videos with this suffix's codec."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"probe{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS[suffix]), 30, (64, 48))
        if not writer.isOpened():
            return False
        for _ in range(2):
            writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.release()
        capture = cv2.VideoCapture(str(path))
        ok, _ = capture.read()
        capture.release()
        return ok


# Where a face sits in a frame: (centre x, centre y, scale) or None for no face there.
Placement = Callable[[int], "list[tuple[float, float, float]]"]


def moving_face(frames: int, width: int, height: int) -> Placement:
    """One face drifting across the frame and growing and shrinking a little."""

    def place(index: int) -> list[tuple[float, float, float]]:
        phase = index / max(1, frames - 1)
        x = width * (0.35 + 0.3 * phase)
        y = height * (0.5 + 0.08 * math.sin(2 * math.pi * phase))
        scale = 1.0 + 0.15 * math.sin(2 * math.pi * phase)
        return [(x, y, scale)]

    return place


def render_frames(frames: int, width: int, height: int, place: Placement) -> Iterator[np.ndarray]:
    """The BGR frames of a clip: a grey gradient background and the faces place() puts there
    (odd-numbered faces mirrored, so that two faces are not the same picture)."""
    patch = face_patch()
    background = np.tile(np.linspace(70, 150, width, dtype=np.float32), (height, 1))
    background = cv2.cvtColor(background.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for index in range(frames):
        frame = background.copy()
        for number, (x, y, scale) in enumerate(place(index)):
            face = patch[:, ::-1] if number % 2 else patch
            size = (round(face.shape[1] * scale), round(face.shape[0] * scale))
            face = cv2.resize(face, size, interpolation=cv2.INTER_AREA)
            left, top = round(x - size[0] / 2), round(y - size[1] / 2)
            # Only the part inside the frame.
            x0, y0 = max(0, left), max(0, top)
            x1, y1 = min(width, left + size[0]), min(height, top + size[1])
            if x1 > x0 and y1 > y0:
                frame[y0:y1, x0:x1] = face[y0 - top : y1 - top, x0 - left : x1 - left]
        yield frame


def write_clip(
    path: Path,
    frames: int,
    width: int = 320,
    height: int = 240,
    fps: float = 30.0,
    place: Placement | None = None,
) -> Path:
    """Write a clip of frames frames; place (default: one moving face) says where the faces are."""
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*CODECS[path.suffix]), fps, (width, height)
    )
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix}"
    for frame in render_frames(frames, width, height, place or moving_face(frames, width, height)):
        writer.write(frame)
    writer.release()
    return path
