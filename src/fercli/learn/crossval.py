"""Honest k-fold cross-validation: folds (random, by subject, or leave-one-dataset-out), the
folds trained on an engine (fercli.learn.engines: worker processes or Ray) and the report
assembled from their predictions; its files are written by fercli.learn.crossval_files.

Inside a fold everything learned from data comes from its training part alone: the z-score
statistics, the augmented images, the network (fercli.learn.fitting.fit).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fercli.core.config import TrainConfig
from fercli.core.events import Event, Progress
from fercli.core.interrupts import Interrupts
from fercli.core.recipes import recipe_differences, recipe_dropped
from fercli.data.prepared import PreparedDataset
from fercli.learn.folds import FoldOutcome, FoldResult, FoldTask, make_folds
from fercli.learn.reports import CrossvalReport, CrossvalRun
from fercli.learn.selection import Selection, select_classes, selection_fingerprint
from fercli.learn.training import checked_start, starting_notes, validation_data
from fercli.learn.where import WhereMaps, crossval_where


def per_dataset_figures(
    selection: Selection,
    outcomes: dict[int, FoldOutcome],
    fold_results: list[FoldResult],
    complete: bool,
) -> dict[str, dict]:
    """Several datasets combined: each dataset's test images' accuracy (pooled over the folds,
    and the mean and spread of its folds), its confusion matrix and its class counts; and each
    fold's figures per dataset (set on fold_results). {} for a single dataset. A single mean
    hides that one dataset can carry the other. Accuracies are None unless every fold finished."""
    origins = selection.origins
    if origins is None:
        return {}
    tallies = _dataset_tallies(selection, origins)
    for fold in fold_results:
        outcome = outcomes[fold.fold - 1]
        if not outcome.diverged:
            _tally_fold(selection, origins, outcome, fold, tallies)
    return {name: _dataset_figures(tally, complete) for name, tally in tallies.items()}


def _dataset_tallies(selection: Selection, origins: np.ndarray) -> dict[str, dict]:
    """Per dataset, in the order they first appear: its image and class counts, and empty
    tallies of its test results (fold accuracies, hits, images tested, confusion matrix)."""
    count = len(selection.labels)
    tallies: dict[str, dict] = {}
    for name in dict.fromkeys(origins.tolist()):
        mine = origins == name
        labels = selection.targets[mine]
        tallies[name] = {
            "images": int(mine.sum()),
            "classes": {
                label: int(np.count_nonzero(labels == i))
                for i, label in enumerate(selection.labels)
                if np.any(labels == i)
            },
            "fold_accuracies": [],
            "hits": 0,
            "tested": 0,
            "confusion": np.zeros((count, count), np.int64),
        }
    return tallies


def _tally_fold(
    selection: Selection,
    origins: np.ndarray,
    outcome: FoldOutcome,
    fold: FoldResult,
    tallies: dict[str, dict],
) -> None:
    """Add a finished fold's test predictions to each dataset's tallies, and set the fold's own
    figures per dataset (fold.per_dataset) for the datasets in its test part."""
    test_index = outcome.test_index
    guesses = outcome.predicted
    for name, tally in tallies.items():
        mine = origins[test_index] == name
        if not mine.any():
            continue
        truth = selection.targets[test_index][mine]
        hits = guesses[mine] == truth
        np.add.at(tally["confusion"], (truth, guesses[mine]), 1)
        tally["hits"] += int(hits.sum())
        tally["tested"] += int(mine.sum())
        tally["fold_accuracies"].append(float(hits.mean()))
        fold.per_dataset[name] = {"images": int(mine.sum()), "accuracy": float(hits.mean())}


def _dataset_figures(tally: dict, complete: bool) -> dict:
    """A dataset's figures for the report from its tallies; its accuracies are None unless
    every fold finished (complete) and some of its images were tested."""
    accuracies = np.array(tally["fold_accuracies"])
    known = complete and tally["tested"] > 0
    return {
        "images": tally["images"],
        "classes": tally["classes"],
        "tested": tally["tested"],
        "accuracy": tally["hits"] / tally["tested"] if known else None,
        "mean_accuracy": float(accuracies.mean()) if known else None,
        "std_accuracy": float(accuracies.std()) if known else None,
        "folds": len(accuracies),
        "confusion_matrix": tally["confusion"].tolist(),
    }


def protocol_warnings(
    selection: Selection, group: str, config: TrainConfig | None = None
) -> list[str]:
    """What a reader must know to judge the numbers of this protocol."""
    origins = selection.origins
    if group == "dataset" and origins is not None:  # (make_folds refuses it without origins)
        return _left_out_warnings(selection, origins, config)
    if group == "random":
        return _random_fold_warnings(selection)
    return []


def _left_out_warnings(
    selection: Selection, origins: np.ndarray, config: TrainConfig | None
) -> list[str]:
    """Leave-one-dataset-out: what it measures, the classes a left-out dataset has and no other
    (its network cannot predict them), and the transductive statistics of --normalisation
    per-dataset."""
    names = list(dict.fromkeys(origins.tolist()))
    notes = [
        f"leave-one-dataset-out: each of {', '.join(names)} is tested by a network trained on "
        "the other datasets only: new people, and whatever else differs between the datasets "
        "(camera, lighting, posing)"
    ]
    for name in names:
        unseen = _classes_only_in(selection, origins, name)
        if unseen:
            notes.append(
                f"{name} left out: no other dataset has {', '.join(unseen)}, so its network "
                "cannot predict that class and its images of it count as errors"
            )
    if config is not None and config.normalisation == "per-dataset":
        notes.append(
            "--normalisation per-dataset: a left-out dataset's z-score statistics come from "
            "its own test images (no labels), which is transductive: the network saw none of "
            "its images, but its statistics assume a batch of them at hand"
        )
    return notes


def _classes_only_in(selection: Selection, origins: np.ndarray, name: str) -> list[str]:
    """The classes that dataset name has and none of the others has, in label order."""
    others = set(selection.targets[origins != name].tolist())
    mine = set(selection.targets[origins == name].tolist())
    return [selection.labels[target] for target in sorted(mine - others)]


def _random_fold_warnings(selection: Selection) -> list[str]:
    """Random folds: the same people on both sides of the folds, and near-duplicate frames of
    one CK+ sequence in different folds."""
    if selection.has_subjects:
        people = len(set(selection.subjects.tolist()))
        notes = [
            f"random folds: the same people ({people} subjects) sit on both sides of every "
            "fold, so this measures recognition of people the model has seen; --group subject "
            "measures new people"
        ]
    else:
        notes = [
            "random folds on images whose subjects are unknown: the same people may sit on "
            "both sides of every fold, which flatters the accuracy"
        ]
    if _has_sequence_frames(selection.paths):
        notes.append(
            "several frames of one CK+ sequence are near-duplicates and fall into different folds"
        )
    return notes


def _has_sequence_frames(paths: np.ndarray) -> bool:
    """Whether several images are frames of one CK+ sequence (files named S005_001_...)."""
    names = [Path(path).name for path in paths.tolist()]
    sequences = [
        name.rsplit("_", 1)[0] for name in names if name.count("_") >= 2 and name.startswith("S")
    ]
    return bool(sequences) and len(set(sequences)) < len(sequences)


def cross_validate(
    dataset: PreparedDataset,
    config: TrainConfig,
    folds: int = 10,
    group: str = "random",
    workers: int | None = None,
    progress: Progress | None = None,
    engine=None,
    *,
    save_model: bool = True,
    interrupts: Interrupts | None = None,
) -> CrossvalRun:
    """K-fold cross-validation: the run, with its report. Ctrl-C while the folds train stops
    them and returns the folds finished so far (report.interrupted); once every fold has
    finished, a Ctrl-C is only remembered (interrupts.received) and leaves out where.png.

    engine: where the folds train (fercli.learn.engines); default a LocalEngine of workers
    processes.
    save_model: whether the caller will save the ensemble model (run.model_refusal says).
    interrupts: the caller's, when it writes the files after (see core.interrupts).
    """
    with contextlib.ExitStack() as stack:
        if interrupts is None:
            interrupts = stack.enter_context(Interrupts())
        return _cross_validate(
            dataset, config, folds, group, workers, progress, engine, save_model, interrupts
        )


def _cross_validate(
    dataset: PreparedDataset,
    config: TrainConfig,
    folds: int,
    group: str,
    workers: int | None,
    progress: Progress | None,
    engine,
    save_model: bool,
    interrupts: Interrupts,
) -> CrossvalRun:
    from fercli.learn.engines import LocalEngine

    started = time.perf_counter()
    selection = select_classes(dataset, config.classes)
    config = checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    splits = make_folds(selection, folds, group, config.seed)
    if progress:
        progress(Event("start", folds=len(splits), epochs=config.epochs, config=config))
    engine = engine or LocalEngine(workers)
    validation = validation_data(config, dataset, selection)
    tasks = [
        FoldTask(index, config, index, train, test, selection.origins, validation)
        for index, (train, test) in enumerate(splits)
    ]
    outcomes = train_folds(engine, selection, tasks, interrupts, progress)
    interrupts.hold()  # what has finished is kept, whenever a Ctrl-C comes from now on
    report = assemble_crossval(
        dataset,
        selection,
        splits,
        config,
        group,
        outcomes,
        engine.describe(len(tasks)),
        time.perf_counter() - started,
        interrupted=len(outcomes) < len(tasks),
    )
    run = CrossvalRun(dataset, config, selection, splits, outcomes, report, save_model)
    if any(outcome.export is not None for outcome in outcomes.values()):
        report.where = _where_unless_interrupted(run, interrupts, progress)
    return run


def train_folds(
    engine,
    selection: Selection,
    tasks: list[FoldTask],
    interrupts: Interrupts,
    progress: Progress | None,
) -> dict[int, FoldOutcome]:
    """Every task's FoldOutcome, by fold, as the engine trains them; those finished so far
    when Ctrl-C stops it (interrupts.received). Once the last fold is in, a Ctrl-C is held
    back: it would only stop the engine's clearing up."""
    outcomes: dict[int, FoldOutcome] = {}
    try:
        with contextlib.closing(
            engine.run(selection.crops, selection.targets, len(selection.labels), tasks, progress)
        ) as finished:
            for outcome in finished:
                outcomes[outcome.fold] = outcome
                if len(outcomes) == len(tasks):
                    interrupts.hold()
                if progress:
                    progress(
                        Event(
                            "fold", fold=outcome.fold, folds=len(tasks), accuracy=outcome.accuracy
                        )
                    )
    except KeyboardInterrupt:
        interrupts.received = True
    return outcomes


