"""Sweeps: every recipe of a grid cross-validated with several seeds on identical folds,
ranked, and each compared with the base recipe on the same (seed, fold) pairs.

A grid file (TOML):

    seeds = [0, 1, 2]          # each seed: its own folds, the same for every recipe
    folds = 10
    group = "subject"          # or "random"
    classes = []               # optional: the classes to keep (default all)

    [base]                     # the reference recipe: TrainConfig settings
    epochs = 100

    [vary]                     # every combination is a recipe
    variant = ["paper", "batchnorm"]
    flip_tta = [false, true]

Every finished fold is stored at once (atomically) under the sweep's folder, whose name is
derived from the data and the grid: running the same sweep again computes only the folds
that are missing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fercli.core.config import fingerprint
from fercli.core.errors import TrainingError
from fercli.core.events import Event, Progress
from fercli.core.store import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    make_dir,
    runs_dir,
    slug,
)
from fercli.data.prepared import PreparedDataset
from fercli.learn.folds import FoldOutcome, FoldTask, fold_accuracy
from fercli.learn.grid import METHOD, Grid, describe_base, jsonable, recipes
from fercli.learn.selection import Selection

# A sweep member (recipe index, seed) -> its finished folds' outcomes, by 0-based fold.
Outcomes = dict[tuple[int, int], dict[int, FoldOutcome]]

# --- statistics ---------------------------------------------------------------------------


def corrected_interval(
    values: np.ndarray, test_train_ratio: float, confidence: float = 0.95
) -> dict:
    """Mean of per-(seed, fold) values with the corrected resampled t interval (Nadeau &
    Bengio 2003) for r repetitions of k-fold CV: n = k*r values, variance s^2 (ddof 1) times
    (1/n + n_test/n_train), t with n-1 degrees of freedom."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64).ravel()
    count = len(values)
    mean = float(values.mean())
    if count < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "p": math.nan, "df": 0}
    variance = float(values.var(ddof=1)) * (1 / count + test_train_ratio)
    quantile = float(stats.t.ppf(0.5 + confidence / 2, count - 1))
    if variance == 0:
        return {
            "mean": mean,
            "low": mean,
            "high": mean,
            "p": 1.0 if mean == 0 else 0.0,
            "df": count - 1,
        }
    half = quantile * math.sqrt(variance)
    t_value = mean / math.sqrt(variance)
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "p": float(2 * stats.t.sf(abs(t_value), count - 1)),
        "df": count - 1,
    }


# --- running ------------------------------------------------------------------------------


@dataclass
class RecipeResult:
    rank: int
    name: str
    changes: dict
    accuracy: float  # mean over seeds of the mean fold accuracy
    accuracy_interval: tuple[float, float]
    spread: float  # standard deviation (ddof 1) of the per-seed mean accuracies
    seed_means: list[float]
    macro_f1: float  # mean over seeds
    difference: float  # mean paired difference to the base
    difference_interval: tuple[float, float]
    p_value: float
    seconds: float  # training time of all its folds (summed over workers)
    fold_accuracies: dict  # seed -> list of fold accuracies
    reports: dict  # seed -> folder of the member crossval's report

    @property
    def is_base(self) -> bool:
        return not self.changes


@dataclass
class SweepReport:
    folder: Path
    grid: Grid
    dataset: dict
    engine: dict
    recipes: list[RecipeResult]
    planned_folds: int
    stored_folds: int  # found done at the start
    trained_folds: int  # trained in this run
    seconds: float
    interrupted: bool = False
    files: dict = field(default_factory=dict)
    test_train_ratio: float = math.nan

    @property
    def base(self) -> str:
        """What the base recipe, the reference of "vs base", is: grid.describe_base."""
        return describe_base(self.grid)

    def to_json(self) -> dict:
        def number(value):
            return None if isinstance(value, float) and math.isnan(value) else value

        return {
            "folder": str(self.folder),
            "grid": self.grid.to_json(),
            "base": self.base,
            "dataset": self.dataset,
            "engine": self.engine,
            "method": METHOD,
            "spread_note": "standard deviation (ddof=1) of the per-seed mean fold accuracies",
            "test_train_ratio": number(self.test_train_ratio),
            "recipes": [
                {
                    "rank": item.rank,
                    "recipe": item.name,
                    "changes": jsonable(item.changes),
                    "accuracy": item.accuracy,
                    "accuracy_interval": [number(v) for v in item.accuracy_interval],
                    "spread": number(item.spread),
                    "seed_means": item.seed_means,
                    "macro_f1": item.macro_f1,
                    "difference_to_base": item.difference,
                    "difference_interval": [number(v) for v in item.difference_interval],
                    "p_value": number(item.p_value),
                    "seconds": round(item.seconds, 2),
                    "fold_accuracies": {
                        str(seed): values for seed, values in item.fold_accuracies.items()
                    },
                    "reports": {str(seed): str(path) for seed, path in item.reports.items()},
                }
                for item in self.recipes
            ],
            "planned_folds": self.planned_folds,
            "stored_folds": self.stored_folds,
            "trained_folds": self.trained_folds,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
        }


