"""Honest k-fold cross-validation: folds (random, by subject, or leave-one-dataset-out), the
folds trained on an engine (fercli.learn.engines: worker processes or Ray) and the report
assembled from their predictions; its files are written by fercli.learn.crossval_files.

Inside a fold everything learned from data comes from its training part alone: the z-score
statistics, the augmented images, the network (fercli.learn.training.fit).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fercli.core.config import TrainConfig, recipe_differences, recipe_dropped
from fercli.core.events import Event, Progress
from fercli.data.prepared import PreparedDataset
from fercli.learn.folds import FoldResult, FoldTask, make_folds
from fercli.learn.selection import Selection, select_classes, selection_fingerprint
from fercli.learn.training import checked_start, starting_notes
from fercli.learn.where import crossval_where


@dataclass
class CrossvalReport:
    """The outcome of a cross-validation, with the protocol it followed."""

    dataset: dict
    protocol: dict
    labels: list[str]
    folds: list[FoldResult]
    confusion: np.ndarray
    per_class: dict[str, dict[str, float]]
    macro_f1: float
    pooled_accuracy: float
    warnings: list[str]
    seconds: float
    interrupted: bool = False
    planned_folds: int = 0
    predictions: list[dict] = field(default_factory=list)
    # Several datasets combined: per dataset, its test images' figures (per_dataset_figures).
    per_dataset: dict[str, dict] = field(default_factory=dict)
    # Each finished fold's fold_export and its largest |numpy runtime - Keras| on its test
    # crops, for save_crossval_model; not part of the JSON report.
    exports: list[dict] = field(default_factory=list, repr=False)
    # The files written for it (report, confusion, predictions, model), once they are.
    files: dict[str, Path] = field(default_factory=dict)
    # Each predicted class's share of the answers (evaluate), largest first.
    answer_shares: dict[str, float] = field(default_factory=dict)
    # where.png's figures (fercli.learn.where.WhereMaps), None where no network could draw them.
    where: object | None = field(default=None, repr=False)

    @property
    def accuracies(self) -> np.ndarray:
        """The accuracies of the folds whose training did not diverge."""
        return np.array(
            [fold.accuracy for fold in self.folds if fold.diverged is None], dtype=float
        )

    @property
    def diverged_folds(self) -> list[int]:
        return [fold.fold for fold in self.folds if fold.diverged is not None]

    @property
    def mean_accuracy(self) -> float:
        """NaN (null in JSON) without folds, or when a fold diverged: the rest is no protocol's
        result."""
        return float(self.accuracies.mean()) if self.folds and not self.diverged_folds else math.nan

    @property
    def std_accuracy(self) -> float:
        return float(self.accuracies.std()) if self.folds and not self.diverged_folds else math.nan

    def to_json(self) -> dict:
        """The report as standard JSON: figures that do not exist (no fold finished, or one
        diverged) are null."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "labels": self.labels,
            # per_dataset only where several datasets were combined: one dataset's report is as it
            # was.
            "folds": [
                {
                    key: value
                    for key, value in fold.__dict__.items()
                    if key != "per_dataset" or self.per_dataset
                }
                for fold in self.folds
            ],
            "mean_accuracy": number(self.mean_accuracy),
            "std_accuracy": number(self.std_accuracy),
            "std_note": "population standard deviation of the fold accuracies (ddof=0)",
            "pooled_accuracy": number(self.pooled_accuracy),
            "macro_f1": number(self.macro_f1),
            "per_class": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "confusion_note": "rows: true class, columns: predicted class, summed over folds",
            "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
            "completed_folds": len(self.folds),
            "planned_folds": self.planned_folds,
            "diverged_folds": self.diverged_folds,
            **({"answer_shares": self.answer_shares} if self.answer_shares else {}),
            **({"per_dataset": self.per_dataset} if self.per_dataset else {}),
            **({"where": self.where.to_json()} if self.where is not None else {}),
        }