def _where_unless_interrupted(
    run: CrossvalRun, interrupts: Interrupts, progress: Progress | None
) -> WhereMaps | None:
    """where.png's maps of a run; None, said in its warnings, when a Ctrl-C came before or
    while they were made (they take seconds, and can be left out)."""
    try:
        with interrupts.allowed():
            if progress:
                progress(Event("where"))
            return crossval_where(run.selection, run.outcomes, run.config.test_time_flip)
    except KeyboardInterrupt:
        interrupts.received = True
        run.report.warnings.append("where.png was not drawn: interrupted (Ctrl-C)")
        return None


def assemble_crossval(
    dataset: PreparedDataset,
    selection: Selection,
    splits: list[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    group: str,
    outcomes: dict[int, FoldOutcome],
    engine: dict,
    seconds: float,
    interrupted: bool = False,
) -> CrossvalReport:
    """The report of a cross-validation from the outcomes of its finished folds (by 0-based
    fold number)."""
    fold_results, true, predicted, rows = [], [], [], []
    for index in sorted(outcomes):
        outcome, test_index = outcomes[index], splits[index][1]
        fold_results.append(_fold_result(index, outcome, splits[index], selection, group))
        if outcome.probabilities is None:
            continue
        true.append(selection.targets[test_index])
        predicted.append(outcome.predicted)
        rows.extend(prediction_rows(selection, outcome))
    true_all = np.concatenate(true) if true else np.zeros(0, int)
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, int)
    matrix, per_class, f1 = score_predictions(true_all, predicted_all, selection.labels)
    # Figures over every fold, or none: the folds left after a divergence are no protocol's.
    complete = bool(true) and len(true) == len(outcomes)
    return CrossvalReport(
        dataset={
            **dataset_summary(dataset, selection),
            **({"datasets": dataset.meta["datasets"]} if "datasets" in dataset.meta else {}),
        },
        protocol=_protocol(dataset, selection, len(splits), config, group, engine),
        labels=selection.labels,
        folds=fold_results,
        confusion=np.asarray(matrix),
        per_class=per_class,
        macro_f1=float(np.mean(f1)) if complete else math.nan,
        pooled_accuracy=float(np.mean(true_all == predicted_all)) if complete else math.nan,
        warnings=(
            getattr(dataset, "notes", [])
            + protocol_warnings(selection, group, config)
            + starting_notes(config)
            + split_notes(dataset)
            + time_limit_warnings(config, fold_results)
        ),
        seconds=seconds,
        interrupted=interrupted,
        planned_folds=len(splits),
        predictions=rows,
        per_dataset=per_dataset_figures(selection, outcomes, fold_results, complete),
    )


