"""fer train: a dataset's images and classes chosen, one network or an ensemble trained on
them (fercli.learn.fitting), and the model file predict reads. Cross-validation (folds,
workers, its report) is fercli.learn.crossval.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fercli.core.config import PreprocessConfig, TrainConfig, validation_share
from fercli.core.errors import FerError, TrainingError
from fercli.core.events import Event, Progress
from fercli.core.interrupts import Interrupts
from fercli.data.combined import preprocess_command, settings_difference
from fercli.data.prepared import PreparedDataset
from fercli.learn.fitting import (
    Fitted,
    configure_tensorflow,
    divergence,
    fit,
    fold_seed,
    keras_probabilities,
    load_starting_model,
)
from fercli.learn.network import export_check
from fercli.learn.selection import Selection, select_classes, selection_fingerprint


def starting_notes(config: TrainConfig) -> list[str]:
    """What a report says of the starting model: where its knowledge came from."""
    if not config.init_model:
        return []
    starting = load_starting_model(config)
    trained_on = starting.meta.get("dataset") or {}
    return [
        f"every network started from {Path(config.init_model).name} (a {config.variant} "
        f"network), trained on {trained_on.get('images', '?')} images of "
        f"{trained_on.get('name', 'another dataset')} (data fingerprint "
        f"{starting.meta.get('data_fingerprint', '?')}), none of them in this dataset; "
        f"fine-tuned for {config.epochs} epoch{'' if config.epochs == 1 else 's'}"
    ]


def checked_start(
    config: TrainConfig, dataset: PreparedDataset, selection: Selection
) -> TrainConfig:
    """config, once its starting model (if any) is known to fit and to hold nothing of this
    dataset: a model trained on the same images would have seen every image it is tested on."""
    if not config.init_model:
        return config
    starting = load_starting_model(config)
    trained_on = starting.meta.get("dataset") or {}
    # Several datasets (ours or the starting model's): any one of them in common counts.
    sources = {dataset.meta.get("source")} | {
        part.get("source") for part in dataset.meta.get("datasets", [])
    }
    theirs = {trained_on.get("source")} | {
        part.get("source") for part in starting.meta.get("datasets") or []
    }
    same_source = bool((sources - {None}) & (theirs - {None}))
    if same_source or starting.meta.get("data_fingerprint") == selection_fingerprint(selection):
        raise FerError(
            f"{config.init_model}: the starting model was trained on this dataset "
            f"({trained_on.get('name', dataset.name)}), so no test on these images (a crossval "
            "fold, fer evaluate) would be fair; start from a model trained on other people"
        )
    # The same images under another name (a copied folder): the crops' own hashes tell.
    seen = sum(starting.seen_in_training(selection.crops) or [])
    if seen:
        raise FerError(
            f"{config.init_model}: the starting model was trained on {seen} of these "
            f"{len(selection.crops)} images, so no test on them (a crossval fold, fer evaluate) "
            "would be fair; start from a model trained on other people"
        )
    difference = settings_difference(starting.preprocess.to_dict(), dataset.meta["preprocess"])
    if difference:
        source = dataset.meta.get("source") or dataset.name
        raise FerError(
            f"{config.init_model}: the starting model's crops were made with other "
            f"preprocessing settings than {dataset.name}'s ({difference}); run "
            f"`{preprocess_command(str(source), starting.preprocess.to_dict(), dataset.meta)}` "
            "first"
        )
    check_starting_layers(starting, config)
    return config


def check_starting_layers(starting, config: TrainConfig) -> None:
    """FerError unless the starting model's layers have the shapes of config's network (its
    variant, for the model's crop size): refused before any work, not when a fold's network
    is built. The classifier's columns are copied by class name (start_from), so only its
    inputs must fit."""
    from fercli.learn.network import weight_shapes

    size = starting.preprocess.crop_size
    expected = weight_shapes(config.variant, size, len(config.classes))
    theirs = [
        [tuple(starting.network.weights[key].shape) for key in spec["weights"]]
        for spec in starting.network.specs
        if spec["weights"]
    ]
    fits = (
        len(theirs) == len(expected)
        and theirs[:-1] == expected[:-1]
        and len(theirs[-1]) == 2
        and len(theirs[-1][0]) == 2
        and theirs[-1][0][0] == expected[-1][0][0]
    )
    if not fits:
        raise FerError(
            f"{config.init_model}: its layers do not fit a {config.variant} network for "
            f"{size}x{size} crops; start from a model trained with --variant {config.variant} "
            "on crops of this size"
        )


@dataclass
class TrainResult:
    """What fer train did: the model file it saved and the figures of its last epoch."""

    path: Path
    classes: list[str]
    images: int
    epochs: int
    loss: float
    accuracy: float
    seconds: float
    runtime_difference: float  # largest |numpy runtime - Keras| probability on the training crops
    networks: int = 1  # an ensemble's members
    dataset: str = ""  # the (combined) dataset's name
    # Several datasets combined: each one's name, images and classes, and notes on the combination.
    parts: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # --validation: the held-out images, and the epoch each network was kept at and its
    # accuracy on them (validation_summary).
    validation: dict = field(default_factory=dict)
    # Not in the JSON: a Ctrl-C came once every network had been trained; it was held back and
    # the model saved all the same (fer train still exits 130 and says so).
    interrupted_after_training: bool = False


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
    Ctrl-C while the networks train raises KeyboardInterrupt (nothing saved); once they are
    trained it is held back (core.interrupts): the model is saved and the result says so
    (interrupted_after_training). Within a caller's Interrupts, theirs is held, and stays so.
    """
    from fercli.infer.model import MAX_ENSEMBLE_MEMBERS, probe_crops

    if not 1 <= ensemble <= MAX_ENSEMBLE_MEMBERS:
        raise FerError(f"--ensemble must be 1 to {MAX_ENSEMBLE_MEMBERS}, not {ensemble}")
    started = time.perf_counter()
    selection = select_classes(dataset, config.classes)
    if config.normalisation == "per-dataset" and selection.origins is not None:
        raise FerError(
            "--normalisation per-dataset is for fer crossval: a saved model normalises a face from "
            "any camera, and fer predict cannot know which dataset a face belongs to; train with "
            "--normalisation global"
        )
    config = checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    validation = validation_data(config, dataset, selection)
    configure_tensorflow(threads)
    if progress:
        progress(Event("start", folds=ensemble, epochs=config.epochs, config=config))
    # The exported file must give what Keras gives, in finite numbers: checked on a sample
    # and on the load check's own images, before the file takes its name.
    sample = np.concatenate([selection.crops[:64], probe_crops(selection.crops.shape[1])])
    with Interrupts() as interrupts:
        trained = _train_networks(selection, config, ensemble, sample, progress, validation)
        # The training is done: a Ctrl-C from here on would throw it away, or stop between
        # the model file's rename and the return that says it is there.
        interrupts.hold()
        failure = next((item for item in trained if item.diverged), None)
        if failure is not None:
            raise _diverged_error(failure, ensemble, output, keep_existing)
        output, difference = _save_model(
            output, trained, dataset, selection, config, sample, keep_existing
        )
        last = trained[-1]
        return TrainResult(
            path=output,
            classes=selection.labels,
            images=len(selection.crops),
            epochs=max(item.fitted.epochs_trained for item in trained),
            loss=last.loss,
            accuracy=last.accuracy,
            seconds=time.perf_counter() - started,
            runtime_difference=difference,
            networks=ensemble,
            dataset=dataset.name,
            parts=getattr(dataset, "parts", []),
            notes=[*getattr(dataset, "notes", []), *time_limit_notes(config, trained)],
            validation=validation_summary([item.fitted for item in trained], config),
            interrupted_after_training=interrupts.received,
        )


def time_limit_notes(config: TrainConfig, trained: list) -> list[str]:
    """What --time-limit cut, if anything: the epochs each network was trained for instead of
    config.epochs, and the pace that decided it."""
    cut = [item.fitted for item in trained if item.fitted.epochs_trained < config.epochs]
    if not cut or any(item.diverged for item in trained):
        return []
    done = ", ".join(str(fitted.epochs_trained) for fitted in cut)
    pace = max(fitted.seconds / fitted.epochs_trained for fitted in cut)
    return [
        f"--time-limit {config.time_limit:g} minutes: {done} of {config.epochs} epochs fitted "
        f"(an epoch took {pace:.0f} s here); --time-limit 0 trains them all"
    ]


@dataclass
class _Trained:
    """One network of fer train's model file, trained: its figures and its export."""

    number: int
    fitted: Fitted
    loss: float  # of its last epoch
    accuracy: float
    output: np.ndarray  # Keras's probabilities on the save check's sample
    diverged: str | None
    network: object  # the ExportedNetwork (None where it diverged)


def _diverged_error(
    failure: _Trained, ensemble: int, output: Path, keep_existing: bool
) -> TrainingError:
    """The error of a training that diverged: which network (of an ensemble), why, and that
    whatever was at output stays as it was (unless keep_existing saves beside it)."""
    left = "" if keep_existing or not Path(output).exists() else f"; {output} was left as it was"
    which = f" (network {failure.number + 1} of {ensemble})" if ensemble > 1 else ""
    return TrainingError(
        f"training diverged{which}: {failure.diverged}; no model was saved{left} (try a "
        "smaller --lr)"
    )


def _save_model(
    output: Path,
    trained: list[_Trained],
    dataset: PreparedDataset,
    selection: Selection,
    config: TrainConfig,
    sample: np.ndarray,
    keep_existing: bool,
) -> tuple[Path, float]:
    """Save the trained networks as one model file, checked first against Keras's mean
    probabilities on sample; returns the path it took and the largest |numpy runtime - Keras|
    difference."""
    from fercli.infer.model import save_networks

    checked: dict[str, float] = {}
    path = save_networks(
        output,
        [item.network for item in trained],
        selection.labels,
        PreprocessConfig.from_dict(dataset.meta["preprocess"]),
        config,
        _model_metadata(dataset, selection, config, [item.fitted for item in trained]),
        keep_existing,
        training_crops=selection.crops,
        training_sources=selection.sources,
        check=export_check(
            sample,
            np.mean([item.output for item in trained], axis=0),
            "the exported model",
            checked,
        ),
    )
    return path, checked["difference"]


def _train_networks(
    selection: Selection,
    config: TrainConfig,
    ensemble: int,
    sample: np.ndarray,
    progress: Progress | None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[_Trained]:
    """The networks of a model file, one after the other (seeds differ), until one diverges.
    validation: validation_data's images, scored after every epoch."""
    from fercli.learn.network import export_network

    if ensemble > 1:
        import tensorflow as tf

        # Each network traces its own epoch function: TensorFlow's retracing warning is noise.
        tf.get_logger().setLevel("ERROR")
    per_image = config.normalisation == "image"
    trained: list[_Trained] = []
    for number in range(ensemble):
        last = {"loss": math.nan, "accuracy": math.nan, "epoch": 0}

        def on_epoch(
            epoch: int, loss: float, accuracy: float, held: float | None, epochs: int
        ) -> None:
            last.update(loss=loss, accuracy=accuracy, epoch=epoch)
            if progress:
                progress(
                    Event(
                        "epoch",
                        fold=number,
                        epoch=epoch,
                        epochs=epochs,
                        loss=loss,
                        accuracy=accuracy,
                        validation_accuracy=held,
                    )
                )

        seed = config.seed if number == 0 else fold_seed(config.seed, number)
        fitted = fit(
            selection.crops,
            selection.targets,
            len(selection.labels),
            config,
            seed,
            on_epoch,
            origins=selection.origins,
            validation=validation,
        )
        model, mean, std = fitted.model, fitted.mean, fitted.std
        output = keras_probabilities(model, sample, mean, std, config.test_time_flip, per_image)
        diverged = divergence(model, last["loss"], last["epoch"], output)
        network = None if diverged else export_network(model, mean, std, per_image)
        trained.append(
            _Trained(number, fitted, last["loss"], last["accuracy"], output, diverged, network)
        )
        if diverged:
            break
    return trained


def _model_metadata(
    dataset: PreparedDataset, selection: Selection, config: TrainConfig, fitted: list[Fitted]
) -> dict:
    """What fer train's model file says of its training besides the settings: the data
    (every dataset of a combination, with what it gave), the ensemble's seeds, --validation's
    choice."""
    extra: dict = {
        "test_time_flip": config.test_time_flip,
        "data_fingerprint": selection_fingerprint(selection),
        "dataset": {
            "name": dataset.name,
            "source": dataset.meta.get("source"),
            "images": len(selection.crops),
            "split": dataset.meta.get("split"),
        },
    }
    if "datasets" in dataset.meta:
        extra["datasets"] = [
            {
                key: part[key]
                for key in ("name", "dataset", "source", "fingerprint", "images", "classes")
            }
            for part in dataset.meta["datasets"]
        ]
    if len(fitted) > 1:
        extra["ensemble"] = {
            "kind": "seeds",
            "members": len(fitted),
            "seeds": [config.seed] + [fold_seed(config.seed, n) for n in range(1, len(fitted))],
        }
    if validation_summary(fitted, config):
        extra["validation"] = validation_summary(fitted, config)
    if any(item.epochs_trained < config.epochs for item in fitted):
        extra["epochs_trained"] = [item.epochs_trained for item in fitted]
    return extra


def validation_summary(fitted: list[Fitted], config: TrainConfig) -> dict:
    """What --validation chose for each network: the epoch kept and its accuracy on the
    held-out images, and whether they were a share of the images selected for training
    (held out of them) or another dataset's; {} without --validation."""
    if not fitted or fitted[0].validation_accuracy is None:
        return {}
    return {
        "images": fitted[0].validation_images,
        "share": validation_share(config.validation) is not None,
        "epochs": [item.epoch for item in fitted],
        "accuracies": [round(float(item.validation_accuracy or 0.0), 4) for item in fitted],
    }


def validation_data(
    config: TrainConfig, dataset: PreparedDataset, selection: Selection
) -> tuple[np.ndarray, np.ndarray] | None:
    """--validation DATASET: that preprocessed dataset's images of the selection's classes (by
    name, as labels.LABEL_ALIASES spells them), as (crops, targets); None for a share or none.
    DatasetError when it has none of them, crops made with other settings than dataset's (a
    network of another crop size cannot score them), or images being trained on (they would
    not be held out)."""
    from fercli.core.errors import DatasetError
    from fercli.core.hashing import crop_digests
    from fercli.core.labels import canonical_label
    from fercli.data.prepared import not_yet_preprocessed, resolve_dataset

    if not config.validation or validation_share(config.validation) is not None:
        return None
    if not_yet_preprocessed(config.validation):
        # An original folder not preprocessed yet: it must be made as the training data was.
        raise DatasetError(
            f"--validation {config.validation}: not preprocessed yet; run "
            f"`{preprocess_command(config.validation, dataset.meta['preprocess'])}` first"
        )
    held = resolve_dataset(config.validation)
    difference = settings_difference(held.meta["preprocess"], dataset.meta["preprocess"])
    if difference:
        source = held.meta.get("source") or held.name
        raise DatasetError(
            f"--validation {config.validation}: its crops were made with other preprocessing "
            f"settings than {dataset.name}'s ({difference}); run "
            f"`{preprocess_command(str(source), dataset.meta['preprocess'], held.meta)}` first"
        )
    wanted = {canonical_label(label): index for index, label in enumerate(selection.labels)}
    targets = np.array([wanted.get(canonical_label(label), -1) for label in held.labels])
    kept = targets >= 0
    if not kept.any():
        raise DatasetError(
            f"--validation {config.validation}: none of its images is of the classes trained "
            f"({', '.join(selection.labels)})"
        )
    training = {row.tobytes() for row in crop_digests(selection.crops)}
    seen = sum(row.tobytes() in training for row in crop_digests(held.crops[kept]))
    if seen:
        raise DatasetError(
            f"--validation {config.validation}: {seen} of its {int(kept.sum())} images are "
            "among the images trained on, so they are not held out; give another dataset, or "
            "a share of the training images (--validation 0.1)"
        )
    return held.crops[kept], targets[kept]
