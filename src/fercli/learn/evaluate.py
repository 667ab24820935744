"""fer evaluate: score a trained model on another dataset (cross-dataset evaluation).

The report (EvaluationReport) has the scores of a cross-validation's, and its JSON the same
shape, with one "fold": the whole dataset is the test set and the model file is the
training. Classes are matched by name; only the classes both have are scored, and the
model's probabilities are renormalised over them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from fercli.core.config import PreprocessConfig, ScanConfig
from fercli.core.errors import DatasetError
from fercli.core.events import Progress
from fercli.core.labels import (
    answer_shares,
    canonical_label,
    collapse_note,
    label_order,
    no_neutral_note,
    trained_on_varied_data,
)
from fercli.core.recipes import for_photos_from_elsewhere
from fercli.core.store import datasets_dir
from fercli.data.fer2013 import is_fer2013
from fercli.data.prepared import (
    DATASET_FILE,
    PreparedDataset,
    dataset_folder,
    evaluation_key,
    load_dataset,
    resolve_dataset,
)
from fercli.infer.adapt import Adaptation, adapt_model, adaptation_mode
from fercli.infer.model import FerModel
from fercli.learn.crossval import dataset_summary, score_predictions
from fercli.learn.folds import FoldResult
from fercli.learn.reports import EvaluationReport
from fercli.learn.selection import Selection, select_classes, selection_fingerprint
from fercli.learn.where import model_where

# Crops classified at once: bounds the memory of the forward pass on a large dataset.
CHUNK = 2048
RENORMALISED = (
    "probabilities renormalised over the shared classes (the model's other classes left out)"
)


def prepare_for_model(
    choice: str | Path,
    model: FerModel,
    workers: int | None = None,
    progress: Progress | None = None,
    face_crops: bool = False,
) -> tuple[PreparedDataset, object | None]:
    """The dataset to evaluate on, in crops made with the model's own preprocessing settings:
    a preprocessed dataset (name or folder under FER_HOME, or its dataset.npz), or an original
    dataset folder, which is preprocessed first with the model's settings (through the crop
    cache, as `fer preprocess` would). Returns the dataset and the PreprocessReport when it was
    preprocessed now. DatasetError for a dataset made with other settings. face_crops: an
    original folder's images are all face crops (preprocess_dataset's)."""
    from fercli.data.preprocess import preprocess_dataset

    wanted = model.preprocess.fingerprint()
    candidate = Path(choice)
    original = (
        candidate.is_dir() and not (candidate / DATASET_FILE).exists() or is_fer2013(candidate)
    ) and not _inside(candidate, datasets_dir())
    if original:
        # The user's own dataset of the folder, or a test set evaluate made beside it.
        test_set = evaluation_key(model.preprocess, face_crops)
        for folder in (dataset_folder(candidate), dataset_folder(candidate, test_set)):
            if (folder / DATASET_FILE).exists():
                dataset = load_dataset(folder / DATASET_FILE)
                made_as = bool(dataset.meta.get("every_image_a_face", False))
                if _fingerprint(dataset) == wanted and made_as == face_crops:
                    return dataset, None
        # Marked as a test set: evaluating must not change what train and crossval pick, nor
        # replace a dataset the user preprocessed from the folder (save_prepared).
        report = preprocess_dataset(
            candidate,
            ScanConfig(),
            model.preprocess,
            workers,
            progress,
            made_by="evaluate",
            face_crops=face_crops,
        )
        if not report.dataset:
            raise DatasetError(
                f"{choice}: no image could be aligned ({len(report.skipped)} skipped)"
            )
        return load_dataset(Path(report.dataset)), report
    dataset = resolve_dataset(choice)
    if _fingerprint(dataset) != wanted:
        saved, current = dataset.meta["preprocess"], model.preprocess.to_dict()
        differing = sorted(
            key for key in set(saved) | set(current) if saved.get(key) != current.get(key)
        )
        raise DatasetError(
            f"{choice}: its crops were made with other preprocessing settings than the model's "
            f"({', '.join(differing) or 'their fingerprint'}); give the original dataset folder "
            "instead, "
            "and it is preprocessed with the model's settings"
        )
    if face_crops and not dataset.meta.get("every_image_a_face"):
        raise DatasetError(
            f"{choice}: preprocessed without --face-crops; give its original folder "
            f"({dataset.meta.get('source', 'the folder it was made from')}) with --face-crops, "
            "and it is preprocessed again"
        )
    return dataset, None


def _inside(path: Path, folder: Path) -> bool:
    try:
        resolved, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved == root or root in resolved.parents


def _fingerprint(dataset: PreparedDataset) -> str:
    return PreprocessConfig.from_dict(dataset.meta["preprocess"]).fingerprint()


# `fer train --split all`: every image, the predefined test splits included.
ALL_SPLITS = "all"
# The predefined split fer train takes when none is named (FER2013's Usage).
TRAINING_SPLIT = "Training"


def training_split(dataset: PreparedDataset, split: str | None) -> tuple[str | None, str | None]:
    """The predefined split fer train trains on, None for every image, and what to say of it.
    Named: that one ("all": every image). Else a dataset with FER2013's splits trains on its
    Training split only: the others are its test sets (fer evaluate --split PrivateTest), and
    a model trained on them would be scored on images it has seen."""
    if split is not None:
        return (None, None) if split == ALL_SPLITS else (split, None)
    names = set(dataset.splits.tolist()) - {""} if dataset.splits is not None else set()
    if TRAINING_SPLIT not in names:
        return None, None
    chosen = int(np.count_nonzero(dataset.splits == TRAINING_SPLIT))
    others = ", ".join(sorted(names - {TRAINING_SPLIT}))
    return TRAINING_SPLIT, (
        f"{dataset.name}: trained on its predefined split {TRAINING_SPLIT} ({chosen:,} of "
        f"{len(dataset.labels):,} images); {others or 'the others'} left for "
        f"`fer evaluate --split`; --split {ALL_SPLITS} trains on every image"
    )


def training_part(dataset: PreparedDataset, split: str | None, notes: list[str]) -> PreparedDataset:
    """What fer train takes of a dataset: the split training_split chooses, what it says of
    that added to notes."""
    chosen, note = training_split(dataset, split)
    notes.extend([note] if note else [])
    return dataset_split(dataset, chosen)


def dataset_split(dataset: PreparedDataset, split: str | None) -> PreparedDataset:
    """The images of a predefined split (FER2013's Usage), or all of them when split is None.
    DatasetError when the dataset has no such split."""
    if split is None:
        return dataset
    column = dataset.splits
    names = sorted(set(column.tolist()) - {""}) if column is not None else []
    if column is None or not names:
        raise DatasetError(
            f"{dataset.name} has no predefined splits (FER2013's Usage column has them); "
            "leave out --split"
        )
    keep = np.asarray(column == split, dtype=bool)
    if not keep.any():
        raise DatasetError(f"{dataset.name} has no split {split!r}; it has {', '.join(names)}")
    return PreparedDataset(
        crops=dataset.crops[keep],
        labels=dataset.labels[keep],
        subjects=dataset.subjects[keep],
        paths=dataset.paths[keep],
        meta={**dataset.meta, "split": split},
        location=dataset.location,
        splits=column[keep],
        sources=None if dataset.sources is None else dataset.sources[keep],
    )


def score_model(
    model: FerModel,
    dataset: PreparedDataset,
    split: str | None = None,
    adapt: bool | str = False,
) -> EvaluationReport:
    """Score a model on every image of a dataset whose class the model knows.

    DatasetError when the model and the dataset share no class. The report's warnings name
    the classes left out on each side, say when the images overlap the model's training
    data (then it is no test) and when the answers collapse onto one class. adapt: first
    adapt the model to the dataset's crops, all of them, labels unread (fercli.infer.adapt; a
    name of its PIXEL_MAPS says how, True the default); FerError when there are too few.
    """
    started = time.perf_counter()
    dataset_name = dataset.name
    dataset = dataset_split(dataset, split)
    adaptation = None
    mode = adaptation_mode(adapt)
    if mode:
        model, adaptation = adapt_model(model, dataset.crops, where=dataset_name, pixels=mode)
    matched, model_only, data_only = _match_classes(model, dataset, dataset_name)
    shared = list(matched)
    selection, dropped = _shared_selection(dataset, shared)
    probabilities = shared_probabilities(model, selection.crops, list(matched.values()))
    predicted = probabilities.argmax(axis=1)
    matrix, per_class, f1 = score_predictions(selection.targets, predicted, shared)
    accuracy = float(np.mean(predicted == selection.targets))
    shares = answer_shares([shared[guess] for guess in predicted])
    warnings = [RENORMALISED] if model_only else []
    if model_only or data_only:
        warnings.append(left_out_note(model_only, data_only, dropped, dataset_name))
    warnings += _answer_notes(model, dataset, selection, predicted, shares, adaptation)
    rows = _prediction_rows(selection, predicted, probabilities, shared)
    where = model_where(
        model, selection.crops, selection.targets, predicted, shared, list(matched.values())
    )
    fold = _whole_dataset_fold(model, accuracy, len(selection.crops), started)
    every = every_image(dataset, dataset_name, shared, int(np.sum(predicted == selection.targets)))
    warnings += face_crops_hint(dataset, every)
    return EvaluationReport(
        dataset={**dataset_summary(dataset, selection, dataset_name), "split": split},
        protocol=_evaluation_protocol(
            model, shared, split, adaptation, (model_only, data_only, dropped)
        ),
        labels=shared,
        folds=[fold],
        confusion=matrix,
        per_class=per_class,
        macro_f1=float(np.mean(f1)),
        pooled_accuracy=accuracy,
        warnings=warnings,
        seconds=time.perf_counter() - started,
        predictions=rows,
        answer_shares=shares,
        where=where,
        all_images=every,
    )


def _match_classes(
    model: FerModel, dataset: PreparedDataset, name: str
) -> tuple[dict[str, str], list[str], list[str]]:
    """The classes model and dataset share, as {dataset's name: model's name} (a model trained
    on "happy" scores a dataset's "happiness": labels.LABEL_ALIASES; each dataset class matched
    once), with the model's classes and the dataset's left out. DatasetError when they share
    none."""
    in_data = label_order(set(dataset.labels.tolist()))
    matched: dict[str, str] = {}
    for label in model.classes:
        if canonical_label(label) in in_data:
            matched.setdefault(canonical_label(label), label)
    model_only = [label for label in model.classes if label not in matched.values()]
    data_only = [label for label in in_data if label not in matched]
    if not matched:
        raise DatasetError(
            f"the model's classes ({', '.join(model.classes)}) and {name}'s "
            f"({', '.join(in_data) or 'none'}) share none: there is nothing to score"
        )
    return matched, model_only, data_only


def _shared_selection(dataset: PreparedDataset, shared: list[str]) -> tuple[Selection, Counter]:
    """The dataset's images of the shared classes, their targets indexes into shared, and the
    count per class of the images left out."""
    keep = np.isin(dataset.labels, shared)
    dropped = Counter(dataset.labels[~keep].tolist())
    index = {label: position for position, label in enumerate(shared)}
    selection = Selection(
        crops=dataset.crops[keep],
        labels=shared,
        subjects=dataset.subjects[keep],
        paths=dataset.paths[keep],
        targets=np.array([index[label] for label in dataset.labels[keep]], dtype=np.int64),
    )
    return selection, dropped


def _answer_notes(
    model: FerModel,
    dataset: PreparedDataset,
    selection: Selection,
    predicted: np.ndarray,
    shares: dict,
    adaptation: Adaptation | None,
) -> list[str]:
    """The warnings on the answers: a single shared class, overlap with the model's training
    data, answers collapsed onto one class, no neutral class, and the adaptation made."""
    shared = selection.labels
    notes = []
    if len(shared) == 1:
        notes.append(
            f"only one shared class ({shared[0]}): renormalised, every image is predicted as it, "
            "so the accuracy says nothing"
        )
    notes += overlap_notes(model, dataset, selection)
    collapse = collapse_note(
        shares,
        len(predicted),
        answer_shares([shared[truth] for truth in selection.targets]),
        adapted=adaptation is not None,
        jittered=for_photos_from_elsewhere(model.meta.get("training")),
        varied=trained_on_varied_data(model.meta),
    )
    if collapse:
        notes.append(collapse)
    neutral = no_neutral_note(model.classes)
    if neutral:
        notes.append(neutral)
    if adaptation is not None:
        notes.append(adaptation.describe())
    return notes


def _whole_dataset_fold(
    model: FerModel, accuracy: float, test_size: int, started: float
) -> FoldResult:
    """The one fold of an evaluation: the model file's training set against the dataset."""
    trained_on = model.meta.get("dataset") or {}
    return FoldResult(
        fold=1,
        accuracy=accuracy,
        train_size=int(trained_on.get("images") or 0),
        test_size=test_size,
        test_subjects=[],
        seconds=round(time.perf_counter() - started, 2),
    )


