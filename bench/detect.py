"""Cost of finding every face (detect_faces(every_face=True), what predict does) against the
first upsampling level that finds one (preprocessing's fast path), by photo size.

    python bench/detect.py [--repeats 5]

The photos are the public-domain test photo at each size, with a second copy of its face
at 44 pixels (the small face the extra level is for). Figures are the best of the
repeats, in one process on one core (the detector is single-threaded), so that other load on
a shared machine inflates them least.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.faces.align import detect_faces

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "faces" / "happiness" / "astronaut.png"
SIZES = ((320, 240), (512, 512), (640, 480), (800, 600), (1024, 768), (1280, 960))


def group_photo(width: int, height: int) -> np.ndarray:
    """A width x height picture: the test photo as high as the picture (unstretched) on a
    grey ground, and its face pasted again at 44 pixels in the bottom right corner."""
    photo = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    picture = np.full((height, width), 110, np.uint8)
    side = min(width, height)
    picture[:side, :side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    small = cv2.resize(photo[20:230, 120:330], (71, 71), interpolation=cv2.INTER_AREA)
    picture[height - 80 : height - 9, width - 80 : width - 9] = small
    return picture


def best_time(function, repeats: int) -> float:
    function()  # warm: the detector loaded, caches filled
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    config = PreprocessConfig()
    print(f"{'photo':>10}  {'first level':>12}  {'every face':>11}  {'extra':>7}  faces")
    for width, height in SIZES:
        gray = group_photo(width, height)
        fast = best_time(lambda: detect_faces(gray, config), arguments.repeats)
        full = best_time(lambda: detect_faces(gray, config, every_face=True), arguments.repeats)
        found = (len(detect_faces(gray, config)), len(detect_faces(gray, config, every_face=True)))
        print(
            f"{width}x{height:<5}  {fast * 1000:9.0f} ms  {full * 1000:8.0f} ms  "
            f"{(full - fast) * 1000:+5.0f} ms  {found[0]} -> {found[1]}"
        )


if __name__ == "__main__":
    main()
