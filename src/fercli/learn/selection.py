"""Which crops and classes a run uses (Selection), their z-score statistics, and the
fingerprint of the data a model was trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fercli.core.config import NORMALISATIONS
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