def time_limit_warnings(config: TrainConfig, folds: list[FoldResult]) -> list[str]:
    """What --time-limit cut: the folds trained for fewer epochs than config.epochs."""
    cut = [fold for fold in folds if 0 < fold.epochs < config.epochs and not fold.diverged]
    if not cut:
        return []
    counts = sorted({fold.epochs for fold in cut})
    spread = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return [
        f"--time-limit {config.time_limit:g} minutes: {len(cut)} of {len(folds)} folds trained "
        f"{spread} of {config.epochs} epochs; --time-limit 0 trains them all"
    ]


def _fold_result(
    index: int,
    outcome: FoldOutcome,
    split: tuple[np.ndarray, np.ndarray],
    selection: Selection,
    group: str,
) -> FoldResult:
    """What the report says of one finished fold (index: 0-based; split: its train and test
    indices): its accuracy, sizes, test subjects (grouped by subject) and time."""
    train_index, test_index = split
    return FoldResult(
        fold=index + 1,
        # None: the fold diverged, and has no result (argmax of NaN is class 0, which
        # would pass for predictions).
        accuracy=outcome.accuracy,
        train_size=len(train_index),
        test_size=len(test_index),
        test_subjects=sorted(set(selection.subjects[test_index].tolist()) - {""})
        if group == "subject"
        else [],
        seconds=round(float(outcome.seconds), 2),
        diverged=outcome.diverged,
        epochs=int(outcome.epochs),
    )