def _prediction_rows(
    selection: Selection, predicted: np.ndarray, probabilities: np.ndarray, shared: list[str]
) -> list[dict]:
    """One row per image scored: path, fold 1, true and predicted class, p_<class> each."""
    return [
        {
            "path": str(path),
            "fold": 1,
            "true": shared[truth],
            "predicted": shared[guess],
            **{f"p_{label}": round(float(p), 6) for label, p in zip(shared, row, strict=True)},
        }
        for path, truth, guess, row in zip(
            selection.paths, selection.targets, predicted, probabilities, strict=True
        )
    ]


def _evaluation_protocol(
    model: FerModel,
    shared: list[str],
    split: str | None,
    adaptation: Adaptation | None,
    left_out: tuple[list[str], list[str], Counter],
) -> dict:
    """The report's protocol: an evaluation of the model, one fold, the classes scored and
    those left out (the model's, the dataset's, and the count of images dropped per class)."""
    training = model.meta.get("training")
    model_only, data_only, dropped = left_out
    return {
        "kind": "evaluate",
        "folds": 1,
        "group": "none",
        "classes": shared,
        "model": model_protocol(model),
        "training": training,
        "recipe": (training or {}).get("recipe"),
        "preprocess": model.preprocess.to_dict(),
        "renormalised": bool(model_only),
        "adapted": adaptation.to_json() if adaptation else None,
        "split": split,
        "left_out": {
            "model_only": model_only,
            "dataset_only": data_only,
            "images_dropped": sum(dropped.values()),
            "dropped_per_class": dict(dropped),
        },
    }


