"""Training, augmentation and honest k-fold cross-validation.

Inside a fold everything learned from data comes from its training part alone: the z-score
statistics, the augmented images, the network. Folds run in worker processes (one
TensorFlow thread each), which on a small network is about twice as fast on two cores as
one process with two threads; TensorFlow is only ever imported in those workers and in
`fer train`, never by the CLI itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fercli.config import (
    NORMALISATIONS,
    PreprocessConfig,
    TrainConfig,
    canonical_label,
    fingerprint,
    label_order,
    recipe_differences,
)
from fercli.errors import DatasetError, FerError, TrainingError
from fercli.store import PreparedDataset, atomic_write_json, atomic_write_text, slug

Progress = Callable[[dict], None]


@dataclass
class Selection:
    """The images of a dataset that take part, with integer targets."""

    crops: np.ndarray  # (n, s, s) uint8
    targets: np.ndarray  # (n,) int, indices into labels
    labels: list[str]
    subjects: np.ndarray  # (n,) str, "" where unknown
    paths: np.ndarray
    origins: np.ndarray | None = None  # (n,) str: each image's dataset, for several datasets combined

    @property
    def has_subjects(self) -> bool:
        return len(self.subjects) > 0 and all(self.subjects)


def select_classes(dataset: PreparedDataset, classes: tuple[str, ...] = ()) -> Selection:
    """Keep the named classes of a dataset (all when none are named); DatasetError for an
    unknown name or fewer than two classes."""
    available = label_order(set(dataset.labels.tolist()))
    if classes:
        wanted = [canonical_label(name) for name in classes]
        unknown = [name for name, label in zip(classes, wanted) if label not in available]
        if unknown:
            raise DatasetError(
                f"unknown class {', '.join(map(repr, unknown))}; this dataset has {', '.join(available)}"
            )
        labels = label_order(set(wanted))
    else:
        labels = available
    if len(labels) < 2:
        raise DatasetError(f"training needs at least two classes; the selection has {', '.join(labels) or 'none'}")
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
    "per-dataset" is "global" here: its per-dataset step happens before (fold_inputs)."""
    values = crops.astype(np.float64)
    if mode in ("global", "per-dataset"):
        mean, std = np.array(values.mean()), np.array(values.std())
    elif mode == "pixel":
        mean, std = values.mean(axis=0), values.std(axis=0)
    else:
        raise FerError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALISATIONS)}")
    return mean, np.maximum(std, 1e-6)


def _quiet_import_tensorflow():
    """Import TensorFlow without the log lines its C++ core writes straight to stderr
    (absl and oneDNN notices that TF_CPP_MIN_LOG_LEVEL no longer reaches)."""
    import sys

    from fercli.images import quiet_stderr

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with quiet_stderr():
        import tensorflow
    return tensorflow


