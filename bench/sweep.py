"""Time a `fer sweep` and summarise it; compare two sweeps fold by fold.

    python bench/sweep.py DATASET [--grid bench/sweep-ck48.toml] [--ray ADDRESS] [-- fer sweep
    options]
    python bench/sweep.py --compare SWEEP_FOLDER OTHER_SWEEP_FOLDER

The first form runs `fer sweep DATASET --grid GRID --json` in a new process (FER_HOME as set),
and prints the wall time, the mean training time of a fold, the ranked table and, with --ray,
nothing else: run it once locally and once on Ray (with another FER_HOME, or the second run
finds every fold stored) and compare. The second form says whether two sweeps' stored fold
probabilities are identical, and how their fold times compare (Ray's overhead per fold).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run(dataset: str, grid: str, ray: str | None, extra: list[str]) -> None:
    command = [sys.executable, "-m", "fercli", "sweep", dataset, "--grid", grid, "--json", *extra]
    if ray:
        command += ["--ray", ray]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"fer sweep failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
    report = json.loads(finished.stdout)
    fold_seconds = _all_fold_seconds(report)
    print(
        f"engine {report['engine']}: {report['trained_folds']} folds trained, "
        f"{report['stored_folds']} stored; "
        f"wall {wall:.0f} s (sweep {report['seconds']:.0f} s), training time per fold "
        f"{np.mean(fold_seconds):.1f} s mean, {np.sum(fold_seconds):.0f} s in all"
    )
    print(
        "| # | recipe | accuracy | spread over seeds | macro-F1 | vs base (95% interval) | time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for item in report["recipes"]:
        low, high = item["difference_interval"]
        versus = (
            "(base)"
            if not item["changes"]
            else f"{item['difference_to_base']:+.2%} ({low:+.2%} .. {high:+.2%})"
        )
        print(
            f"| {item['rank']} | {item['recipe']} | {item['accuracy']:.2%} | "
            f"{'-' if item['spread'] is None else format(item['spread'], '.2%')} | "
            f"{item['macro_f1']:.3f} | {versus} | {item['seconds']:.0f} s |"
        )
    print(f"sweep folder: {report['folder']}")


def _all_fold_seconds(report: dict) -> list[float]:
    seconds = []
    for item in report["recipes"]:
        for folder in item["reports"].values():
            seconds += [
                fold["seconds"]
                for fold in json.loads((Path(folder) / "report.json").read_text())["folds"]
            ]
    return seconds


def compare(one: Path, two: Path) -> None:
    names = sorted(path.relative_to(one) for path in (one / "folds").glob("*/*.npz"))
    same, seconds_one, seconds_two = 0, [], []
    for name in names:
        with np.load(one / name) as a, np.load(two / name) as b:
            same += bool(np.array_equal(a["probabilities"], b["probabilities"]))
            seconds_one.append(float(a["seconds"]))
            seconds_two.append(float(b["seconds"]))
    print(f"{same} of {len(names)} folds have identical test probabilities")
    print(
        f"training time per fold: {np.mean(seconds_one):.2f} s in {one.name}, "
        f"{np.mean(seconds_two):.2f} s in "
        f"{two.name} (difference {np.mean(seconds_two) - np.mean(seconds_one):+.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?")
    parser.add_argument("--grid", default=str(Path(__file__).with_name("sweep-ck48.toml")))
    parser.add_argument("--ray")
    parser.add_argument("--compare", nargs=2, type=Path)
    arguments, extra = parser.parse_known_args()
    if arguments.compare:
        compare(*arguments.compare)
    elif arguments.dataset:
        run(
            arguments.dataset,
            arguments.grid,
            arguments.ray,
            [item for item in extra if item != "--"],
        )
    else:
        parser.error("give a DATASET or --compare")


if __name__ == "__main__":
    main()