def every_image(dataset: PreparedDataset, name: str, shared: list[str], correct: int) -> dict:
    """The accuracy over every image of the shared classes, the images in which no face was
    found (or that could not be read) counted as wrong: "images", "without_face" (and per
    class), "accuracy"; None figures and a note when the dataset does not say how many images
    gave no face (preprocessed before fercli kept the count)."""
    unaligned = dataset.unaligned()
    if unaligned is None:
        return {
            "images": None,
            "without_face": None,
            "accuracy": None,
            "note": f"how many images of {name} had no face found is not known (it was "
            "preprocessed before fercli kept the count; run fer preprocess on its folder again)",
        }
    missing = dict.fromkeys(shared, 0)
    for label, count in unaligned.items():
        if canonical_label(label) in missing:
            missing[canonical_label(label)] += count
    tested = int(np.isin(dataset.labels, shared).sum())
    images = tested + sum(missing.values())
    return {
        "images": images,
        "without_face": sum(missing.values()),
        "without_face_per_class": missing,
        "accuracy": correct / images if images else None,
    }


def face_crops_hint(dataset: PreparedDataset, every: dict) -> list[str]:
    """What the report says of --face-crops: for a dataset made with it, how many faces were
    taken on its word (the scores count them); for a dataset of face crops (some of its images
    were aligned as such) in which some images gave no face, that --face-crops would label them
    too."""
    meta = dataset.meta
    if meta.get("every_image_a_face"):
        taken = int(meta.get("unchecked_faces") or 0)
        return [
            f"preprocessed with --face-crops: {taken:,} faces the face check turned down are "
            "scored too"
        ]
    without = every.get("without_face") or 0
    if not without or not meta.get("face_crops"):
        return []
    return [
        f"{without:,} images without a face found: if every image is a face crop (as "
        "FER2013's are), --face-crops labels them too (the face check turned them down)"
    ]