def configure_tensorflow(threads: int | None) -> None:
    """Quiet, deterministic TensorFlow on a given number of threads; call before any op runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    tf = _quiet_import_tensorflow()

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process (tests train several models)
    tf.config.experimental.enable_op_determinism()


def fit(
    crops: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    seed: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
):
    """Train a network on uint8 crops; returns (keras model, mean, std).

    on_epoch(epoch, loss, accuracy) is called after every epoch. The augmented images are
    made a chunk at a time (augment.TrainingImages), and each chunk runs as one TensorFlow
    graph call over its batches, which removes most per-batch overhead.
    """
    import keras
    import tensorflow as tf

    from fercli.augment import TrainingImages
    from fercli.model import build_model, make_optimizer

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = normalisation(crops, config.normalisation)
    model = build_model(num_classes, config.variant, crops.shape[1])
    if config.init_model:
        start_from(model, load_starting_model(config), list(config.classes))
    optimizer = make_optimizer(config)
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.CategoricalCrossentropy()
    batch_size = config.batch_size
    size = crops.shape[1]

    # One trace for every chunk size (a full chunk, the epoch's last one).
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32),
                                  tf.TensorSpec([None, num_classes], tf.float32)])
    def run_chunk(x, y):
        """Train on x's batches in order; the summed loss (per image) and hits."""
        steps = (tf.shape(x)[0] + batch_size - 1) // batch_size
        total_loss = tf.constant(0.0)
        correct = tf.constant(0.0)
        for step in tf.range(steps):
            x_batch = x[step * batch_size : (step + 1) * batch_size]
            y_batch = y[step * batch_size : (step + 1) * batch_size]
            with tf.GradientTape() as tape:
                predicted = model(x_batch, training=True)
                loss = loss_function(y_batch, predicted)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            total_loss += loss * tf.cast(tf.shape(x_batch)[0], tf.float32)
            hits = tf.equal(tf.argmax(predicted, axis=1), tf.argmax(y_batch, axis=1))
            correct += tf.reduce_sum(tf.cast(hits, tf.float32))
        return total_loss, correct

    images = TrainingImages(crops, targets, num_classes, config, rng, mean, std)
    for epoch in range(1, config.epochs + 1):
        total_loss = correct = 0.0
        for x, y in images.epoch():
            chunk_loss, chunk_correct = run_chunk(tf.constant(x), tf.constant(y))
            total_loss += float(chunk_loss)
            correct += float(chunk_correct)
        loss, accuracy = total_loss / len(images), correct / len(images)
        if on_epoch:
            on_epoch(epoch, loss, accuracy)
        if not math.isfinite(loss):
            break  # diverged: more epochs cannot bring it back (divergence() says so)
    return model, mean, std


def load_starting_model(config: TrainConfig):
    """The model of config.init_model, checked to fit config's network; FerError if not."""
    from fercli.model import load_model

    starting = load_model(Path(config.init_model))
    variant = starting.meta.get("training", {}).get("variant")
    if variant != config.variant:
        raise FerError(f"{config.init_model}: the starting model is a {variant!r} network; "
                       f"train with --variant {variant} to start from it")
    return starting


def start_from(model, starting, labels: list[str]) -> None:
    """Copy a fercli model's weights into a Keras network of the same variant. The classifier's
    columns are matched by class name; classes the starting model lacks keep their fresh
    initialisation (e.g. neutral, when starting from a CK+48 model)."""
    layers = [layer for layer in model.layers if layer.get_weights()]
    specs = [spec for spec in starting.network.specs if spec["weights"]]
    if len(layers) != len(specs):
        raise FerError(f"{starting.path}: its layers do not fit this network")
    for position, (layer, spec) in enumerate(zip(layers, specs)):
        values = [starting.network.weights[key] for key in spec["weights"]]
        current = layer.get_weights()
        if position == len(layers) - 1:
            # The classifier: one column per class, copied by name.
            kernel, bias = current
            for column, label in enumerate(labels):
                if label in starting.classes:
                    source = starting.classes.index(label)
                    kernel[:, column] = values[0][:, source]
                    bias[column] = values[1][source]
            values = [kernel, bias]
        if [value.shape for value in values] != [value.shape for value in current]:
            raise FerError(f"{starting.path}: its layer shapes do not fit this network (another crop size?)")
        layer.set_weights([value.astype(np.float32) for value in values])


def divergence(model, last_loss: float, epoch: int, probabilities: np.ndarray) -> str | None:
    """Why a trained network is unusable, None when it is not: the training loss, a weight or
    a probability (on crops the caller chose) that is not a finite number."""
    if not math.isfinite(last_loss):
        return f"the training loss was no longer a finite number at epoch {epoch}"
    if not all(np.all(np.isfinite(np.asarray(weight))) for weight in model.get_weights()):
        return "the network's weights are no longer finite numbers"
    if not np.all(np.isfinite(probabilities)):
        return "the network's probabilities are not finite numbers"
    return None


def keras_probabilities(model, crops: np.ndarray, mean: np.ndarray, std: np.ndarray, flip: bool = False) -> np.ndarray:
    """Class probabilities from a Keras model for uint8 crops (batched, inference mode)."""
    x = ((crops.astype(np.float32) - mean) / std).astype(np.float32)[..., np.newaxis]
    probabilities = np.asarray(model(x, training=False))
    if flip:
        probabilities = (probabilities + np.asarray(model(x[:, :, ::-1], training=False))) / 2
    return probabilities


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold, so that a fold's numbers do not depend on which worker ran it."""
    return (seed * 1_000_003 + fold) % 2**31


