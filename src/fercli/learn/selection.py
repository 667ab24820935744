"""Which crops and classes a run uses (Selection), their z-score statistics, and the
fingerprint of the data a model was trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fercli.core.config import NORMALISATIONS, TrainConfig, validation_share
from fercli.core.errors import DatasetError, FerError
from fercli.core.hashing import data_fingerprint
from fercli.core.labels import canonical_label, label_order
from fercli.data.datasets import subjects_known
from fercli.data.prepared import PreparedDataset


@dataclass
class Selection:
    """The images of a dataset that take part, with integer targets."""

    crops: np.ndarray  # (n, s, s) uint8
    targets: np.ndarray  # (n,) int, indices into labels
    labels: list[str]
    subjects: np.ndarray  # (n,) str, "" where unknown
    paths: np.ndarray
    origins: np.ndarray | None = (
        None  # (n,) str: each image's dataset, for several datasets combined
    )
    # (n, 8) uint8: each crop's image file's source digest (PreparedDataset.sources); None
    # where the dataset has none.
    sources: np.ndarray | None = None

    @property
    def has_subjects(self) -> bool:
        return subjects_known(self.subjects)


def select_classes(dataset: PreparedDataset, classes: tuple[str, ...] = ()) -> Selection:
    """Keep the named classes of a dataset (all when none are named); DatasetError for an
    unknown name or fewer than two classes."""
    available = label_order(set(dataset.labels.tolist()))
    if classes:
        wanted = [canonical_label(name) for name in classes]
        unknown = [
            name for name, label in zip(classes, wanted, strict=True) if label not in available
        ]
        if unknown:
            raise DatasetError(
                f"unknown class {', '.join(map(repr, unknown))}; this dataset has "
                f"{', '.join(available)}"
            )
        labels = label_order(set(wanted))
    else:
        labels = available
    if len(labels) < 2:
        raise DatasetError(
            f"training needs at least two classes; the selection has {', '.join(labels) or 'none'}"
        )
    keep = np.isin(dataset.labels, labels)
    index = {label: position for position, label in enumerate(labels)}
    origins = getattr(dataset, "origins", None)
    return Selection(
        crops=dataset.crops[keep],
        targets=np.array([index[label] for label in dataset.labels[keep]], dtype=np.int64),
        labels=labels,
        subjects=dataset.subjects[keep],
        paths=dataset.paths[keep],
        origins=None if origins is None else origins[keep],
        sources=None if dataset.sources is None else dataset.sources[keep],
    )


def normalisation(crops: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """z-score statistics of (training) crops: one mean and std, or one per pixel.
    "per-dataset" is "global" here: its per-dataset step happens before (fold_inputs); "image"
    is 0 and 1: each crop is standardised by its own statistics (infer.model.standardise_each)."""
    if mode == "image":
        return np.array(0.0), np.array(1.0)
    values = crops.astype(np.float64)
    if mode in ("global", "per-dataset"):
        mean, std = np.array(values.mean()), np.array(values.std())
    elif mode == "pixel":
        mean, std = values.mean(axis=0), values.std(axis=0)
    else:
        raise FerError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALISATIONS)}")
    return mean, np.maximum(std, 1e-6)


def selection_fingerprint(selection: Selection) -> str:
    """Identifies the exact training data: crops and their labels (core.hashing)."""
    return data_fingerprint(selection.crops, [selection.labels[t] for t in selection.targets])


def held_out_share(
    crops: np.ndarray,
    targets: np.ndarray,
    origins: np.ndarray | None,
    config: TrainConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """(crops, targets, origins) to train on and the images held out to choose the epoch, as
    config.validation's share says (stratified by class, drawn with the seed); all of them
    and None without a share."""
    share = validation_share(config.validation)
    if share is None:
        return crops, targets, origins, None
    held = np.random.default_rng([seed, 7]).random(len(targets))
    chosen = np.zeros(len(targets), bool)
    for target in np.unique(targets):
        members = np.flatnonzero(targets == target)
        count = int(round(share * len(members)))
        if len(members) - count < 1:
            count = len(members) - 1  # every class keeps an image to train on
        chosen[members[np.argsort(held[members])[:count]]] = True
    if not chosen.any():
        raise FerError(
            f"--validation {config.validation}: too few images to hold any out; give a larger "
            "share or another dataset"
        )
    kept = ~chosen
    return (
        crops[kept],
        targets[kept],
        None if origins is None else origins[kept],
        (crops[chosen], targets[chosen]),
    )


def class_weights(targets: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """The loss weight of each class (config.CLASS_WEIGHTS), float32, a mean of 1 over the
    images; a class without images weighs 1."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    if mode == "none" or not counts.any():
        return np.ones(num_classes, np.float32)
    present = counts > 0
    power = 1.0 if mode == "balanced" else 0.5
    weights = np.ones(num_classes)
    weights[present] = counts[present] ** -power
    weights *= counts.sum() / (weights * counts).sum()
    return weights.astype(np.float32)


def dataset_draws(origins: np.ndarray | None, config: TrainConfig) -> np.ndarray | None:
    """How often each image is drawn in an epoch, relative to the others, as config.balance
    says: "datasets" gives each dataset of a combination the same share; None: every image
    once (one dataset, or "none")."""
    if config.balance != "datasets" or origins is None:
        return None
    names, index, counts = np.unique(origins, return_inverse=True, return_counts=True)
    if len(names) < 2:
        return None
    return 1.0 / counts[index]