def shared_probabilities(model: FerModel, crops: np.ndarray, shared: list[str]) -> np.ndarray:
    """The model's probabilities of the shared classes, renormalised to sum to 1 (n, shared)."""
    from fercli.core.errors import ModelError

    columns = [model.classes.index(label) for label in shared]
    parts = [
        model.predict_proba(crops[start : start + CHUNK])[:, columns]
        for start in range(0, len(crops), CHUNK)
    ]
    raw = np.concatenate(parts) if parts else np.zeros((0, len(shared)))
    if not np.all(np.isfinite(raw)):
        raise ModelError(
            f"{model.path}: damaged model file (its probabilities for some crops are not finite "
            "numbers)"
        )
    total = raw.sum(axis=1, keepdims=True)
    # A face the model gives (to float precision) none of the shared classes: no preference among
    # them.
    return np.where(total > 0, raw / np.where(total > 0, total, 1), 1 / len(shared))


def left_out_note(model_only: list[str], data_only: list[str], dropped: Counter, name: str) -> str:
    """Which classes were left out on each side, and how many images that dropped."""
    parts = []
    if model_only:
        parts.append(f"the model's {', '.join(model_only)} (not in {name})")
    if data_only:
        counts = ", ".join(f"{label} {dropped[label]}" for label in data_only)
        parts.append(
            f"{name}'s {', '.join(data_only)} (the model does not know them: "
            f"{sum(dropped.values())} image{'' if sum(dropped.values()) == 1 else 's'} dropped: "
            f"{counts})"
        )
    return "classes left out: " + "; ".join(parts)


