"""Training one network: which images and classes take part, their z-score statistics,
TensorFlow's set-up, the training loop, the checks of a trained network, and `fer train`'s
model file. Cross-validation (folds, workers, its report) is fercli.learn.crossval.

TensorFlow is only ever imported in training processes (fer train, crossval's fold workers),
never by the CLI itself.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.core.errors import FerError, TrainingError
from fercli.core.events import Event, Progress
from fercli.data.prepared import PreparedDataset
from fercli.learn.network import export_check
from fercli.learn.selection import Selection, normalisation, select_classes, selection_fingerprint


def _quiet_import_tensorflow():
    """Import TensorFlow without the log lines its C++ core writes straight to stderr
    (absl and oneDNN notices that TF_CPP_MIN_LOG_LEVEL no longer reaches)."""
    import sys

    from fercli.media.images import quiet_stderr

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

    from fercli.learn.augment import TrainingImages
    from fercli.learn.network import build_model, make_optimizer

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = normalisation(crops, config.normalisation)
    model = build_model(num_classes, config.variant, crops.shape[1])
    if config.init_model:
        start_from(model, load_starting_model(config), list(config.classes))
    optimizer = make_optimizer(config)
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    batch_size = config.batch_size
    size = crops.shape[1]

    # One trace for every chunk size (a full chunk, the epoch's last one).
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, size, size, 1], tf.float32),
            tf.TensorSpec([None, num_classes], tf.float32),
        ]
    )
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
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
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
    from fercli.infer.model import load_model

    starting = load_model(Path(config.init_model))
    variant = starting.meta.get("training", {}).get("variant")
    if variant != config.variant:
        raise FerError(
            f"{config.init_model}: the starting model is a {variant!r} network; "
            f"train with --variant {variant} to start from it"
        )
    return starting


def start_from(model, starting, labels: list[str]) -> None:
    """Copy a fercli model's weights into a Keras network of the same variant. The classifier's
    columns are matched by class name; classes the starting model lacks keep their fresh
    initialisation (e.g. neutral, when starting from a CK+48 model)."""
    layers = [layer for layer in model.layers if layer.get_weights()]
    specs = [spec for spec in starting.network.specs if spec["weights"]]
    if len(layers) != len(specs):
        raise FerError(f"{starting.path}: its layers do not fit this network")
    for position, (layer, spec) in enumerate(zip(layers, specs, strict=True)):
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
            raise FerError(
                f"{starting.path}: its layer shapes do not fit this network (another crop size?)"
            )
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


def keras_probabilities(
    model,
    crops: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    flip: bool = False,
    per_image: bool = False,
) -> np.ndarray:
    """Class probabilities from a Keras model for uint8 crops (batched, inference mode);
    per_image: each crop standardised by its own statistics first (--normalisation image)."""
    from fercli.infer.model import standardise_each

    values = standardise_each(crops) if per_image else crops.astype(np.float32)
    x = ((values - mean) / std).astype(np.float32)[..., np.newaxis]
    probabilities = np.asarray(model(x, training=False))
    if flip:
        probabilities = (probabilities + np.asarray(model(x[:, :, ::-1], training=False))) / 2
    return probabilities


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold, so that a fold's numbers do not depend on which worker ran it."""
    return (seed * 1_000_003 + fold) % 2**31


def starting_notes(config: TrainConfig) -> list[str]:
    """What a report says of the starting model: where its knowledge came from."""
    if not config.init_model:
        return []
    starting = load_starting_model(config)
    trained_on = starting.meta.get("dataset") or {}
    return [
        f"every network started from {Path(config.init_model).name}, trained on "
        f"{trained_on.get('images', '?')} images of {trained_on.get('name', 'another dataset')} "
        f"(data fingerprint {starting.meta.get('data_fingerprint', '?')}), none of them in this "
        "dataset"
    ]


