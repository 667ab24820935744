"""Speed of the commands a reorganisation could slow: `fer --help`, `fer predict` on one
photo from a cold start, and `fer preprocess` of a small folder (no cache), for this checkout
and an older one, in turns so that both see the same machine load.

    python bench/house.py --against OLD_SRC [--repeats 9] [--images 40]

OLD_SRC is the src/ folder of another checkout (e.g. `git worktree add --detach /tmp/old
f2b55f2`, then /tmp/old/src). The model and the photos are made by this checkout's code from
the public-domain test photo (a one-epoch network on synthetic crops: its labels mean nothing,
its speed is any network's). Figures are medians over the repeats: "wall" seconds and "cpu"
(user + system of the command and its worker processes, steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "faces" / "happiness" / "astronaut.png"


def run(src: Path, args: list[str], home: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m fercli ARGS` with the package from src."""
    env = {**os.environ, "PYTHONPATH": str(src), "FER_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fercli", *args], env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def make_photos(folder: Path, count: int) -> Path:
    """count photos of the test face, shifted and brightened a little, in two class folders."""
    rng = np.random.default_rng(0)
    photo = cv2.imread(str(PHOTO))
    for index in range(count):
        shift = np.float32([[1, 0, rng.integers(-20, 21)], [0, 1, rng.integers(-20, 21)]])
        moved = cv2.warpAffine(photo, shift, photo.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
        moved = np.clip(moved * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
        target = folder / ("happiness" if index % 2 else "sadness") / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), moved)
    return folder


def make_model(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import train_tiny_model

    return train_tiny_model(path, ("anger", "happiness"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the older src/ folder")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--images", type=int, default=40)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fer-house-"))
    model = make_model(work / "model.npz")
    photos = make_photos(work / "photos", options.images)
    sources = {"new": ROOT / "src", "old": options.against}
    commands = {
        "fer --help": lambda home: ["--help"],
        "fer predict photo (cold)": lambda home: ["predict", str(PHOTO), "--model", str(model)],
        f"fer preprocess {options.images} photos": lambda home: ["preprocess", str(photos)],
    }
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for turn in range(options.repeats):
        for name, args in commands.items():
            for label, src in sources.items():
                home = work / f"home-{label}-{turn}"  # a fresh FER_HOME: nothing cached
                figures.setdefault((name, label), []).append(run(src, args(home), home))
    print(f"medians of {options.repeats} turns, load average {os.getloadavg()[0]:.1f} at the end")
    print("| command | new wall | old wall | new cpu | old cpu |")
    print("| --- | --- | --- | --- | --- |")
    for name in commands:
        new, old = figures[(name, "new")], figures[(name, "old")]
        cells = [
            statistics.median(value[i] for value in run_) for i in (0, 1) for run_ in (new, old)
        ]
        print(f"| {name} | " + " | ".join(f"{cell:.3f} s" for cell in cells) + " |")


if __name__ == "__main__":
    main()
