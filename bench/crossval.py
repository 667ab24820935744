"""Speed of `fer crossval`: 10 folds x 100 epochs on a JAFFE-sized set, against a plain
`model.fit` of the same network and against this machine's float32 matrix-multiply rate,
all measured in the same run.

    python bench/crossval.py [DATASET] [--folds 10] [--epochs 100] [--images 213]

DATASET is a preprocessed dataset (name, folder or original folder, as `fer crossval` takes
it); without one, a synthetic set of 213 32x32 images in 7 classes is generated. Target on
the 2-core development machine: the whole 10-fold run in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """float32 GFLOP/s of numpy's matrix multiply on this machine."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def synthetic_dataset(home: Path, images: int, classes: int = 7, seed: int = 0) -> str:
    """A JAFFE-sized set of class-dependent patterns, saved where `fer crossval` finds it."""
    from fercli.core.config import PreprocessConfig
    from fercli.data.prepared import PreparedDataset, save_dataset

    rng = np.random.default_rng(seed)
    labels = np.arange(images) % classes
    crops = rng.normal(128, 30, (images, 32, 32))
    for index, label in enumerate(labels):
        row = 4 + 3 * label + rng.integers(-1, 2)
        crops[index, row : row + 3, 6:26] += 80
    dataset = PreparedDataset(
        crops=np.clip(crops, 0, 255).astype(np.uint8),
        labels=np.array([f"class{label}" for label in labels]),
        subjects=np.array([f"P{index % 10}" for index in range(images)]),
        paths=np.array([f"synthetic/{index}.png" for index in range(images)]),
        meta={
            "layout": "synthetic",
            "source": "synthetic",
            "preprocess": PreprocessConfig().to_dict(),
            "preprocess_fingerprint": PreprocessConfig().fingerprint(),
        },
    )
    save_dataset(dataset, home / "datasets" / "synthetic")
    return "synthetic"


PLAIN_FIT = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from fercli.data.prepared import resolve_dataset
from fercli.learn.folds import make_folds
from fercli.learn.selection import normalisation, select_classes
dataset = resolve_dataset(sys.argv[1]); epochs = int(sys.argv[2])
selection = select_classes(dataset)
train, test = make_folds(selection, 10, "random", 0)[0]
import keras
from fercli.learn.network import build_model
mean, std = normalisation(selection.crops[train], "global")
x = ((selection.crops[train] - mean) / std).astype("float32")[..., None]
y = np.eye(len(selection.labels), dtype="float32")[selection.targets[train]]
model = build_model(len(selection.labels))
model.compile(
    optimizer=keras.optimizers.SGD(0.001, momentum=0.9),
    loss="categorical_crossentropy",
    metrics=["accuracy"],
)
started = time.perf_counter()
model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
print(json.dumps({"seconds": time.perf_counter() - started, "train_size": len(train)}))
"""


def training_flops_per_image() -> float:
    """Multiply-adds x 2 of one forward pass of the paper's network, times 3 for training
    (forward, gradient of the inputs, gradient of the weights)."""
    conv1 = 28 * 28 * 32 * 5 * 5 * 1
    conv2 = 10 * 10 * 64 * 5 * 5 * 32
    dense = 1600 * 7
    return 2 * (conv1 + conv2 + dense) * 3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", nargs="?")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--images", type=int, default=213)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ)
        dataset = options.dataset
        if dataset is None:
            env["FER_HOME"] = scratch
            os.environ["FER_HOME"] = scratch
            dataset = synthetic_dataset(Path(scratch), options.images)

        rate = matmul_rate()
        print(f"numpy float32 matmul: {rate:.0f} GFLOP/s")

        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "fercli",
                "crossval",
                dataset,
                "--folds",
                str(options.folds),
                "--epochs",
                str(options.epochs),
                "--json",
                "--output",
                str(Path(scratch) / "run"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"fer crossval failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
        trained = sum(fold["train_size"] for fold in report["folds"]) * options.epochs
        fold_seconds = [fold["seconds"] for fold in report["folds"]]
        flops = training_flops_per_image()
        print(
            f"fer crossval: {options.folds} folds x {options.epochs} epochs on "
            f"{report['dataset']['images']} images: "
            f"{wall:.1f} s wall (command start to end), {report['protocol']['workers']} workers"
        )
        print(
            f"  per fold (in its worker): mean {np.mean(fold_seconds):.1f} s; "
            f"throughput {trained / wall:.0f} images x epochs / s over the whole run"
        )
        print(
            f"  ~{trained / wall * flops / 1e9:.0f} GFLOP/s of training arithmetic = "
            f"{trained / wall * flops / 1e9 / rate:.0%} of the matmul rate"
        )
        print(f"  mean accuracy {report['mean_accuracy']:.2%} +/- {report['std_accuracy']:.2%}")

        plain = subprocess.run(
            [sys.executable, "-c", PLAIN_FIT, dataset, str(options.epochs)],
            env=env,
            capture_output=True,
            text=True,
        )
        if plain.returncode != 0:
            sys.exit(f"plain fit failed: {plain.stderr.strip()[-2000:]}")
        measured = json.loads(plain.stdout.strip().splitlines()[-1])
        per_image = measured["train_size"] * options.epochs / measured["seconds"]
        print(
            f"plain model.fit, one fold ({measured['train_size']} images x {options.epochs} "
            "epochs, "
            f"default threads): {measured['seconds']:.1f} s, {per_image:.0f} images x epochs / s, "
            f"{per_image * flops / 1e9 / rate:.0%} of the matmul rate; x{options.folds} folds = "
            f"{measured['seconds'] * options.folds:.0f} s"
        )
        print(
            "speed-up of fer crossval over plain fits: "
            f"{measured['seconds'] * options.folds / wall:.1f}x"
        )


if __name__ == "__main__":
    main()
