"""Folds (random, by subject, or leave-one-dataset-out) and one fold's training: its inputs,
the network trained on its training part alone, and its predictions on its test part."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fercli.core.config import TrainConfig
from fercli.core.errors import DatasetError
from fercli.infer.model import ExportedNetwork
from fercli.learn.fitting import (
    divergence,
    fit,
    fold_accuracy,
    fold_seed,
    keras_probabilities,
)
from fercli.learn.selection import Selection, normalisation


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
    # Each image's dataset, for --normalisation per-dataset and --balance datasets on combined
    # data (else None).
    origins: np.ndarray | None = None
    # --validation DATASET: its images (crops, targets), scored after every epoch to choose
    # the epoch kept (a share of the training part is held out by fit itself).
    validation: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class FoldExport:
    """A fold's network as plain arrays, for the crossval's ensemble model file: what Keras
    gives on the load check's crops (probe_crops), which the saved file must reproduce, and
    the largest |NumPy runtime - Keras| on the fold's test crops."""

    network: ExportedNetwork
    probe: np.ndarray
    difference: float


@dataclass(frozen=True, eq=False)
class FoldOutcome:
    """What one trained fold gives back, whichever engine ran it (it crosses processes and
    Ray: plain arrays and numbers). A diverged fold has no probabilities, accuracy or export."""

    key: object  # the FoldTask's key
    fold: int  # 0-based
    test_index: np.ndarray
    probabilities: np.ndarray | None  # (test images, classes); None: diverged
    accuracy: float | None  # on the test images; None: diverged
    diverged: str | None  # why the fold's network is unusable
    epochs: int  # epochs trained (0: not known, a fold stored by an older sweep)
    seconds: float
    mean: float = math.nan  # the fold's z-score statistics, averaged over pixels
    std: float = math.nan
    # None: diverged, not exported (a stored sweep fold), or a network with per-dataset
    # statistics, which exist only inside its fold and cannot be saved.
    export: FoldExport | None = None

    @property
    def predicted(self) -> np.ndarray:
        """The class predicted for each test image (a diverged fold has none: ValueError)."""
        if self.probabilities is None:
            raise ValueError(f"fold {self.fold + 1} diverged: it has no predictions")
        return self.probabilities.argmax(axis=1)


def train_fold(
    crops: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    task: FoldTask,
    on_epoch: Callable[..., None] | None = None,
) -> FoldOutcome:
    """Train one fold's network and predict its test images. Every engine runs folds through
    this, so that a fold gives the same numbers wherever it runs (with the same TensorFlow
    threads and op determinism: see configure_tensorflow)."""
    started = time.perf_counter()
    train_index, test_index = task.train_index, task.test_index
    last_epoch, last_loss = 0, math.nan

    def tracked(
        epoch: int, loss: float, accuracy: float, validation: float | None, epochs: int
    ) -> None:
        nonlocal last_epoch, last_loss
        last_epoch, last_loss = epoch, loss
        if on_epoch:
            on_epoch(epoch, loss, accuracy, validation, epochs)

    train_crops, test_crops = fold_inputs(
        crops, task.origins, train_index, test_index, task.config.normalisation
    )
    fitted = fit(
        train_crops,
        targets[train_index],
        num_classes,
        task.config,
        fold_seed(task.config.seed, task.fold),
        tracked,
        origins=None if task.origins is None else task.origins[train_index],
        validation=task.validation,
    )
    model, mean, std = fitted.model, fitted.mean, fitted.std
    flip, per_image = task.config.test_time_flip, task.config.normalisation == "image"
    probabilities = keras_probabilities(model, test_crops, mean, std, flip, per_image)
    diverged = divergence(model, last_loss, last_epoch, probabilities)
    return FoldOutcome(
        key=task.key,
        fold=task.fold,
        test_index=test_index,
        probabilities=None if diverged else probabilities,
        accuracy=None if diverged else fold_accuracy(probabilities, targets[test_index]),
        diverged=diverged,
        epochs=last_epoch,
        seconds=time.perf_counter() - started,
        mean=float(np.mean(mean)),
        std=float(np.mean(std)),
        # Per-dataset statistics exist only inside the fold: such a network cannot be saved.
        export=None
        if diverged or test_crops.dtype != np.uint8
        else fold_export(model, mean, std, flip, per_image, test_crops, probabilities),
    )


def fold_export(
    model,
    mean: np.ndarray,
    std: np.ndarray,
    flip: bool,
    per_image: bool,
    test_crops: np.ndarray,
    expected: np.ndarray,
) -> FoldExport:
    """A fold's network as plain arrays for the crossval ensemble file, with what Keras gives
    on the load check's crops and how far the NumPy runtime is from Keras (expected) on the
    fold's test crops."""
    from fercli.infer.model import probe_crops
    from fercli.learn.network import export_network

    probe = keras_probabilities(
        model, probe_crops(model.input_shape[1]), mean, std, flip, per_image
    )
    network = export_network(model, mean, std, per_image)
    return FoldExport(network, probe, runtime_difference(network, test_crops, expected, flip))


def runtime_difference(
    network: ExportedNetwork, crops: np.ndarray, expected: np.ndarray, flip: bool
) -> float:
    """Largest |NumPy runtime - Keras| of an exported network on crops (expected: Keras's)."""
    from fercli.infer.model import Member
    from fercli.infer.runtime import NumpyNetwork

    member = Member(
        NumpyNetwork(network.specs, network.weights), network.mean, network.std, network.per_image
    )
    if not len(crops):
        return 0.0
    with np.errstate(all="ignore"):
        return float(np.abs(member.predict_proba(crops, flip) - expected).max())


@dataclass
class FoldResult:
    fold: int
    accuracy: float | None  # None: the fold's training diverged, it has no result
    train_size: int
    test_size: int
    test_subjects: list[str]
    seconds: float
    diverged: str | None = None  # why the fold's network is unusable
    epochs: int = 0  # epochs trained: the settings' epochs, fewer where --time-limit cut them
    # Several datasets combined: per dataset in the test part, {"images", "accuracy"}.
    per_dataset: dict[str, dict] = field(default_factory=dict)