def make_folds(selection: Selection, folds: int, group: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
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
                "--group subject needs the subject of every image, and this dataset's layout gives none "
                "(subjects come from JAFFE names, CK+ folders or CK+-style file names)"
            )
        subjects = sorted(set(selection.subjects.tolist()))
        if len(subjects) < folds:
            raise DatasetError(f"--group subject with {folds} folds needs at least {folds} subjects; there are {len(subjects)}")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(selection.crops, selection.targets, groups=selection.subjects))
    if group == "dataset":
        return dataset_folds(selection)
    if group != "random":
        raise DatasetError(f"unknown --group {group!r}; choose random, subject or dataset")
    smallest = int(counts.argmin())
    if counts[smallest] < folds:
        raise DatasetError(
            f"class {selection.labels[smallest]!r} has {counts[smallest]} images, fewer than the {folds} folds: "
            "use fewer --folds or leave it out with --classes"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    strata = selection.targets
    if selection.origins is not None:
        # Several datasets: every fold gets each dataset's classes in proportion, so that the
        # per-dataset figures of a fold rest on a fair share of that dataset.
        combined = np.unique(np.char.add(np.char.add(selection.origins, "/"), np.array(selection.labels)[strata]),
                             return_inverse=True)[1]
        if np.bincount(combined).min() >= folds:
            strata = combined
    return list(splitter.split(selection.crops, strata))


def dataset_folds(selection: Selection) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-dataset-out: fold k tests on the k-th dataset and trains on all the others."""
    if selection.origins is None:
        raise DatasetError("--group dataset needs several datasets: give two or more (fer crossval A B ...)")
    names = list(dict.fromkeys(selection.origins.tolist()))
    if len(names) < 2:
        raise DatasetError("--group dataset needs images of at least two datasets")
    return [(np.flatnonzero(selection.origins != name), np.flatnonzero(selection.origins == name)) for name in names]


def fold_inputs(crops: np.ndarray, origins: np.ndarray | None, train_index: np.ndarray, test_index: np.ndarray,
                mode: str) -> tuple[np.ndarray, np.ndarray]:
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


def train_fold(crops: np.ndarray, targets: np.ndarray, num_classes: int, task: FoldTask,
               on_epoch: Callable[[int, float, float], None] | None = None) -> dict:
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

    train_crops, test_crops = fold_inputs(crops, task.origins, train_index, test_index, task.config.normalisation)
    model, mean, std = fit(train_crops, targets[train_index], num_classes, task.config,
                           fold_seed(task.config.seed, task.fold), tracked)
    probabilities = keras_probabilities(model, test_crops, mean, std, task.config.test_time_flip)
    diverged = divergence(model, last["loss"], last["epoch"], probabilities)
    return {"key": task.key, "fold": task.fold, "probabilities": None if diverged else probabilities, "diverged": diverged,
            "seconds": time.perf_counter() - started, "mean": float(np.mean(mean)), "std": float(np.mean(std)),
            # Per-dataset statistics exist only inside the fold: such a network cannot be saved.
            "export": None if diverged or test_crops.dtype != np.uint8
            else fold_export(model, mean, std, task.config.test_time_flip)}


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

    @property
    def accuracies(self) -> np.ndarray:
        """The accuracies of the folds whose training did not diverge."""
        return np.array([fold.accuracy for fold in self.folds if fold.diverged is None], dtype=float)

    @property
    def diverged_folds(self) -> list[int]:
        return [fold.fold for fold in self.folds if fold.diverged is not None]

    @property
    def mean_accuracy(self) -> float:
        """NaN (null in JSON) without folds, or when a fold diverged: the rest is no protocol's result."""
        return float(self.accuracies.mean()) if self.folds and not self.diverged_folds else math.nan

    @property
    def std_accuracy(self) -> float:
        return float(self.accuracies.std()) if self.folds and not self.diverged_folds else math.nan

    def to_json(self) -> dict:
        """The report as standard JSON: figures that do not exist (no fold finished, or one diverged) are null."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "labels": self.labels,
            # per_dataset only where several datasets were combined: one dataset's report is as it was.
            "folds": [{key: value for key, value in fold.__dict__.items() if key != "per_dataset" or self.per_dataset}
                      for fold in self.folds],
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


def per_dataset_figures(selection: Selection, splits, results: dict[int, dict], fold_results: list[FoldResult],
                        complete: bool) -> dict[str, dict]:
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
        figures[name] = {"images": int(mine.sum()),
                         "classes": {label: int(np.count_nonzero(labels == i)) for i, label in enumerate(selection.labels)
                                     if np.any(labels == i)},
                         "fold_accuracies": [], "hits": 0, "tested": 0, "confusion": np.zeros((count, count), np.int64)}
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
            "images": entry["images"], "classes": entry["classes"], "tested": entry["tested"],
            "accuracy": entry["hits"] / entry["tested"] if known else None,
            "mean_accuracy": float(accuracies.mean()) if known else None,
            "std_accuracy": float(accuracies.std()) if known else None,
            "folds": len(accuracies),
            "confusion_matrix": entry["confusion"].tolist(),
        }
    return report


def protocol_warnings(selection: Selection, group: str, config: TrainConfig | None = None) -> list[str]:
    """What a reader must know to judge the numbers of this protocol."""
    notes = []
    if group == "dataset":
        names = list(dict.fromkeys(selection.origins.tolist()))
        notes.append(f"leave-one-dataset-out: each of {', '.join(names)} is tested by a network trained on the "
                     "other datasets only: new people, and whatever else differs between the datasets (camera, lighting, posing)")
        for name in names:
            others = set(selection.targets[selection.origins != name].tolist())
            unseen = [selection.labels[t] for t in sorted(set(selection.targets[selection.origins == name].tolist()) - others)]
            if unseen:
                notes.append(f"{name} left out: no other dataset has {', '.join(unseen)}, so its network cannot "
                             "predict that class and its images of it count as errors")
        if config is not None and config.normalisation == "per-dataset":
            notes.append("--normalisation per-dataset: a left-out dataset's z-score statistics come from its own "
                         "test images (no labels), which is transductive: the network saw none of its images, "
                         "but its statistics assume a batch of them at hand")
        return notes
    if group == "random":
        if selection.has_subjects:
            people = len(set(selection.subjects.tolist()))
            notes.append(
                f"random folds: the same people ({people} subjects) sit on both sides of every fold, "
                "so this measures recognition of people the model has seen; --group subject measures new people"
            )
        else:
            notes.append(
                "random folds on images whose subjects are unknown: the same people may sit on both sides "
                "of every fold, which flatters the accuracy"
            )
        names = [Path(path).name for path in selection.paths.tolist()]
        sequences = [name.rsplit("_", 1)[0] for name in names if name.count("_") >= 2 and name.startswith("S")]
        if sequences and len(set(sequences)) < len(sequences):
            notes.append(
                "several frames of one CK+ sequence are near-duplicates and fall into different folds"
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
    engine = engine or LocalEngine(workers)
    tasks = [FoldTask(index, config, index, train, test, selection.origins) for index, (train, test) in enumerate(splits)]
    results: dict[int, dict] = {}
    interrupted = False
    try:
        with contextlib.closing(engine.run(selection.crops, selection.targets, len(selection.labels), tasks,
                                           progress)) as finished:
            for result in finished:
                results[result["fold"]] = result
                if progress:
                    accuracy = None if result.get("diverged") else _accuracy(result, selection, splits)
                    progress({"kind": "fold", "fold": result["fold"], "folds": len(splits), "accuracy": accuracy})
    except KeyboardInterrupt:
        interrupted = True
    return assemble_crossval(dataset, selection, splits, config, group, results, engine.describe(len(tasks)),
                             time.perf_counter() - started, interrupted)


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
            fold_results.append(FoldResult(
                fold=index + 1, accuracy=None, train_size=len(train_index), test_size=len(test_index),
                test_subjects=sorted(set(selection.subjects[test_index].tolist()) - {""}) if group == "subject" else [],
                seconds=round(results[index]["seconds"], 2), diverged=results[index].get("diverged"),
            ))
            continue
        guesses = results[index]["probabilities"].argmax(axis=1)
        truth = selection.targets[test_index]
        true.append(truth)
        predicted.append(guesses)
        fold_results.append(FoldResult(
            fold=index + 1,
            accuracy=float(np.mean(guesses == truth)),
            train_size=len(train_index),
            test_size=len(test_index),
            test_subjects=sorted(set(selection.subjects[test_index].tolist()) - {""}) if group == "subject" else [],
            seconds=round(float(results[index]["seconds"]), 2),
        ))
        exported = results[index].get("export")
        if exported is not None:
            exports.append({**exported, "fold": index + 1,
                            "difference": _runtime_difference(exported, selection.crops[test_index],
                                                              results[index]["probabilities"], config.test_time_flip)})
        rows.extend({"path": str(selection.paths[i]), "fold": index + 1,
                     **({"dataset": str(selection.origins[i])} if selection.origins is not None else {}),
                     "true": selection.labels[t],
                     "predicted": selection.labels[g],
                     **{f"p_{label}": round(float(p), 6) for label, p in zip(selection.labels, probabilities)}}
                    for i, t, g, probabilities in zip(test_index, truth, guesses, results[index]["probabilities"]))
    true_all = np.concatenate(true) if true else np.zeros(0, int)
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, int)
    matrix, per_class, f1 = score_predictions(true_all, predicted_all, selection.labels)
    subjects = sorted(set(selection.subjects.tolist()) - {""})
    complete = bool(true) and len(true) == len(results)
    return CrossvalReport(
        dataset={"name": dataset.name, "path": str(dataset.location), "layout": dataset.meta.get("layout"),
                 "source": dataset.meta.get("source"), "images": len(selection.crops), "subjects": len(subjects),
                 "fingerprint": data_fingerprint(selection),
                 **({"datasets": dataset.meta["datasets"]} if "datasets" in dataset.meta else {})},
        protocol={"folds": len(splits), "group": group, "classes": selection.labels,
                  "workers": engine.get("workers"), "engine": engine,
                  "training": config.to_dict(), "recipe": config.recipe,
                  "differs_from_recipe": recipe_differences(config), "preprocess": dataset.meta.get("preprocess")},
        labels=selection.labels,
        folds=fold_results,
        confusion=np.asarray(matrix),
        per_class=per_class,
        # Figures over every fold, or none: the folds left after a divergence are no protocol's.
        macro_f1=float(np.mean(f1)) if true and len(true) == len(results) else math.nan,
        pooled_accuracy=float(np.mean(true_all == predicted_all)) if true and len(true) == len(results) else math.nan,
        warnings=(getattr(dataset, "notes", []) + protocol_warnings(selection, group, config) + starting_notes(config)
                  + split_notes(dataset)),
        seconds=seconds,
        interrupted=interrupted,
        planned_folds=len(splits),
        predictions=rows,
        per_dataset=per_dataset_figures(selection, splits, results, fold_results, complete),
        exports=exports,
    )


def score_predictions(true: np.ndarray, predicted: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict, np.ndarray]:
    """Confusion matrix (rows true, columns predicted), per-class precision/recall/F1/support
    and the F1 of each class, for integer targets into labels (crossval and evaluate)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    count = len(labels)
    if len(true) == 0:
        matrix, (precision, recall, f1, support) = np.zeros((count, count), int), (np.zeros(count),) * 4
    else:
        import warnings

        with warnings.catch_warnings():
            # One class only (an evaluation on one shared class): sklearn warns though labels are given.
            warnings.simplefilter("ignore", UserWarning)
            matrix = confusion_matrix(true, predicted, labels=range(count))
        precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=range(count),
                                                                         zero_division=0)
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    return np.asarray(matrix), per_class, np.asarray(f1)


