"""Accuracy of the default pipeline on a dataset: `fer preprocess` then `fer crossval --folds 10`
with random folds and with subject folds, as a user would run them.

    python bench/accuracy.py DATASET_DIR [--folds 10] [--epochs 100] [-- extra crossval options]

Development data only (e.g. ../shared/data/ck48): the dataset, its crops and the reports stay
under a temporary FER_HOME unless --keep is given; nothing here is committed.
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

FER = [sys.executable, "-m", "fercli"]


def run_json(arguments: list[str], env: dict) -> dict:
    result = subprocess.run(FER + arguments + ["--json"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"fer {' '.join(arguments)} failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--groups", default="random,subject", help="comma-separated: random, subject"
    )
    parser.add_argument(
        "--keep", action="store_true", help="use the real FER_HOME instead of a temporary one"
    )
    parser.add_argument("extra", nargs="*", help="more crossval options, after --")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ)
        if not options.keep:
            env["FER_HOME"] = scratch
        started = time.perf_counter()
        prepared = run_json(["preprocess", str(options.dataset)], env)
        print(
            f"preprocess: {prepared['aligned']} of {prepared['found']} aligned "
            f"in {time.perf_counter() - started:.1f} s; classes {prepared['classes']}"
        )
        for group in options.groups.split(","):
            started = time.perf_counter()
            report = run_json(
                [
                    "crossval",
                    str(options.dataset),
                    "--folds",
                    str(options.folds),
                    "--epochs",
                    str(options.epochs),
                    "--group",
                    group,
                    *options.extra,
                ],
                env,
            )
            accuracies = ", ".join(f"{fold['accuracy']:.3f}" for fold in report["folds"])
            print(
                f"\n{options.folds}-fold {group}: {report['mean_accuracy']:.2%} +/- "
                f"{report['std_accuracy']:.2%} "
                f"(pooled {report['pooled_accuracy']:.2%}, macro-F1 {report['macro_f1']:.3f}) "
                f"in {time.perf_counter() - started:.0f} s"
            )
            print(f"folds: {accuracies}")
            labels = report["labels"]
            print("confusion (rows true, columns predicted):")
            print("            " + " ".join(f"{label[:6]:>6}" for label in labels))
            for label, row in zip(labels, report["confusion_matrix"], strict=True):
                print(f"{label[:11]:<11} " + " ".join(f"{value:>6}" for value in row))
            for warning in report["warnings"]:
                print(f"note: {warning}")


if __name__ == "__main__":
    main()
