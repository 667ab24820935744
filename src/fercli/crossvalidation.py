"""Honest k-fold cross-validation: folds (random, by subject, or leave-one-dataset-out), the
folds trained on an engine (fercli.engines: worker processes or Ray), the report assembled
from their predictions, and its files (report.json, confusion pictures, predictions.csv, and
the fold networks as one ensemble model file).

Inside a fold everything learned from data comes from its training part alone: the z-score
statistics, the augmented images, the network (fercli.training.fit).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fercli.config import PreprocessConfig, TrainConfig, recipe_differences
from fercli.errors import DatasetError, FerError, TrainingError
from fercli.events import Event, Progress
from fercli.prepared import PreparedDataset
from fercli.store import atomic_write_json, atomic_write_text, slug
from fercli.training import (
    Selection,
    checked_start,
    data_fingerprint,
    divergence,
    fit,
    fold_seed,
    keras_probabilities,
    normalisation,
    select_classes,
    starting_notes,
)


def make_folds(
    selection: Selection, folds: int, group: str, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds, shuffled with seed; by subject (no person on both sides) when group
    is "subject"; one fold per dataset of a combined selection, which it tests on while the
    others train (leave-one-dataset-out), when group is "dataset" (folds is then ignored).
    DatasetError where the data cannot be split so."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if folds < 2:
        raise DatasetError("--folds must be at least 2")
    counts = np.bincount(selection.targets, minlength=len(selection.labels))
    if group == "subject":
        if not selection.has_subjects:
            raise DatasetError(
                "--group subject needs the subject of every image, and this dataset's layout gives "
                "none "
                "(subjects come from JAFFE names, CK+ folders or CK+-style file names)"
            )
        subjects = sorted(set(selection.subjects.tolist()))
        if len(subjects) < folds:
            raise DatasetError(
                f"--group subject with {folds} folds needs at least {folds} subjects; there are "
                f"{len(subjects)}"
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(selection.crops, selection.targets, groups=selection.subjects))
    if group == "dataset":
        return dataset_folds(selection)
    if group != "random":
        raise DatasetError(f"unknown --group {group!r}; choose random, subject or dataset")
    smallest = int(counts.argmin())
    if counts[smallest] < folds:
        raise DatasetError(
            f"class {selection.labels[smallest]!r} has {counts[smallest]} images, fewer than the "
            f"{folds} folds: "
            "use fewer --folds or leave it out with --classes"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    strata = selection.targets
    if selection.origins is not None:
        # Several datasets: every fold gets each dataset's classes in proportion, so that the
        # per-dataset figures of a fold rest on a fair share of that dataset.
        combined = np.unique(
            np.char.add(np.char.add(selection.origins, "/"), np.array(selection.labels)[strata]),
            return_inverse=True,
        )[1]
        if np.bincount(combined).min() >= folds:
            strata = combined
    return list(splitter.split(selection.crops, strata))


def dataset_folds(selection: Selection) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-dataset-out: fold k tests on the k-th dataset and trains on all the others."""
    if selection.origins is None:
        raise DatasetError(
            "--group dataset needs several datasets: give two or more (fer crossval A B ...)"
        )
    names = list(dict.fromkeys(selection.origins.tolist()))
    if len(names) < 2:
        raise DatasetError("--group dataset needs images of at least two datasets")
    return [
        (np.flatnonzero(selection.origins != name), np.flatnonzero(selection.origins == name))
        for name in names
    ]