def overlap_notes(model: FerModel, dataset: PreparedDataset, selection: Selection) -> list[str]:
    """Warnings when the evaluated images are (some of) the model's training images."""
    notes = []
    seen = model.seen_in_training(selection.crops)
    if seen is not None and any(seen):
        notes.append(
            f"{sum(seen)} of {len(seen)} evaluated images are crops this model was trained on: "
            "on them this is not a test"
        )
    same_data = False
    try:
        same_data = selection_fingerprint(
            select_classes(dataset, tuple(model.classes))
        ) == model.meta.get("data_fingerprint")
    except DatasetError:
        pass  # the dataset lacks some of the model's classes: it cannot be its training data
    trained_on = model.meta.get("dataset") or {}
    # Without the training crops' hashes, the same source folder is the best evidence there is.
    same_source = (
        seen is None
        and trained_on.get("source")
        and trained_on.get("source") == dataset.meta.get("source")
    )
    if same_data or same_source:
        notes.append(
            f"the model was trained on this dataset ({trained_on.get('name', dataset.name)}): this "
            "is not a test"
        )
    if seen is None:
        notes.append(
            "the model file does not list its training crops (written by an older fercli): "
            "overlap with its training data is checked by dataset only"
        )
    return notes


def model_protocol(model: FerModel) -> dict:
    """What a report says of the model evaluated: file, training data and settings."""
    meta = model.meta
    return {
        "path": str(model.path),
        "classes": model.classes,
        "networks": len(model.networks),
        "ensemble": meta.get("ensemble"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "dataset": meta.get("dataset"),
        "training": meta.get("training"),
        "preprocess": meta.get("preprocess"),
        "test_time_flip": bool(meta.get("test_time_flip")),
    }