def _runtime_difference(exported: dict, crops: np.ndarray, expected: np.ndarray, flip: bool) -> float:
    """Largest |numpy runtime - Keras| of a fold's exported network on its test crops."""
    from fercli.model import Member, NumpyNetwork

    network = exported["network"]
    member = Member(NumpyNetwork(network.specs, network.weights), network.mean, network.std)
    with np.errstate(all="ignore"):
        return float(np.abs(member.predict_proba(crops, flip) - expected).max()) if len(crops) else 0.0


def split_notes(dataset: PreparedDataset) -> list[str]:
    """What crossval says of a dataset's predefined splits (FER2013's Usage): it ignores them."""
    splits = getattr(dataset, "splits", None)
    names = sorted(set(splits.tolist()) - {""}) if splits is not None else []
    if not names:
        return []
    return [f"the dataset's predefined splits ({', '.join(names)}) are ignored: the folds are drawn from all its "
            "images; fer train --split and fer evaluate --split use them"]


def starting_notes(config: TrainConfig) -> list[str]:
    """What a report says of the starting model: where its knowledge came from."""
    if not config.init_model:
        return []
    starting = load_starting_model(config)
    trained_on = starting.meta.get("dataset") or {}
    return [f"every network started from {Path(config.init_model).name}, trained on "
            f"{trained_on.get('images', '?')} images of {trained_on.get('name', 'another dataset')} "
            f"(data fingerprint {starting.meta.get('data_fingerprint', '?')}), none of them in this dataset"]