def sweep_folder(dataset: PreparedDataset, data_fingerprint: str, grid: Grid) -> Path:
    """The folder of a sweep: the same data and grid always give the same folder."""
    from fercli.core.version import VERSION as __version__

    identity = fingerprint(
        {"data": data_fingerprint, "grid": grid.to_json(), "fercli": __version__}
    )
    return runs_dir() / f"sweep-{slug(dataset.name)}-{identity[:12]}"


def _member_name(recipe_index: int, seed: int) -> str:
    return f"recipe{recipe_index + 1}-seed{seed}"


def _fold_file(folder: Path, member: str, fold: int) -> Path:
    return folder / "folds" / member / f"fold{fold + 1:02d}.npz"


def _load_fold(
    path: Path, key: tuple[int, int], fold: int, test_index: np.ndarray, targets: np.ndarray
) -> FoldOutcome | None:
    """A stored fold's outcome (no network: a sweep keeps none), or None if there is none or
    it is for other test images."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not np.array_equal(archive["test_index"], test_index):
                return None
            probabilities = archive["probabilities"]
            seconds = float(archive["seconds"])
            epochs = int(archive["epochs"]) if "epochs" in archive.files else 0
    except Exception:  # truncated or damaged (BadZipFile, a bad CRC): trained again
        return None
    return FoldOutcome(
        key=key,
        fold=fold,
        test_index=test_index,
        probabilities=probabilities,
        accuracy=fold_accuracy(probabilities, targets[test_index]),
        diverged=None,
        epochs=epochs,
        seconds=seconds,
    )


def _store_fold(path: Path, outcome: FoldOutcome) -> None:
    # Any: numpy's stubs match the type of a **dict's values against savez's allow_pickle.
    arrays: dict[str, Any] = {
        "probabilities": np.asarray(outcome.probabilities),
        "test_index": outcome.test_index,
        "seconds": np.float64(outcome.seconds),
        "epochs": np.int64(outcome.epochs),
    }
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def run_sweep(
    dataset: PreparedDataset, grid: Grid, engine=None, progress: Progress | None = None
) -> SweepReport:
    """Cross-validate every recipe of grid with every seed, resuming from stored folds.

    engine: a fercli.learn.engines engine (default: this machine's cores). progress receives a
    "start" event (done: the folds found stored), then a "fold" event (done, total, recipe,
    seed, fold, accuracy) as each fold finishes, and the engine's "epoch" events. Ctrl-C:
    returns with interrupted set and no ranking; the finished folds are stored.
    """
    from fercli.learn.engines import LocalEngine
    from fercli.learn.folds import make_folds
    from fercli.learn.selection import select_classes, selection_fingerprint

    started = time.perf_counter()
    engine = engine or LocalEngine()
    selection = select_classes(dataset, grid.classes)
    data_id = selection_fingerprint(selection)
    plan, folder, held = _sweep_plan(grid, dataset, selection, data_id)
    splits = {seed: make_folds(selection, grid.folds, grid.group, seed) for seed in grid.seeds}
    results, tasks = _stored_and_missing(folder, plan, grid.seeds, splits, selection.targets)
    tasks = [replace(task, validation=held[task.config.validation]) for task in tasks]
    planned = len(results) * grid.folds
    stored_count = planned - len(tasks)
    if progress:
        progress(Event("start", done=stored_count, total=planned))
    trained, interrupted = _train_missing(
        folder, plan, selection, splits, tasks, results, engine, (stored_count, planned), progress
    )
    report = SweepReport(
        folder=folder,
        grid=grid,
        dataset={
            "name": dataset.name,
            "images": len(selection.crops),
            "classes": selection.labels,
            "fingerprint": data_id,
        },
        engine=engine.describe(len(tasks)),
        recipes=[],
        planned_folds=planned,
        stored_folds=stored_count,
        trained_folds=trained,
        seconds=0.0,
        interrupted=interrupted,
    )
    if not interrupted:
        report.recipes, report.test_train_ratio = _rank(
            dataset, selection, plan, grid, splits, results, report
        )
    report.seconds = time.perf_counter() - started
    if not interrupted:
        report.files = save_sweep(report)
    return report


def _sweep_plan(
    grid: Grid, dataset: PreparedDataset, selection: Selection, data_id: str
) -> tuple[list, Path, dict]:
    """grid's recipes, checked first (settings, starting models, --validation), so that a grid
    refused leaves no sweep folder; the folder, with its grid.json; validation_data's, by value."""
    from fercli.learn.training import checked_start, validation_data

    plan = recipes(grid)
    starts = {(item.config.init_model, item.config.variant): item.config for item in plan}
    for config in starts.values():
        checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    validations = {one.config.validation: one.config for one in plan}  # each dataset once
    held = {key: validation_data(config, dataset, selection) for key, config in validations.items()}
    folder = make_dir(sweep_folder(dataset, data_id, grid))
    atomic_write_json(
        folder / "grid.json",
        {
            "grid": grid.to_json(),
            "source": grid.source,
            "recipes": [item.name for item in plan],
            "dataset": dataset.name,
            "data_fingerprint": data_id,
        },
    )
    return plan, folder, held


def _stored_and_missing(
    folder: Path, plan: list, seeds: tuple[int, ...], splits: dict, targets: np.ndarray
) -> tuple[Outcomes, list[FoldTask]]:
    """Each member's (recipe index, seed) folds found stored, and a FoldTask for every fold
    still to train."""
    members = [(index, seed) for seed in seeds for index in range(len(plan))]
    results: Outcomes = {member: {} for member in members}
    tasks = []
    for recipe_index, seed in members:
        config = replace(plan[recipe_index].config, seed=seed)
        for fold, (train_index, test_index) in enumerate(splits[seed]):
            stored = _load_fold(
                _fold_file(folder, _member_name(recipe_index, seed), fold),
                (recipe_index, seed),
                fold,
                test_index,
                targets,
            )
            if stored is not None:
                results[(recipe_index, seed)][fold] = stored
            else:
                tasks.append(FoldTask((recipe_index, seed), config, fold, train_index, test_index))
    return results, tasks


def _train_missing(
    folder: Path,
    plan: list,
    selection: Selection,
    splits: dict,
    tasks: list[FoldTask],
    results: Outcomes,
    engine,
    counts: tuple[int, int],
    progress: Progress | None,
) -> tuple[int, bool]:
    """Train the missing folds on the engine, storing each as it finishes; (folds trained,
    whether Ctrl-C stopped it). TrainingError when a fold diverged."""
    done, planned = counts
    trained = 0
    try:
        with contextlib.closing(
            engine.run(selection.crops, selection.targets, len(selection.labels), tasks, progress)
        ) as finished:
            for outcome in finished:
                recipe_index, seed = outcome.key
                fold = outcome.fold
                if outcome.diverged:
                    # No number to rank: the recipe's training is unusable as it stands.
                    raise TrainingError(
                        f"recipe {plan[recipe_index].name}, seed {seed}, fold {fold + 1}: training "
                        f"diverged ({outcome.diverged}); change that recipe (a smaller lr)"
                    )
                _store_fold(_fold_file(folder, _member_name(recipe_index, seed), fold), outcome)
                # The ranking needs the predictions only: the network would fill the memory.
                results[(recipe_index, seed)][fold] = replace(outcome, export=None)
                trained += 1
                if progress:
                    progress(
                        Event(
                            "fold",
                            done=done + trained,
                            total=planned,
                            recipe=plan[recipe_index].name,
                            seed=seed,
                            fold=fold,
                            accuracy=outcome.accuracy,
                            key=(recipe_index, seed),
                        )
                    )
    except KeyboardInterrupt:
        return trained, True
    return trained, False


def _rank(
    dataset: PreparedDataset,
    selection: Selection,
    plan: list,
    grid: Grid,
    splits: dict,
    results: Outcomes,
    report: SweepReport,
) -> tuple[list[RecipeResult], float]:
    """Every recipe's figures over its seeds (each seed's crossval report saved in its own
    folder), best first, with its paired difference to the base recipe; and the test/train
    size ratio the corrected intervals use."""
    train_sizes = [len(train) for seed in grid.seeds for train, _ in splits[seed]]
    test_sizes = [len(test) for seed in grid.seeds for _, test in splits[seed]]
    ratio = float(np.mean(test_sizes) / np.mean(train_sizes))
    accuracies: dict[int, np.ndarray] = {}
    summaries = []
    for recipe_index, recipe in enumerate(plan):
        per_seed, f1s, reports, seconds = _recipe_reports(
            dataset, selection, recipe_index, recipe, grid, splits, results, report
        )
        accuracies[recipe_index] = np.array([per_seed[seed] for seed in grid.seeds])
        summaries.append((recipe, per_seed, f1s, reports, seconds))
    ranked = [
        _recipe_result(index, item, accuracies, ratio) for index, item in enumerate(summaries)
    ]
    ranked.sort(key=lambda item: (-item.accuracy, item.name))
    for rank, item in enumerate(ranked, start=1):
        item.rank = rank
    return ranked, ratio


def _recipe_reports(
    dataset: PreparedDataset,
    selection: Selection,
    recipe_index: int,
    recipe,
    grid: Grid,
    splits: dict,
    results: Outcomes,
    report: SweepReport,
) -> tuple[dict[int, list], list[float], dict[int, Path], float]:
    """One recipe's crossval report for each seed, saved in its member's folder: (each seed's
    fold accuracies, each seed's macro F1, each seed's report folder, the folds' seconds)."""
    from fercli.learn.crossval import assemble_crossval
    from fercli.learn.crossval_files import save_crossval

    per_seed, f1s, reports, seconds = {}, [], {}, 0.0
    for seed in grid.seeds:
        member_results = results[(recipe_index, seed)]
        config = replace(recipe.config, seed=seed)
        member_seconds = sum(outcome.seconds for outcome in member_results.values())
        crossval = assemble_crossval(
            dataset,
            selection,
            splits[seed],
            config,
            grid.group,
            member_results,
            report.engine,
            member_seconds,
        )
        member_folder = report.folder / _member_name(recipe_index, seed)
        save_crossval(crossval, member_folder)
        per_seed[seed] = [fold.accuracy for fold in crossval.folds]
        f1s.append(crossval.macro_f1)
        reports[seed] = member_folder
        seconds += member_seconds
    return per_seed, f1s, reports, seconds


def _recipe_result(index: int, summary: tuple, accuracies: dict, ratio: float) -> RecipeResult:
    """A recipe's figures, unranked, from its summary (recipe, fold accuracies, macro F1s, report
    folders, seconds) and every recipe's (seeds, folds) accuracies (the first is the base)."""
    recipe, per_seed, f1s, reports, seconds = summary
    values = accuracies[index]
    seed_means = values.mean(axis=1)
    own = corrected_interval(values, ratio)
    paired = corrected_interval(values - accuracies[0], ratio)
    return RecipeResult(
        rank=0,
        name=recipe.name,
        changes=recipe.changes,
        accuracy=float(seed_means.mean()),
        # An accuracy lies in [0, 1] and a difference of two in [-1, 1], whatever the
        # t interval says on few, spread-out values.
        accuracy_interval=_clipped(own["low"], own["high"], 0.0),
        spread=float(seed_means.std(ddof=1)) if len(seed_means) > 1 else math.nan,
        seed_means=[float(value) for value in seed_means],
        macro_f1=float(np.mean(f1s)),
        difference=paired["mean"],
        difference_interval=_clipped(paired["low"], paired["high"], -1.0),
        p_value=paired["p"] if index else math.nan,
        seconds=seconds,
        fold_accuracies=per_seed,
        reports=reports,
    )


def _clipped(low: float, high: float, bottom: float) -> tuple[float, float]:
    """An interval within [bottom, 1] (NaN, when there is no interval, stays NaN)."""
    if math.isnan(low) or math.isnan(high):
        return (low, high)
    return (min(max(low, bottom), 1.0), min(max(high, bottom), 1.0))


def _cell(value: float, digits: int = 6) -> str:
    """A figure for sweep.csv: empty where there is none (one seed has no spread), never nan."""
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def save_sweep(report: SweepReport) -> dict[str, Path]:
    """Write sweep.json, sweep.csv and sweep.png into the sweep's folder."""
    from fercli.media.drawing import sweep_image

    folder = report.folder
    files = {
        "json": folder / "sweep.json",
        "csv": folder / "sweep.csv",
        "plot": folder / "sweep.png",
    }
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(
        [
            "rank",
            "recipe",
            "accuracy",
            "accuracy_low",
            "accuracy_high",
            "spread_over_seeds",
            "macro_f1",
            "difference_to_base",
            "difference_low",
            "difference_high",
            "p_value",
            "seconds",
        ]
    )
    for item in report.recipes:
        writer.writerow(
            [
                item.rank,
                item.name,
                _cell(item.accuracy),
                *(_cell(v) for v in item.accuracy_interval),
                _cell(item.spread),
                _cell(item.macro_f1),
                _cell(item.difference),
                *(_cell(v) for v in item.difference_interval),
                _cell(item.p_value),
                f"{item.seconds:.2f}",
            ]
        )
    atomic_write_text(files["csv"], text.getvalue())
    title = (
        f"{report.dataset['name']}: {len(report.grid.seeds)} "
        f"seed{'' if len(report.grid.seeds) == 1 else 's'} x {report.grid.folds} folds "
        f"({report.grid.group}); mean accuracy, 95% corrected interval"
    )
    sweep_image(
        [(item.name, item.accuracy, *item.accuracy_interval) for item in report.recipes],
        files["plot"],
        title,
    )
    payload = report.to_json()
    payload["files"] = {name: str(path) for name, path in files.items()}
    atomic_write_json(files["json"], payload)
    return files