def _protocol(
    dataset: PreparedDataset,
    selection: Selection,
    folds: int,
    config: TrainConfig,
    group: str,
    engine: dict,
) -> dict:
    """The report's protocol: the folds and their grouping, the classes, the engine and its
    workers, the training settings and how they differ from their recipe, the preprocessing."""
    return {
        "folds": folds,
        "group": group,
        "classes": selection.labels,
        "workers": engine.get("workers"),
        "engine": engine,
        "training": config.to_dict(),
        "recipe": config.recipe,
        "differs_from_recipe": recipe_differences(config),
        # The recipe's values a setting given turned off (robust's jitter with augment off).
        **({"dropped_from_recipe": dropped} if (dropped := recipe_dropped(config)) else {}),
        "preprocess": dataset.meta.get("preprocess"),
    }


def prediction_rows(selection: Selection, outcome: FoldOutcome) -> list[dict]:
    """predictions.csv's rows of a fold: each test image's path, fold, (dataset,) true and
    predicted class and probabilities."""
    labels, test_index, probabilities = selection.labels, outcome.test_index, outcome.probabilities
    if probabilities is None:
        return []  # a diverged fold predicted nothing
    return [
        {
            "path": str(selection.paths[i]),
            "fold": outcome.fold + 1,
            **({"dataset": str(selection.origins[i])} if selection.origins is not None else {}),
            "true": labels[t],
            "predicted": labels[g],
            **{
                f"p_{label}": round(float(p), 6)
                for label, p in zip(labels, image_probabilities, strict=True)
            },
        }
        for i, t, g, image_probabilities in zip(
            test_index, selection.targets[test_index], outcome.predicted, probabilities, strict=True
        )
    ]


def dataset_summary(
    dataset: PreparedDataset, selection: Selection, name: str | None = None
) -> dict:
    """What a report says of the data it ran on: name, where it is, its layout and source,
    the images and subjects taking part and their fingerprint."""
    return {
        "name": name or dataset.name,
        "path": str(dataset.location),
        "layout": dataset.meta.get("layout"),
        "source": dataset.meta.get("source"),
        "images": len(selection.crops),
        "subjects": len(set(selection.subjects.tolist()) - {""}),
        "fingerprint": selection_fingerprint(selection),
    }


def score_predictions(
    true: np.ndarray, predicted: np.ndarray, labels: list[str]
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Confusion matrix (rows true, columns predicted), per-class precision/recall/F1/support
    and the F1 of each class, for integer targets into labels (crossval and evaluate)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    count = len(labels)
    if len(true) == 0:
        matrix, (precision, recall, f1, support) = (
            np.zeros((count, count), int),
            (np.zeros(count),) * 4,
        )
    else:
        import warnings

        with warnings.catch_warnings():
            # One class only (an evaluation on one shared class): sklearn warns though labels are
            # given.
            warnings.simplefilter("ignore", UserWarning)
            matrix = confusion_matrix(true, predicted, labels=range(count))
        precision, recall, f1, support = precision_recall_fscore_support(
            true, predicted, labels=range(count), zero_division=0
        )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return np.asarray(matrix), per_class, np.asarray(f1)


def split_notes(dataset: PreparedDataset) -> list[str]:
    """What crossval says of a dataset's predefined splits (FER2013's Usage): it ignores them."""
    splits = getattr(dataset, "splits", None)
    names = sorted(set(splits.tolist()) - {""}) if splits is not None else []
    if not names:
        return []
    return [
        f"the dataset's predefined splits ({', '.join(names)}) are ignored: the folds are drawn "
        "from all its "
        "images; fer train --split and fer evaluate --split use them"
    ]