def checked_start(config: TrainConfig, dataset: PreparedDataset, selection: Selection) -> TrainConfig:
    """config, once its starting model (if any) is known to fit and to hold nothing of this
    dataset: a model trained on the same images would have seen every test fold."""
    if not config.init_model:
        return config
    starting = load_starting_model(config)
    trained_on = starting.meta.get("dataset") or {}
    # Several datasets (ours or the starting model's): any one of them in common counts.
    sources = {dataset.meta.get("source")} | {part.get("source") for part in dataset.meta.get("datasets", [])}
    theirs = {trained_on.get("source")} | {part.get("source") for part in starting.meta.get("datasets") or []}
    same_source = bool((sources - {None}) & (theirs - {None}))
    if same_source or starting.meta.get("data_fingerprint") == data_fingerprint(selection):
        raise FerError(f"{config.init_model}: the starting model was trained on this dataset "
                       f"({trained_on.get('name', dataset.name)}), so every test fold would be in it; "
                       "start from a model trained on other people")
    # The same images under another name (a copied folder): the crops' own hashes tell.
    seen = sum(starting.seen_in_training(selection.crops) or [])
    if seen:
        raise FerError(f"{config.init_model}: the starting model was trained on {seen} of these "
                       f"{len(selection.crops)} images, so test folds would hold images it has seen; "
                       "start from a model trained on other people")
    if starting.preprocess.fingerprint() != PreprocessConfig.from_dict(dataset.meta["preprocess"]).fingerprint():
        raise FerError(f"{config.init_model}: the starting model's crops were made with other "
                       "preprocessing settings than this dataset's")
    return config


