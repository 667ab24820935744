"""The time of a training step, network by network, for fercli sources taking turns.

    python bench/train_step.py [--src SRC ...] [--rounds 5] [--threads 2]
        [--network VARIANT:SIZE ...]

Each measurement runs in a new process on the fercli source folder given by --src (default:
this tree's src; give an old tree's too, e.g. one made with `git archive`, to compare): the
sources take turns, round after round, so that the machine's drifting speed hits them alike.
A measurement builds the network with fercli's model factory and trains it with fercli's
chunk trainer (learn/fitting.py, what `fer train` runs) on 2,048 random crops in batches of
64, momentum SGD: one chunk first (which traces the graph), then the median of 3 chunks,
reported per batch. Networks (--network): the general recipe's `vgg-wide` on 48x48 crops
and the lab recipes' `batchnorm-dropout` on 32x32 by default. Prints one JSON line per
process, then the medians per source and network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES, BATCH = 2048, 64


def measure(variant: str, size: int, threads: int) -> dict:
    """Time fercli's chunk trainer on one network, in this process."""
    import numpy as np

    from fercli.learn.fitting import _chunk_trainer, configure_tensorflow

    configure_tensorflow(threads)
    import keras
    import tensorflow as tf

    from fercli.learn.network import build_model

    model = build_model(7, variant, size)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    optimizer.build(model.trainable_variables)
    run = _chunk_trainer(
        model, optimizer, keras.losses.CategoricalCrossentropy(), np.ones(7, np.float32), BATCH, 0.0
    )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(IMAGES, size, size, 1)).astype(np.float32))
    y = tf.constant(np.eye(7, dtype=np.float32)[rng.integers(0, 7, IMAGES)])
    float(run(x, y)[0])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        float(run(x, y)[0])
        times.append(time.perf_counter() - start)
    return {"ms_per_batch": 1000 * statistics.median(times) / (IMAGES // BATCH)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", action="append", help="fercli source folders (default: ./src)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", action="append", help="VARIANT:SIZE")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, size = args.worker.split(":")
        print(json.dumps(measure(variant, int(size), args.threads)))
        return
    sources = [str(Path(src).resolve()) for src in (args.src or [ROOT / "src"])]
    networks = args.network or ["vgg-wide:48", "batchnorm-dropout:32"]
    results: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        for network in networks:
            for src in sources:
                environment = {**os.environ, "PYTHONPATH": src, "TF_CPP_MIN_LOG_LEVEL": "3"}
                command = [sys.executable, __file__, "--worker", network]
                command += ["--threads", str(args.threads)]
                output = subprocess.run(
                    command, env=environment, capture_output=True, text=True, check=True
                ).stdout
                figure = json.loads(output.strip().splitlines()[-1])["ms_per_batch"]
                results.setdefault((network, src), []).append(figure)
                line = {"round": round_index, "network": network, "src": src, "ms": figure}
                print(json.dumps(line), flush=True)
    for (network, src), figures in results.items():
        print(f"{network:24s} {src}: median {statistics.median(figures):.1f} ms a batch of {BATCH}")


if __name__ == "__main__":
    main()
