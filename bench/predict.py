"""Speed of `fer predict`: one photo from a cold start, and many 512x512 photos in one call,
with a single network and with a 10-network ensemble (what `fer crossval --folds 10` saves).

    python bench/predict.py [--model MODEL] [--ensemble MODEL] [--images 300] [--repeats 5]
                            [--against OLD_SRC]

Without --model and --ensemble, a single network and a 10-network ensemble are trained on
synthetic crops first (one epoch: their labels are meaningless; speed does not depend on
them). Photos are made from the public-domain test photo (one face each, small random shifts
and brightness changes). --against runs every measurement also with the fercli package in
OLD_SRC (e.g. a `git archive` of an older commit's src/), in turns with this checkout's, so
that both see the same machine load. Figures are medians over the repeats; "cpu" is the
user+system time of fer and its worker processes, steadier than wall time on a shared machine.

Targets on the 2-core development machine: one photo end to end in 1.5 s or less (0.5 s
with a 10-network model); at least 50 images/s for many 512x512 photos in one call, and a
10-network model within 20% of a single network's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "faces" / "happiness" / "astronaut.png"
FER = [sys.executable, "-m", "fercli"]


def make_model(path: Path, networks: int) -> Path:
    """A model of `networks` networks trained for one epoch on synthetic crops."""
    script = r"""
import sys, numpy as np
from pathlib import Path
from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.data.prepared import PreparedDataset
from fercli.learn.training import train_model
rng = np.random.default_rng(0)
labels = np.array(["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"] * 30)
crops = rng.integers(0, 256, (len(labels), 32, 32), dtype=np.uint8)
dataset = PreparedDataset(crops=crops, labels=labels,
    subjects=np.array([""] * len(labels)), paths=np.array(["x"] * len(labels)),
    meta={"preprocess": PreprocessConfig().to_dict()})
train_model(dataset, TrainConfig(epochs=1), Path(sys.argv[1]), ensemble=int(sys.argv[2]))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run(
        [sys.executable, "-c", script, str(path), str(networks)],
        check=True,
        capture_output=True,
        env=env,
    )
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


def timed(arguments: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of fer and its workers, stdout) of one fer run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(FER + arguments, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"fer {' '.join(arguments)} failed: {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, result.stdout


PEAK = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_memory(arguments: list[str], env: dict) -> float:
    """Peak RSS in MB of the largest process of one fer run (measured by a fresh parent,
    so that nothing else this script started counts)."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *FER, *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip()) / 1024


def in_turns(sources: dict[str, dict], models: dict[str, Path], target: Path, repeats: int) -> dict:
    """{(source, model): [(wall, cpu), ...]}: `fer predict target` with each model and each
    source, the combinations taking turns within every repeat."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for source, env in sources.items():  # warm the OS file cache
        for model in models.values():
            timed(["predict", str(target), "--model", str(model), "--json"], env)
    for _ in range(repeats):
        for source, env in sources.items():
            for name, model in models.items():
                wall, cpu, _ = timed(["predict", str(target), "--model", str(model), "--json"], env)
                runs.setdefault((source, name), []).append((wall, cpu))
    return runs


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a single-network model (default: made here)")
    parser.add_argument(
        "--ensemble", type=Path, help="a model of several networks (default: 10, made here)"
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--against", type=Path, help="an older fercli source folder (holding fercli/) to compare"
    )
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base = dict(os.environ, FER_HOME=str(scratch / "home"))
        sources = {"this": dict(base, PYTHONPATH=str(ROOT / "src"))}
        if options.against:
            sources = {"old": dict(base, PYTHONPATH=str(options.against.resolve())), **sources}
        models = {
            "1 network": options.model or make_model(scratch / "single.npz", 1),
            "ensemble": options.ensemble or make_model(scratch / "ensemble.npz", 10),
        }
        photos = scratch / "photos"
        make_photos(photos, options.images)
        single = photos / "photo0000.jpg"

        cold = in_turns(sources, models, single, options.repeats)
        batch = in_turns(sources, models, photos, options.repeats)
        for source in sources:
            print(
                f"== {source} ({sources[source]['PYTHONPATH']}), medians of {options.repeats} runs"
            )
            for title, runs, per_image in (
                ("one photo, new process, end to end", cold, False),
                (f"{options.images} photos of 512x512 in one call", batch, True),
            ):
                figures = {}
                for name in models:
                    walls, cpus = zip(*runs[(source, name)], strict=True)
                    figures[name] = (median(walls), median(cpus))
                    rate = f", {options.images / median(walls):.0f} images/s" if per_image else ""
                    print(
                        f"  {title}, {name}: {median(walls):.2f} s (min {min(walls):.2f}, max "
                        f"{max(walls):.2f}){rate}; "
                        f"cpu {median(cpus):.2f} s"
                    )
                wall_ratio = figures["ensemble"][0] / figures["1 network"][0] - 1
                cpu_ratio = figures["ensemble"][1] / figures["1 network"][1] - 1
                print(f"  {title}: the ensemble takes {wall_ratio:+.0%} wall, {cpu_ratio:+.0%} cpu")

        env = sources["this"]
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import tensorflow"],
            env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
            capture_output=True,
        )
        print(f"for comparison, `import tensorflow` alone: {time.perf_counter() - started:.2f} s")
        print(f"`fer --help`: {timed(['--help'], env)[0]:.2f} s")
        results = json.loads(
            timed(["predict", str(photos), "--model", str(models["1 network"]), "--json"], env)[2]
        )
        print(
            f"{sum(len(image['faces']) for image in results)} faces found in {options.images} "
            "photos"
        )
        for source, env in sources.items():
            for name, model in models.items():
                for label, target in (("one photo", single), (f"{options.images} photos", photos)):
                    peak = peak_memory(
                        ["predict", str(target), "--model", str(model), "--json"], env
                    )
                    print(
                        f"peak memory, {source}, {name}, {label}: {peak:.0f} MB "
                        "(largest single process: fer or one of its workers)"
                    )


if __name__ == "__main__":
    main()