def checked_start(
    config: TrainConfig, dataset: PreparedDataset, selection: Selection
) -> TrainConfig:
    """config, once its starting model (if any) is known to fit and to hold nothing of this
    dataset: a model trained on the same images would have seen every test fold."""
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
            f"({trained_on.get('name', dataset.name)}), so every test fold would be in it; "
            "start from a model trained on other people"
        )
    # The same images under another name (a copied folder): the crops' own hashes tell.
    seen = sum(starting.seen_in_training(selection.crops) or [])
    if seen:
        raise FerError(
            f"{config.init_model}: the starting model was trained on {seen} of these "
            f"{len(selection.crops)} images, so test folds would hold images it has seen; "
            "start from a model trained on other people"
        )
    if (
        starting.preprocess.fingerprint()
        != PreprocessConfig.from_dict(dataset.meta["preprocess"]).fingerprint()
    ):
        raise FerError(
            f"{config.init_model}: the starting model's crops were made with other "
            "preprocessing settings than this dataset's"
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
    from fercli.infer.model import MAX_ENSEMBLE_MEMBERS, probe_crops, save_networks
    from fercli.learn.network import export_network

    if not 1 <= ensemble <= MAX_ENSEMBLE_MEMBERS:
        raise FerError(f"--ensemble must be 1 to {MAX_ENSEMBLE_MEMBERS}, not {ensemble}")
    started = time.perf_counter()
    selection = select_classes(dataset, config.classes)
    if config.normalisation == "per-dataset" and selection.origins is not None:
        raise FerError(
            "--normalisation per-dataset is for fer crossval: a saved model normalises a face from "
            "any "
            "camera, and fer predict cannot know which dataset a face belongs to; train with "
            "--normalisation global"
        )
    config = checked_start(replace(config, classes=tuple(selection.labels)), dataset, selection)
    configure_tensorflow(threads)
    last = {"loss": math.nan, "accuracy": math.nan, "epoch": 0}
    member = 0

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        last.update(loss=loss, accuracy=accuracy, epoch=epoch)
        if progress:
            progress(
                Event(
                    "epoch",
                    fold=member,
                    epoch=epoch,
                    epochs=config.epochs,
                    loss=loss,
                    accuracy=accuracy,
                )
            )

    preprocess = PreprocessConfig.from_dict(dataset.meta["preprocess"])
    extra = {
        "test_time_flip": config.test_time_flip,
        "data_fingerprint": selection_fingerprint(selection),
        "dataset": {
            "name": dataset.name,
            "source": dataset.meta.get("source"),
            "images": len(selection.crops),
            "split": dataset.meta.get("split"),
        },
    }
    if "datasets" in dataset.meta:  # several combined: every one, with what it gave
        extra["datasets"] = [
            {
                key: part[key]
                for key in ("name", "dataset", "source", "fingerprint", "images", "classes")
            }
            for part in dataset.meta["datasets"]
        ]
    # The exported file must give what Keras gives, in finite numbers: checked on a sample
    # and on the load check's own images, before the file takes its name.
    sample = np.concatenate([selection.crops[:64], probe_crops(selection.crops.shape[1])])
    if ensemble > 1:
        import tensorflow as tf

        # Each member traces its own epoch function; TensorFlow's warning about retracing is noise
        # here.
        tf.get_logger().setLevel("ERROR")
    networks, outputs = [], []
    per_image = config.normalisation == "image"
    for member in range(ensemble):
        seed = config.seed if member == 0 else fold_seed(config.seed, member)
        model, mean, std = fit(
            selection.crops, selection.targets, len(selection.labels), config, seed, on_epoch
        )
        outputs.append(
            keras_probabilities(model, sample, mean, std, config.test_time_flip, per_image)
        )
        diverged = divergence(model, last["loss"], last["epoch"], outputs[-1])
        if diverged:
            left = (
                ""
                if keep_existing or not Path(output).exists()
                else f"; {output} was left as it was"
            )
            which = f" (network {member + 1} of {ensemble})" if ensemble > 1 else ""
            raise TrainingError(
                f"training diverged{which}: {diverged}; no model was saved{left} (try a smaller "
                "--lr)"
            )
        networks.append(export_network(model, mean, std, per_image))
    expected = np.mean(outputs, axis=0)
    if ensemble > 1:
        extra["ensemble"] = {
            "kind": "seeds",
            "members": ensemble,
            "seeds": [config.seed]
            + [fold_seed(config.seed, number) for number in range(1, ensemble)],
        }
    checked: dict[str, float] = {}
    check = export_check(sample, expected, "the exported model", checked)

    output = save_networks(
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
    return TrainResult(
        path=output,
        classes=selection.labels,
        images=len(selection.crops),
        epochs=config.epochs,
        loss=last["loss"],
        accuracy=last["accuracy"],
        seconds=time.perf_counter() - started,
        runtime_difference=checked["difference"],
        networks=ensemble,
        dataset=dataset.name,
        parts=getattr(dataset, "parts", []),
        notes=getattr(dataset, "notes", []),
    )