def fold_inputs(
    crops: np.ndarray,
    origins: np.ndarray | None,
    train_index: np.ndarray,
    test_index: np.ndarray,
    mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    """A fold's training and test crops. With --normalisation per-dataset on combined data,
    each dataset's crops are z-scored (float32) with that dataset's statistics from the
    fold's training part; a dataset with no training image (the one left out) can only use
    its own test images' statistics, without their labels (transductive; the report says
    so). Otherwise the crops as they are (fit normalises them)."""
    if mode != "per-dataset" or origins is None:
        return crops[train_index], crops[test_index]
    standardised = np.empty(crops.shape, np.float32)
    in_training = np.zeros(len(crops), bool)
    in_training[train_index] = True
    for name in np.unique(origins):
        mine = origins == name
        source = mine & in_training if np.any(mine & in_training) else mine
        mean, std = normalisation(crops[source], "global")
        standardised[mine] = (crops[mine] - mean) / std
    return standardised[train_index], standardised[test_index]


@dataclass(frozen=True)
class FoldTask:
    """One fold to train: the settings, which images train and which test. key is the
    caller's name for it (a fold number, or a sweep member and fold), returned with the result."""

    key: object
    config: TrainConfig
    fold: int  # 0-based; with config.seed it seeds the network (fold_seed)
    train_index: np.ndarray
    test_index: np.ndarray
    # Each image's dataset, for --normalisation per-dataset on combined data (else None).
    origins: np.ndarray | None = None


def train_fold(
    crops: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    task: FoldTask,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> dict:
    """Train one fold's network and predict its test images. Every engine runs folds through
    this, so that a fold gives the same numbers wherever it runs (with the same TensorFlow
    threads and op determinism: see configure_tensorflow)."""
    started = time.perf_counter()
    train_index, test_index = task.train_index, task.test_index
    last = {"epoch": 0, "loss": math.nan}

    def tracked(epoch: int, loss: float, accuracy: float) -> None:
        last.update(epoch=epoch, loss=loss)
        if on_epoch:
            on_epoch(epoch, loss, accuracy)

    train_crops, test_crops = fold_inputs(
        crops, task.origins, train_index, test_index, task.config.normalisation
    )
    model, mean, std = fit(
        train_crops,
        targets[train_index],
        num_classes,
        task.config,
        fold_seed(task.config.seed, task.fold),
        tracked,
    )
    probabilities = keras_probabilities(model, test_crops, mean, std, task.config.test_time_flip)
    diverged = divergence(model, last["loss"], last["epoch"], probabilities)
    return {
        "key": task.key,
        "fold": task.fold,
        "probabilities": None if diverged else probabilities,
        "diverged": diverged,
        "seconds": time.perf_counter() - started,
        "mean": float(np.mean(mean)),
        "std": float(np.mean(std)),
        # Per-dataset statistics exist only inside the fold: such a network cannot be saved.
        "export": None
        if diverged or test_crops.dtype != np.uint8
        else fold_export(model, mean, std, task.config.test_time_flip),
    }


def fold_export(model, mean: np.ndarray, std: np.ndarray, flip: bool) -> dict:
    """A fold's network as plain arrays for the crossval ensemble file, with what Keras gives
    on the load check's crops (probe_crops), which the saved file must reproduce."""
    from fercli.model import export_network, probe_crops

    probe = keras_probabilities(model, probe_crops(model.input_shape[1]), mean, std, flip)
    return {"network": export_network(model, mean, std), "probe": probe}


@dataclass
class FoldResult:
    fold: int
    accuracy: float | None  # None: the fold's training diverged, it has no result
    train_size: int
    test_size: int
    test_subjects: list[str]
    seconds: float
    diverged: str | None = None  # why the fold's network is unusable
    # Several datasets combined: per dataset in the test part, {"images", "accuracy"}.
    per_dataset: dict[str, dict] = field(default_factory=dict)


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
            **({"per_dataset": self.per_dataset} if self.per_dataset else {}),
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
    from fercli.engines import LocalEngine

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
    return assemble_crossval(
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
        "fingerprint": data_fingerprint(selection),
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
    from fercli.model import Member, NumpyNetwork

    network = exported["network"]
    member = Member(NumpyNetwork(network.specs, network.weights), network.mean, network.std)
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


def save_crossval(
    report: CrossvalReport, folder: Path, title: str | None = None
) -> dict[str, Path]:
    """Write report.json, confusion.png and predictions.csv of a cross-validation (or of an
    evaluation, its one "fold"; title: the confusion image's, default the crossval's)."""
    import csv
    import io

    from fercli.pictures import confusion_image

    files = {"report": atomic_write_json(folder / "report.json", report.to_json())}
    group = (
        report.protocol["group"] if report.protocol["group"] in ("subject", "dataset") else "random"
    )
    if report.diverged_folds:
        figures = f"{len(report.diverged_folds)} diverged"
    elif math.isnan(report.mean_accuracy):
        figures = "no result"
    else:
        figures = f"{report.mean_accuracy:.1%} +/- {report.std_accuracy:.1%}"
    title = (
        title
        or f"{report.dataset['name']}: {len(report.folds)}/{report.planned_folds} folds ({group}), "
        f"{figures}"
    )
    files["confusion"] = confusion_image(
        report.confusion, report.labels, folder / "confusion.png", title
    )
    for number, (name, figures) in enumerate(report.per_dataset.items(), start=1):
        accuracy = (
            "no result"
            if figures["accuracy"] is None
            else f"{figures['accuracy']:.1%} of {figures['tested']}"
        )
        files[f"confusion {name}"] = confusion_image(
            np.array(figures["confusion_matrix"]),
            report.labels,
            folder / f"confusion-{number}-{slug(name)}.png",
            f"{name}: {accuracy} "
            f"({'left out, trained on the others' if group == 'dataset' else group + ' folds'})",
        )
    text = io.StringIO()
    origin = ["dataset"] if report.per_dataset else []
    writer = csv.DictWriter(
        text,
        fieldnames=[
            "path",
            "fold",
            *origin,
            "true",
            "predicted",
            *(f"p_{label}" for label in report.labels),
        ],
    )
    writer.writeheader()
    writer.writerows(report.predictions)
    files["predictions"] = atomic_write_text(folder / "predictions.csv", text.getvalue())
    return files


def save_crossval_model(
    report: CrossvalReport,
    dataset: PreparedDataset,
    output: Path,
    run: Path | None = None,
    keep_existing: bool = True,
) -> Path:
    """Save a finished cross-validation's fold networks as one ensemble model file, which
    predict and evaluate average. Checked before it takes its name: each network within 1e-4
    of Keras on its fold's test crops, the file's ensemble within 1e-4 of the folds' Keras
    networks averaged on the load check's crops. TrainingError when a fold diverged or the
    run was interrupted (no ensemble of every fold exists). Returns the path written."""
    from fercli.model import load_model, probe_crops, save_networks

    if report.interrupted or report.diverged_folds or len(report.exports) != report.planned_folds:
        raise TrainingError("no model saved: the cross-validation did not finish every fold")
    for exported in report.exports:
        if not exported["difference"] <= 1e-4:
            raise FerError(
                f"fold {exported['fold']}'s exported network disagrees with Keras by "
                f"{exported['difference']:.2g}; no model was saved (a bug: please report it)"
            )
    config = TrainConfig.from_dict(report.protocol["training"])
    selection = select_classes(dataset, tuple(report.labels))
    expected = np.mean([exported["probe"] for exported in report.exports], axis=0)

    def check(temporary: Path) -> None:
        exported = load_model(temporary).predict_proba(probe_crops(selection.crops.shape[1]))
        difference = float(np.abs(exported - expected).max())
        if not difference <= 1e-4:  # also NaN
            raise FerError(
                f"the exported ensemble disagrees with Keras by {difference:.2g}; nothing was "
                "saved "
                "(a bug: please report it)"
            )

    extra = {
        "test_time_flip": config.test_time_flip,
        "data_fingerprint": report.dataset["fingerprint"],
        "dataset": {
            "name": dataset.name,
            "source": dataset.meta.get("source"),
            "images": len(selection.crops),
        },
        "ensemble": {
            "kind": "crossval",
            "members": len(report.exports),
            "folds": report.planned_folds,
            "group": report.protocol["group"],
            "run": str(run) if run else None,
            "mean_accuracy": report.mean_accuracy,
            "std_accuracy": report.std_accuracy,
            "note": "each member was trained on all folds but one; together they saw every image",
        },
    }
    preprocess = PreprocessConfig.from_dict(dataset.meta["preprocess"])
    networks = [
        exported["network"] for exported in sorted(report.exports, key=lambda item: item["fold"])
    ]
    return save_networks(
        output,
        networks,
        selection.labels,
        preprocess,
        config,
        extra,
        keep_existing,
        training_crops=selection.crops,
        check=check,
    )