def _accuracy(result: dict, selection: Selection, splits) -> float:
    test_index = splits[result["fold"]][1]
    return float(np.mean(result["probabilities"].argmax(axis=1) == selection.targets[test_index]))


def data_fingerprint(selection: Selection) -> str:
    """Identifies the exact training data: crops, labels and class order."""
    import hashlib

    digest = hashlib.sha256(selection.crops.tobytes())
    digest.update(selection.targets.tobytes())
    return fingerprint({"crops": digest.hexdigest(), "labels": selection.labels})


@dataclass
class TrainResult:
    path: Path
    classes: list[str]
    images: int
    epochs: int
    loss: float
    accuracy: float
    seconds: float
    runtime_difference: float  # largest |numpy runtime - Keras| probability on the training crops


def train_model(
    dataset: PreparedDataset,
    config: TrainConfig,
    output: Path,
    progress: Progress | None = None,
    threads: int | None = None,
    keep_existing: bool = False,
    ensemble: int = 1,
) -> TrainResult:
    """Train on every selected image of a dataset and save the model file predict reads.

    keep_existing: if output exists (a name another run made up too), save to output-2, ...
    ensemble: train this many networks with different seeds (the first with config.seed)
    into one file, whose probabilities are their mean.
    The model is checked before it takes the name (finite weights and probabilities, the
    numpy runtime within 1e-4 of Keras): TrainingError when training diverged, and whatever
    was at output stays as it was.
    """
    from fercli.model import MAX_ENSEMBLE_MEMBERS, export_network, load_model, probe_crops, save_networks

    if not 1 <= ensemble <= MAX_ENSEMBLE_MEMBERS:
        raise FerError(f"--ensemble must be 1 to {MAX_ENSEMBLE_MEMBERS}, not {ensemble}")
    started = time.perf_counter()
    selection = select_classes(dataset, config.classes)
    if config.normalisation == "per-dataset" and selection.origins is not None:
        raise FerError("--normalisation per-dataset is for fer crossval: a saved model normalises a face from any "
                       "camera, and fer predict cannot know which dataset a face belongs to; train with "
                       "--normalisation global")
    config = checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    configure_tensorflow(threads)
    last = {"loss": math.nan, "accuracy": math.nan, "epoch": 0}
    member = 0

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        last.update(loss=loss, accuracy=accuracy, epoch=epoch)
        if progress:
            progress({"kind": "epoch", "fold": member, "epoch": epoch, "epochs": config.epochs, "loss": loss, "accuracy": accuracy})

    preprocess = PreprocessConfig.from_dict(dataset.meta["preprocess"])
    extra = {"test_time_flip": config.test_time_flip, "data_fingerprint": data_fingerprint(selection),
             "dataset": {"name": dataset.name, "source": dataset.meta.get("source"), "images": len(selection.crops),
                         "split": dataset.meta.get("split")}}
    if "datasets" in dataset.meta:  # several combined: every one, with what it gave
        extra["datasets"] = [{key: part[key] for key in ("name", "dataset", "source", "fingerprint", "images", "classes")}
                             for part in dataset.meta["datasets"]]
    # The exported file must give what Keras gives, in finite numbers: checked on a sample
    # and on the load check's own images, before the file takes its name.
    sample = np.concatenate([selection.crops[:64], probe_crops(selection.crops.shape[1])])
    if ensemble > 1:
        import tensorflow as tf

        # Each member traces its own epoch function; TensorFlow's warning about retracing is noise here.
        tf.get_logger().setLevel("ERROR")
    networks, outputs = [], []
    for member in range(ensemble):
        seed = config.seed if member == 0 else fold_seed(config.seed, member)
        model, mean, std = fit(selection.crops, selection.targets, len(selection.labels), config, seed, on_epoch)
        outputs.append(keras_probabilities(model, sample, mean, std, config.test_time_flip))
        diverged = divergence(model, last["loss"], last["epoch"], outputs[-1])
        if diverged:
            left = "" if keep_existing or not Path(output).exists() else f"; {output} was left as it was"
            which = f" (network {member + 1} of {ensemble})" if ensemble > 1 else ""
            raise TrainingError(f"training diverged{which}: {diverged}; no model was saved{left} (try a smaller --lr)")
        networks.append(export_network(model, mean, std))
    expected = np.mean(outputs, axis=0)
    if ensemble > 1:
        extra["ensemble"] = {"kind": "seeds", "members": ensemble,
                             "seeds": [config.seed] + [fold_seed(config.seed, number) for number in range(1, ensemble)]}
    checked: dict[str, float] = {}

    def check(temporary: Path) -> None:
        exported = load_model(temporary).predict_proba(sample)
        difference = float(np.abs(exported - expected).max())
        if not difference <= 1e-4:  # also NaN
            raise FerError(f"the exported model disagrees with Keras by {difference:.2g}; nothing was saved "
                           "(a bug: please report it)")
        checked["difference"] = difference

    output = save_networks(output, networks, selection.labels, preprocess, config, extra, keep_existing,
                           training_crops=selection.crops, check=check)
    return TrainResult(
        path=output, classes=selection.labels, images=len(selection.crops), epochs=config.epochs,
        loss=last["loss"], accuracy=last["accuracy"], seconds=time.perf_counter() - started,
        runtime_difference=checked["difference"],
    )


