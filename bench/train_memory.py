"""Memory and speed of training with augmentation ("copies": the originals plus 5 copies).

    python bench/train_memory.py [--src SRC ...] [--rounds 5] [--skip-memory] [--skip-speed]
    python bench/train_memory.py --in-process OLD_SRC/fercli/training.py [--rounds 10]

Each measurement runs in a new process on the fercli source folder given by --src (default:
this tree's src; give an old tree's src too, e.g. one made with `git archive`, to compare):
the sources take turns, round after round, so that the machine's drifting speed hits them
alike. Two measurements, on synthetic crops (no face data):

- memory: fit on FER2013's 28,709 training images (random 32x32 crops, 7 classes), 1 epoch
  of the paper recipe (--copies 5: 172,254 images); the process's peak RSS, its RSS before
  fit (TensorFlow imported, the crops made), and its peak after fit's z-score statistics
  (which hold float64 copies of the crops for a moment), which is what the epochs cost;
- speed: fit on 213 images (JAFFE's size; synthetic shapes) for --epochs of the paper recipe;
  the median time of an epoch after the first (which traces the graph).

--in-process compares the speed of an old training.py's fit with this tree's in one process,
taking turns (the order swapped every round), which takes the load of the other processes
on the machine out of the comparison better than separate processes do.

One TensorFlow thread, as in a crossval worker. Each process also prints a hash of the
trained weights: the same from every source means the same training. Prints one JSON line
per process, then the medians per source.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_since_reset_mb() -> float:
    """The resident memory's high-water mark (VmHWM) in MB, since reset_peak()."""
    with open("/proc/self/status") as stream:
        line = next(line for line in stream if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start VmHWM again from the current resident memory (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")


def child(kind: str, epochs: int, threads: int, copies: int) -> dict:
    """One measurement in this process, on whichever fercli PYTHONPATH gives."""
    from fercli.core.config import TrainConfig
    from fercli.learn import fitting as training
    from fercli.learn.fitting import configure_tensorflow, fit

    statistics_of = training.normalisation
    peaks = []

    def normalisation(crops, mode):
        # fit's z-score statistics hold float64 copies of every crop for a moment; the peak
        # after them is what the augmented epochs cost. (The reset clears ru_maxrss too.)
        result = statistics_of(crops, mode)
        peaks.append(peak_since_reset_mb())
        reset_peak()
        return result

    training.normalisation = normalisation

    configure_tensorflow(threads)
    if kind == "memory":
        rng = np.random.default_rng(0)
        crops = rng.integers(0, 256, (28709, 32, 32), dtype=np.uint8)
        targets = rng.integers(0, 7, len(crops))
        config = TrainConfig(epochs=1, copies=copies)
    else:
        crops, targets = speed_data()
        config = TrainConfig(epochs=epochs)
    import tensorflow as tf

    tf.constant(0.0)  # TensorFlow's runtime up before the baseline
    before = rss_mb()
    times = [time.perf_counter()]
    model = fit(
        crops,
        targets,
        7,
        config,
        seed=0,
        on_epoch=lambda *figures: times.append(time.perf_counter()),
    ).model
    epochs_seconds = np.diff(times)
    digest = hashlib.sha256(
        b"".join(np.asarray(w).tobytes() for w in model.get_weights())
    ).hexdigest()
    return {
        "kind": kind,
        "images": len(crops),
        "copies": config.copies,
        "epoch_images": len(crops) * (config.copies + 1),
        "rss_before_fit_mb": round(before, 1),
        "peak_rss_mb": round(max([*peaks, peak_since_reset_mb()]), 1),
        "peak_rss_after_statistics_mb": round(peak_since_reset_mb(), 1),
        "first_epoch_s": round(float(epochs_seconds[0]), 3),
        "epoch_s": round(float(np.median(epochs_seconds[1:])), 4)
        if len(epochs_seconds) > 1
        else None,
        "weights": digest[:16],
        "load_average": os.getloadavg()[0],
    }


def speed_data() -> tuple[np.ndarray, np.ndarray]:
    """213 synthetic 32x32 crops of 7 classes (tests/synthetic.py's shapes) and their targets."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import make_dataset

    dataset = make_dataset(subjects=10, per_subject=4)  # 280 images; the first 213
    labels = sorted(set(dataset.labels.tolist()))
    return dataset.crops[:213], np.array([labels.index(label) for label in dataset.labels[:213]])


def in_process(old_training: Path, rounds: int, epochs: int, threads: int) -> None:
    """The old fit and this tree's, in turns in this process; each run's median epoch time."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "src"))
    from fercli.core.config import TrainConfig
    from fercli.learn import fitting as training

    spec = importlib.util.spec_from_file_location("old_training", old_training)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_training"] = old
    spec.loader.exec_module(old)
    training.configure_tensorflow(threads)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each fit traces its own function
    crops, targets = speed_data()
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for number in range(rounds):
        turns = [("old", old.fit), ("new", training.fit)]
        for name, fit in turns if number % 2 == 0 else turns[::-1]:
            times = [time.perf_counter()]
            fit(
                crops,
                targets,
                7,
                TrainConfig(epochs=epochs),
                0,
                on_epoch=lambda *figures: times.append(time.perf_counter()),
            )
            seconds[name].append(float(np.median(np.diff(times)[1:])))
    ratios = [new / old for old, new in zip(seconds["old"], seconds["new"], strict=True)]
    print(
        json.dumps(
            {
                "epoch_s": seconds,
                "median_old": statistics.median(seconds["old"]),
                "median_new": statistics.median(seconds["new"]),
                "median_ratio_new_old": round(statistics.median(ratios), 3),
                "load_average": os.getloadavg()[0],
            }
        )
    )


def run(src: Path, kind: str, epochs: int, threads: int, copies: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
        "--copies",
        str(copies),
    ]
    output = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["src"] = str(src)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--src", type=Path, action="append", help="fercli source folders (default: this tree's)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="speed runs per source")
    parser.add_argument("--memory-rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of a speed run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--copies", type=int, default=5, help="copies of the memory run")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--in-process", type=Path, metavar="OLD_TRAINING_PY")
    parser.add_argument("--child", choices=("memory", "speed"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(
            json.dumps(
                child(arguments.child, arguments.epochs, arguments.threads, arguments.copies)
            )
        )
        return
    if arguments.in_process:
        in_process(arguments.in_process, arguments.rounds, arguments.epochs, arguments.threads)
        return
    sources = arguments.src or [ROOT / "src"]
    results: list[dict] = []
    plan = ([("memory", 1)] * arguments.memory_rounds if not arguments.skip_memory else []) + (
        [("speed", arguments.epochs)] * arguments.rounds if not arguments.skip_speed else []
    )
    for kind, epochs in plan:
        for src in sources:
            results.append(run(src, kind, epochs, arguments.threads, arguments.copies))
    for src in sources:
        mine = [result for result in results if result["src"] == str(src)]
        summary = {"src": str(src)}
        for kind, key in (
            ("memory", "peak_rss_mb"),
            ("memory", "peak_rss_after_statistics_mb"),
            ("memory", "rss_before_fit_mb"),
            ("memory", "first_epoch_s"),
            ("speed", "epoch_s"),
        ):
            values = [result[key] for result in mine if result["kind"] == kind]
            if values:
                summary[f"{kind} {key} (median of {len(values)})"] = statistics.median(values)
        summary["weights"] = sorted({result["weights"] for result in mine})
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