def per_dataset_figures(
    selection: Selection,
    splits,
    results: dict[int, dict],
    fold_results: list[FoldResult],
    complete: bool,
) -> dict[str, dict]:
    """Several datasets combined: each dataset's test images' accuracy (pooled over the folds,
    and the mean and spread of its folds), its confusion matrix and its class counts; and each
    fold's figures per dataset (set on fold_results). {} for a single dataset. A single mean
    hides that one dataset can carry the other. Accuracies are None unless every fold finished."""
    if selection.origins is None:
        return {}
    count = len(selection.labels)
    figures: dict[str, dict] = {}
    for name in dict.fromkeys(selection.origins.tolist()):
        mine = selection.origins == name
        labels = selection.targets[mine]
        figures[name] = {
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
    for fold in fold_results:
        result = results[fold.fold - 1]
        if result["diverged"]:
            continue
        test_index = splits[fold.fold - 1][1]
        guesses = result["probabilities"].argmax(axis=1)
        for name, entry in figures.items():
            mine = selection.origins[test_index] == name
            if not mine.any():
                continue
            truth = selection.targets[test_index][mine]
            hits = guesses[mine] == truth
            np.add.at(entry["confusion"], (truth, guesses[mine]), 1)
            entry["hits"] += int(hits.sum())
            entry["tested"] += int(mine.sum())
            entry["fold_accuracies"].append(float(hits.mean()))
            fold.per_dataset[name] = {"images": int(mine.sum()), "accuracy": float(hits.mean())}
    report = {}
    for name, entry in figures.items():
        accuracies = np.array(entry["fold_accuracies"])
        known = complete and entry["tested"] > 0
        report[name] = {
            "images": entry["images"],
            "classes": entry["classes"],
            "tested": entry["tested"],
            "accuracy": entry["hits"] / entry["tested"] if known else None,
            "mean_accuracy": float(accuracies.mean()) if known else None,
            "std_accuracy": float(accuracies.std()) if known else None,
            "folds": len(accuracies),
            "confusion_matrix": entry["confusion"].tolist(),
        }
    return report


def protocol_warnings(
    selection: Selection, group: str, config: TrainConfig | None = None
) -> list[str]:
    """What a reader must know to judge the numbers of this protocol."""
    notes = []
    if group == "dataset":
        names = list(dict.fromkeys(selection.origins.tolist()))
        notes.append(
            f"leave-one-dataset-out: each of {', '.join(names)} is tested by a network trained on "
            "the "
            "other datasets only: new people, and whatever else differs between the datasets "
            "(camera, lighting, posing)"
        )
        for name in names:
            others = set(selection.targets[selection.origins != name].tolist())
            unseen = [
                selection.labels[t]
                for t in sorted(set(selection.targets[selection.origins == name].tolist()) - others)
            ]
            if unseen:
                notes.append(
                    f"{name} left out: no other dataset has {', '.join(unseen)}, so its network "
                    "cannot "
                    "predict that class and its images of it count as errors"
                )
        if config is not None and config.normalisation == "per-dataset":
            notes.append(
                "--normalisation per-dataset: a left-out dataset's z-score statistics come from "
                "its own "
                "test images (no labels), which is transductive: the network saw none of its "
                "images, "
                "but its statistics assume a batch of them at hand"
            )
        return notes
    if group == "random":
        if selection.has_subjects:
            people = len(set(selection.subjects.tolist()))
            notes.append(
                f"random folds: the same people ({people} subjects) sit on both sides of every "
                "fold, "
                "so this measures recognition of people the model has seen; --group subject "
                "measures new people"
            )
        else:
            notes.append(
                "random folds on images whose subjects are unknown: the same people may sit on "
                "both sides "
                "of every fold, which flatters the accuracy"
            )
        names = [Path(path).name for path in selection.paths.tolist()]
        sequences = [
            name.rsplit("_", 1)[0]
            for name in names
            if name.count("_") >= 2 and name.startswith("S")
        ]
        if sequences and len(set(sequences)) < len(sequences):
            notes.append(
                "several frames of one CK+ sequence are near-duplicates and fall into different "
                "folds"
            )
    return notes


def cross_validate(
    dataset: PreparedDataset,
    config: TrainConfig,
    folds: int = 10,
    group: str = "random",
    workers: int | None = None,
    progress: Progress | None = None,
    engine=None,
) -> CrossvalReport:
    """K-fold cross-validation. Ctrl-C stops it and returns the folds finished so far, with
    interrupted set.

    engine: where the folds train (fercli.engines); default a LocalEngine of workers processes.
    """
    from fercli.learn.engines import LocalEngine

    started = time.perf_counter()
    selection = select_classes(dataset, config.classes)
    config = checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    splits = make_folds(selection, folds, group, config.seed)
    if progress:
        progress(Event("start", folds=len(splits), epochs=config.epochs))
    engine = engine or LocalEngine(workers)
    tasks = [
        FoldTask(index, config, index, train, test, selection.origins)
        for index, (train, test) in enumerate(splits)
    ]
    results: dict[int, dict] = {}
    interrupted = False
    try:
        with contextlib.closing(
            engine.run(selection.crops, selection.targets, len(selection.labels), tasks, progress)
        ) as finished:
            for result in finished:
                results[result["fold"]] = result
                if progress:
                    accuracy = (
                        None if result.get("diverged") else _accuracy(result, selection, splits)
                    )
                    progress(
                        Event("fold", fold=result["fold"], folds=len(splits), accuracy=accuracy)
                    )
    except KeyboardInterrupt:
        interrupted = True
    report = assemble_crossval(
        dataset,
        selection,
        splits,
        config,
        group,
        results,
        engine.describe(len(tasks)),
        time.perf_counter() - started,
        interrupted,
    )
    report.where = crossval_where(selection, splits, results, config.test_time_flip)
    return report


def assemble_crossval(
    dataset: PreparedDataset,
    selection: Selection,
    splits: list[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    group: str,
    results: dict[int, dict],
    engine: dict,
    seconds: float,
    interrupted: bool = False,
) -> CrossvalReport:
    """The report of a cross-validation from the results of its finished folds (by 0-based
    fold number: each a dict with "probabilities" of the fold's test images and "seconds")."""
    fold_results, true, predicted, rows, exports = [], [], [], [], []
    for index in sorted(results):
        train_index, test_index = splits[index]
        if results[index].get("diverged"):
            # No result: argmax of NaN is class 0, which would pass for predictions.
            fold_results.append(
                FoldResult(
                    fold=index + 1,
                    accuracy=None,
                    train_size=len(train_index),
                    test_size=len(test_index),
                    test_subjects=sorted(set(selection.subjects[test_index].tolist()) - {""})
                    if group == "subject"
                    else [],
                    seconds=round(results[index]["seconds"], 2),
                    diverged=results[index].get("diverged"),
                )
            )
            continue
        guesses = results[index]["probabilities"].argmax(axis=1)
        truth = selection.targets[test_index]
        true.append(truth)
        predicted.append(guesses)
        fold_results.append(
            FoldResult(
                fold=index + 1,
                accuracy=float(np.mean(guesses == truth)),
                train_size=len(train_index),
                test_size=len(test_index),
                test_subjects=sorted(set(selection.subjects[test_index].tolist()) - {""})
                if group == "subject"
                else [],
                seconds=round(float(results[index]["seconds"]), 2),
            )
        )
        exported = results[index].get("export")
        if exported is not None:
            exports.append(
                {
                    **exported,
                    "fold": index + 1,
                    "difference": _runtime_difference(
                        exported,
                        selection.crops[test_index],
                        results[index]["probabilities"],
                        config.test_time_flip,
                    ),
                }
            )
        rows.extend(
            {
                "path": str(selection.paths[i]),
                "fold": index + 1,
                **({"dataset": str(selection.origins[i])} if selection.origins is not None else {}),
                "true": selection.labels[t],
                "predicted": selection.labels[g],
                **{
                    f"p_{label}": round(float(p), 6)
                    for label, p in zip(selection.labels, probabilities, strict=True)
                },
            }
            for i, t, g, probabilities in zip(
                test_index, truth, guesses, results[index]["probabilities"], strict=True
            )
        )
    true_all = np.concatenate(true) if true else np.zeros(0, int)
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, int)
    matrix, per_class, f1 = score_predictions(true_all, predicted_all, selection.labels)
    complete = bool(true) and len(true) == len(results)
    return CrossvalReport(
        dataset={
            **dataset_summary(dataset, selection),
            **({"datasets": dataset.meta["datasets"]} if "datasets" in dataset.meta else {}),
        },
        protocol={
            "folds": len(splits),
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
        },
        labels=selection.labels,
        folds=fold_results,
        confusion=np.asarray(matrix),
        per_class=per_class,
        # Figures over every fold, or none: the folds left after a divergence are no protocol's.
        macro_f1=float(np.mean(f1)) if true and len(true) == len(results) else math.nan,
        pooled_accuracy=float(np.mean(true_all == predicted_all))
        if true and len(true) == len(results)
        else math.nan,
        warnings=(
            getattr(dataset, "notes", [])
            + protocol_warnings(selection, group, config)
            + starting_notes(config)
            + split_notes(dataset)
        ),
        seconds=seconds,
        interrupted=interrupted,
        planned_folds=len(splits),
        predictions=rows,
        per_dataset=per_dataset_figures(selection, splits, results, fold_results, complete),
        exports=exports,
    )


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


def _runtime_difference(
    exported: dict, crops: np.ndarray, expected: np.ndarray, flip: bool
) -> float:
    """Largest |numpy runtime - Keras| of a fold's exported network on its test crops."""
    from fercli.infer.model import Member
    from fercli.infer.runtime import NumpyNetwork

    network = exported["network"]
    member = Member(
        NumpyNetwork(network.specs, network.weights), network.mean, network.std, network.per_image
    )
    with np.errstate(all="ignore"):
        return (
            float(np.abs(member.predict_proba(crops, flip) - expected).max()) if len(crops) else 0.0
        )


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


def _accuracy(result: dict, selection: Selection, splits) -> float:
    test_index = splits[result["fold"]][1]
    return float(np.mean(result["probabilities"].argmax(axis=1) == selection.targets[test_index]))