def save_crossval(report: CrossvalReport, folder: Path, title: str | None = None) -> dict[str, Path]:
    """Write report.json, confusion.png and predictions.csv of a cross-validation (or of an
    evaluation, its one "fold"; title: the confusion image's, default the crossval's)."""
    import csv
    import io

    from fercli.report import confusion_image

    files = {"report": atomic_write_json(folder / "report.json", report.to_json())}
    group = report.protocol["group"] if report.protocol["group"] in ("subject", "dataset") else "random"
    if report.diverged_folds:
        figures = f"{len(report.diverged_folds)} diverged"
    elif math.isnan(report.mean_accuracy):
        figures = "no result"
    else:
        figures = f"{report.mean_accuracy:.1%} +/- {report.std_accuracy:.1%}"
    title = title or f"{report.dataset['name']}: {len(report.folds)}/{report.planned_folds} folds ({group}), {figures}"
    files["confusion"] = confusion_image(report.confusion, report.labels, folder / "confusion.png", title)
    for number, (name, figures) in enumerate(report.per_dataset.items(), start=1):
        accuracy = "no result" if figures["accuracy"] is None else f"{figures['accuracy']:.1%} of {figures['tested']}"
        files[f"confusion {name}"] = confusion_image(
            np.array(figures["confusion_matrix"]), report.labels,
            folder / f"confusion-{number}-{slug(name)}.png", f"{name}: {accuracy} ({'left out, trained on the others' if group == 'dataset' else group + ' folds'})")
    text = io.StringIO()
    origin = ["dataset"] if report.per_dataset else []
    writer = csv.DictWriter(text, fieldnames=["path", "fold", *origin, "true", "predicted",
                                              *(f"p_{label}" for label in report.labels)])
    writer.writeheader()
    writer.writerows(report.predictions)
    files["predictions"] = atomic_write_text(folder / "predictions.csv", text.getvalue())
    return files


