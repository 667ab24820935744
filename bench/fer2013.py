"""Speed of preprocessing a FER2013-sized CSV (35,887 rows of 48x48 faces).

    python bench/fer2013.py [--rows 35887] [--workers 2] [--keep CSV]

The CSV is synthetic: the public-domain test photo's face at 48x48, each row shifted by a
pixel or two and made brighter or darker, so that every row is a distinct face dlib can find
(after one upsampling, as in FER2013). Target on the 2-core development machine: at least
500 rows/s. Prints one JSON line: rows, aligned, skipped, seconds, rows/s, peak memory.

FER_HOME is a new, empty folder unless the variable is set: then the time includes the first
run's conversion of dlib's landmark model (done once, in the main process, before the workers
start). Set FER_HOME to a folder that holds the converted model to measure without it. For
an A/B of two versions, run this script with PYTHONPATH pointing at each version's src in
turns, on the same --keep CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTO = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "data"
    / "faces"
    / "happiness"
    / "astronaut.png"
)
TIGHT_FACE_BOX = (160, 60, 290, 190)


def write_csv(path: Path, rows: int) -> None:
    import cv2

    gray = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    x0, y0, x1, y1 = TIGHT_FACE_BOX
    rng = np.random.default_rng(0)
    usages = ["Training"] * 8 + ["PublicTest", "PrivateTest"]
    with open(path, "w") as stream:
        stream.write("emotion,pixels,Usage\n")
        for index in range(rows):
            dx, dy = rng.integers(-3, 4, 2)
            face = cv2.resize(
                gray[y0 + dy : y1 + dy, x0 + dx : x1 + dx], (48, 48), interpolation=cv2.INTER_AREA
            )
            face = np.clip(face.astype(np.int16) + int(rng.integers(-20, 21)), 0, 255)
            if index % 2:
                face = face[:, ::-1]
            stream.write(
                f"{index % 7},{' '.join(map(str, face.ravel().tolist()))},{usages[index % 10]}\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=35887)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--keep", type=Path, help="CSV to write (or reuse) instead of a temporary one"
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("FER_HOME", str(Path(folder) / "home"))
        from fercli.core.config import PreprocessConfig
        from fercli.data.fer2013 import preprocess_fer2013

        path = arguments.keep or Path(folder) / "fer2013.csv"
        if not path.exists():
            write_csv(path, arguments.rows)
        started = time.perf_counter()
        report = preprocess_fer2013(path, PreprocessConfig(), arguments.workers)
        seconds = time.perf_counter() - started
        rows = report.found
        print(
            json.dumps(
                {
                    "rows": rows,
                    "aligned": report.aligned,
                    "skipped": len(report.skipped),
                    "seconds": round(seconds, 1),
                    "rows_per_second": round(rows / seconds, 1),
                    "workers": arguments.workers,
                    "load_average": os.getloadavg(),
                    "peak_rss_mb_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    // 1024,
                }
            )
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
