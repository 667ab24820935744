"""Speed of `fer predict`: one photo from a cold start, and many 512x512 photos in one call.

    python bench/predict.py [--model MODEL] [--images 300] [--repeats 5]

Without --model, a small model is trained on synthetic crops first (its labels are
meaningless; speed does not depend on them). Photos are made from the public-domain test
photo (one face each, small random shifts and brightness changes). Targets on the 2-core
development machine: one photo end to end in 1.5 s or less; at least 50 images/s for many
512x512 photos in one call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "faces" / "happiness" / "astronaut.png"
FER = [sys.executable, "-m", "fercli"]


def make_model(home: Path) -> Path:
    """A model trained for one epoch on synthetic crops, saved under home."""
    script = r"""
import sys, numpy as np
from pathlib import Path
from fercli.config import PreprocessConfig, TrainConfig
from fercli.prepared import PreparedDataset
from fercli.training import train_model
rng = np.random.default_rng(0)
labels = np.array(["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"] * 30)
dataset = PreparedDataset(crops=rng.integers(0, 256, (len(labels), 32, 32), dtype=np.uint8), labels=labels,
    subjects=np.array([""] * len(labels)), paths=np.array(["x"] * len(labels)),
    meta={"preprocess": PreprocessConfig().to_dict()})
train_model(dataset, TrainConfig(epochs=1), Path(sys.argv[1]))
"""
    path = home / "bench-model.npz"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, capture_output=True)
    return path


def make_photos(folder: Path, count: int) -> None:
    """count 512x512 photos with one face each, all different."""
    import cv2

    source = cv2.imread(str(PHOTO))
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shift = np.float32([[1, 0, rng.integers(-20, 21)], [0, 1, rng.integers(-20, 21)]])
        image = cv2.warpAffine(source, shift, (512, 512), borderMode=cv2.BORDER_REFLECT)
        image = cv2.convertScaleAbs(image, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-15, 15))
        cv2.imwrite(str(folder / f"photo{index:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def timed(arguments: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(FER + arguments, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"fer {' '.join(arguments)} failed: {result.stderr.strip()}")
    return elapsed, result.stdout


PEAK = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_memory(arguments: list[str], env: dict) -> float:
    """Peak RSS in MB of the largest process of one fer run (measured by a fresh parent,
    so that nothing else this script started counts)."""
    result = subprocess.run([sys.executable, "-c", PEAK, *FER, *arguments], env=env,
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = dict(os.environ, FER_HOME=str(scratch / "home"))
        model = options.model or make_model(scratch)
        photos = scratch / "photos"
        make_photos(photos, options.images)
        single = photos / "photo0000.jpg"

        timed(["predict", str(single), "--model", str(model), "--json"], env)  # warm the OS file cache
        cold = [timed(["predict", str(single), "--model", str(model), "--json"], env)[0] for _ in range(options.repeats)]
        print(f"one photo, new process, end to end: median {statistics.median(cold):.2f} s "
              f"(min {min(cold):.2f}, max {max(cold):.2f}, {options.repeats} runs)")

        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow"], env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
                       capture_output=True)
        print(f"for comparison, `import tensorflow` alone: {time.perf_counter() - started:.2f} s")

        help_time = timed(["--help"], env)[0]
        print(f"`fer --help`: {help_time:.2f} s")

        wall, output = timed(["predict", str(photos), "--model", str(model), "--json"], env)
        results = json.loads(output)
        faces = sum(len(image["faces"]) for image in results)
        print(f"{options.images} photos of 512x512 in one call: {wall:.2f} s, {options.images / wall:.0f} images/s "
              f"including start-up; {faces} faces found")
        for label, target in (("one photo", single), (f"{options.images} photos", photos)):
            print(f"peak memory, {label}: {peak_memory(['predict', str(target), '--model', str(model), '--json'], env):.0f} MB "
                  "(largest single process: fer or one of its workers)")


if __name__ == "__main__":
    main()