def save_crossval_model(report: CrossvalReport, dataset: PreparedDataset, output: Path, run: Path | None = None,
                        keep_existing: bool = True) -> Path:
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
            raise FerError(f"fold {exported['fold']}'s exported network disagrees with Keras by "
                           f"{exported['difference']:.2g}; no model was saved (a bug: please report it)")
    config = TrainConfig.from_dict(report.protocol["training"])
    selection = select_classes(dataset, tuple(report.labels))
    expected = np.mean([exported["probe"] for exported in report.exports], axis=0)

    def check(temporary: Path) -> None:
        exported = load_model(temporary).predict_proba(probe_crops(selection.crops.shape[1]))
        difference = float(np.abs(exported - expected).max())
        if not difference <= 1e-4:  # also NaN
            raise FerError(f"the exported ensemble disagrees with Keras by {difference:.2g}; nothing was saved "
                           "(a bug: please report it)")

    extra = {"test_time_flip": config.test_time_flip, "data_fingerprint": report.dataset["fingerprint"],
             "dataset": {"name": dataset.name, "source": dataset.meta.get("source"), "images": len(selection.crops)},
             "ensemble": {"kind": "crossval", "members": len(report.exports), "folds": report.planned_folds,
                          "group": report.protocol["group"], "run": str(run) if run else None,
                          "mean_accuracy": report.mean_accuracy, "std_accuracy": report.std_accuracy,
                          "note": "each member was trained on all folds but one; together they saw every image"}}
    preprocess = PreprocessConfig.from_dict(dataset.meta["preprocess"])
    networks = [exported["network"] for exported in sorted(report.exports, key=lambda item: item["fold"])]
    return save_networks(output, networks, selection.labels, preprocess, config, extra, keep_existing,
                         training_crops=selection.crops, check=check)
