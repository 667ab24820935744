"""The development protocol for accuracy work: several views of CK+48, several seeds.

One view of one dataset can lie: CK+48's random folds sit near 99% because the 3
near-identical frames of a sequence straddle folds, and its subject folds are dominated by
who the person is. The held-out JAFFE (213 full-frame photos of 10 people, random folds)
behaves like neither. So every recipe is measured on views that behave like small sets
without near-duplicates, each with several seeds, and reported as the mean over seeds with
the spread over seeds (the +/- of 10 folds is not the noise of the mean):

    last-random    the last frame of each of the 327 sequences, 10 random stratified folds
    last-subject   the same images, 10 subject folds (new people)
    small-random   200 of those images (a fixed stratified draw), 10 random folds

    python bench/devviews.py CK48_DIR --recipe "paper=" --recipe "noaug=--no-augment" \
        [--seeds 0,1,2] [--views last-random,last-subject,small-random] [--results FILE]

Each --recipe is NAME=CROSSVAL OPTIONS. Results are appended to a JSON-lines file (default
bench/devviews-results.jsonl under a temporary FER_HOME... see --results) as each run
finishes, and runs already in it are not repeated, so a killed bench resumes. Development data
only (e.g. ../shared/data/ck48): crops, datasets and reports stay under FER_HOME (--home,
default a folder in /tmp); nothing here is committed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FER = [sys.executable, "-m", "fercli"]
VIEWS = {
    "last-random": ("last", "random"),
    "last-subject": ("last", "subject"),
    "small-random": ("small", "random"),
    "all-subject": ("all", "subject"),
    "all-random": ("all", "random"),
}
SMALL_SIZE = 200


def run_json(arguments: list[str], env: dict) -> dict:
    result = subprocess.run(FER + arguments + ["--json"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"fer {' '.join(arguments)} failed ({result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return json.loads(result.stdout)


def sequence_of(path: str) -> tuple[str, int]:
    """(S005_001, frame number) from a CK+-style file name S005_001_00000011.png."""
    stem = Path(path).stem
    subject, sequence, frame = stem.split("_")[:3]
    return f"{subject}_{sequence}", int(frame)


def make_views(source: Path, env: dict, preprocess_options: list[str]) -> dict[str, str]:
    """Preprocess the CK+48 folder and save its views as datasets under FER_HOME; their names."""
    from fercli.data.prepared import PreparedDataset, load_dataset, save_dataset

    report = run_json(["preprocess", str(source), *preprocess_options], env)
    edges = report.get("edges", {})
    crops = sum(values["crops"] for values in edges.values()) or 1
    print(
        f"crops: {report['aligned']}; past the photo's edge "
        f"{sum(v['padded'] for v in edges.values()) / crops:.1%}, "
        "saturated (>10% of pixels >= 250) "
        f"{sum(v['saturated'] for v in edges.values()) / crops:.1%}",
        flush=True,
    )
    full = load_dataset(Path(report["dataset"]))
    last: dict[str, tuple[int, int]] = {}
    for index, path in enumerate(full.paths.tolist()):
        sequence, frame = sequence_of(path)
        if sequence not in last or frame > last[sequence][0]:
            last[sequence] = (frame, index)
    last_index = np.array(sorted(index for _, index in last.values()))
    # A fixed stratified draw: the same share of every class, the same images every run.
    rng = np.random.default_rng(12345)
    labels = full.labels[last_index]
    share = SMALL_SIZE / len(last_index)
    small_index = np.sort(
        np.concatenate(
            [
                rng.choice(
                    last_index[labels == label],
                    round(share * np.count_nonzero(labels == label)),
                    replace=False,
                )
                for label in sorted(set(labels.tolist()))
            ]
        )
    )
    names = {"all": Path(report["dataset"]).parent.name}
    home = Path(env["FER_HOME"])
    for name, index in (("last", last_index), ("small", small_index)):
        view = PreparedDataset(
            crops=full.crops[index],
            labels=full.labels[index],
            subjects=full.subjects[index],
            paths=full.paths[index],
            meta={**full.meta, "view": name},
        )
        folder = home / "datasets" / f"ck48view-{name}"
        save_dataset(view, folder)
        names[name] = folder.name
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="the CK+48 folder")
    parser.add_argument(
        "--recipe", action="append", required=True, help="NAME=CROSSVAL OPTIONS (repeatable)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--views", default="last-random,last-subject,small-random")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--home", type=Path, default=Path("/tmp/fercli-devviews"))
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON-lines results file (default: HOME/results.jsonl)",
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--preprocess",
        default="",
        help="options for fer preprocess (e.g. '--equalization midpoint'); "
        "use a --home of its own for each",
    )
    options = parser.parse_args()

    env = dict(os.environ, FER_HOME=str(options.home))
    results_path = options.results or options.home / "results.jsonl"
    options.home.mkdir(parents=True, exist_ok=True)
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["options"], row["view"], row["seed"], row.get("folds", 10))] = row
    views = make_views(options.dataset, env, shlex.split(options.preprocess))
    recipes = [item.split("=", 1) for item in options.recipe]
    seeds = [int(seed) for seed in options.seeds.split(",")]
    chosen = options.views.split(",")
    # Seed by seed, so that a partial run already compares every recipe on every view.
    for seed in seeds:
        for view in chosen:
            data, group = VIEWS[view]
            for name, extra in recipes:
                key = (extra.strip(), view, seed, options.folds)
                if key in done:
                    continue
                started = time.perf_counter()
                arguments = [
                    "crossval",
                    views[data],
                    "--folds",
                    str(options.folds),
                    "--group",
                    group,
                    "--seed",
                    str(seed),
                    *shlex.split(extra),
                ]
                if options.workers:
                    arguments += ["--workers", str(options.workers)]
                report = run_json(arguments, env)
                row = {
                    "recipe": name,
                    "options": extra.strip(),
                    "view": view,
                    "seed": seed,
                    "folds": options.folds,
                    "mean_accuracy": report["mean_accuracy"],
                    "std_folds": report["std_accuracy"],
                    "macro_f1": report["macro_f1"],
                    "images": report["dataset"]["images"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
                done[key] = row
                with results_path.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(
                    f"{name:<24} {view:<13} seed {seed}: {row['mean_accuracy']:.2%} "
                    f"(macro-F1 {row['macro_f1']:.3f}) in {row['seconds']:.0f} s",
                    flush=True,
                )
    summarise(
        [row for row in done.values() if row["options"] in {extra.strip() for _, extra in recipes}],
        chosen,
    )


def summarise(rows: list[dict], views: list[str]) -> None:
    """Per recipe and view: mean over seeds +/- standard deviation over seeds."""
    print(
        "\nrecipe".ljust(26)
        + "".join(f"{view:>22}" for view in views)
        + f"{'mean of views':>16}{'s/run':>8}"
    )
    by_recipe: dict[str, list[dict]] = {}
    for row in rows:
        by_recipe.setdefault(row["options"] or "(defaults)", []).append(row)
    for options, items in by_recipe.items():
        cells, means = [], []
        for view in views:
            values = [row["mean_accuracy"] for row in items if row["view"] == view]
            if not values:
                cells.append(f"{'-':>22}")
                continue
            mean = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            means.append(mean)
            cells.append(f"{mean:>12.2%} +/- {spread:.2%} ({len(values)})".rjust(22))
        seconds = statistics.fmean(row["seconds"] for row in items)
        overall = f"{statistics.fmean(means):.2%}" if len(means) == len(views) else "-"
        print(f"{options[:25]:<25}" + "".join(cells) + f"{overall:>16}{seconds:>8.0f}")


if __name__ == "__main__":
    main()
