"""One network trained: TensorFlow's set-up, the training loop (augmented images a chunk at a
time, class weights, the epoch chosen on held-out images), a starting model's weights, and
the checks of a trained network. fer train's model file is fercli.learn.training; a
cross-validation's folds, fercli.learn.folds.

TensorFlow is only ever imported in training processes (fer train, crossval's fold workers),
never by the CLI itself.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fercli.core.config import TrainConfig
from fercli.core.errors import FerError
from fercli.learn.selection import (
    class_weights,
    dataset_draws,
    held_out_share,
    normalisation,
)


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
    # TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI and
    # newer; on an AVX2 CPU without them its training steps took 1.3 to 3 times as long
    # (bench/train_step.py, docs/speed.md). Read when TensorFlow is first imported.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    tf = _quiet_import_tensorflow()

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process (tests train several models)
    tf.config.experimental.enable_op_determinism()


@dataclass
class Fitted:
    """A trained Keras network, its z-score statistics, and the epoch it was kept at."""

    model: object
    mean: np.ndarray
    std: np.ndarray
    # --validation: the epoch whose network was kept (the best on the held-out images), their
    # accuracy then, and how many there were; 0, None and 0 without.
    epoch: int = 0
    validation_accuracy: float | None = None
    validation_images: int = 0
    # The epochs it was trained for (config.epochs, fewer where config.time_limit cut them)
    # and the seconds they took.
    epochs_trained: int = 0
    seconds: float = 0.0


def fit(
    crops: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    seed: int,
    on_epoch: Callable[..., None] | None = None,
    origins: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> Fitted:
    """Train a network on uint8 crops.

    on_epoch(epoch, loss, accuracy, validation_accuracy, epochs) is called after every epoch,
    epochs being the count planned then (config.epochs, or fewer once config.time_limit
    cuts them: epochs_in_time). The augmented images are made a chunk at a time
    (augment.TrainingImages), and each chunk runs as one TensorFlow graph call over its
    batches, which removes most per-batch overhead.
    origins: each crop's dataset, for config.balance. validation: images (crops, targets)
    scored after every epoch, else config.validation's share of crops held out; the weights of
    the epoch that scores best on them are the network returned.
    """
    import keras

    from fercli.learn.augment import TrainingImages

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if validation is None:
        crops, targets, origins, validation = held_out_share(crops, targets, origins, config, seed)
    mean, std = normalisation(crops, config.normalisation)
    model, optimizer, run_chunk = _network_to_train(targets, num_classes, config, crops.shape[1])
    images = TrainingImages(
        crops,
        targets,
        num_classes,
        config,
        rng,
        mean,
        std,
        draw_weights=dataset_draws(origins, config),
    )
    fitted = Fitted(model, mean, std)
    best: list | None = None
    epochs, epoch, durations = config.epochs, 0, []
    while epoch < epochs:
        epoch += 1
        started = time.perf_counter()
        _schedule(optimizer, config, epoch, epochs)
        loss, accuracy = _train_epoch(images, run_chunk)
        scored = None
        if validation is not None and math.isfinite(loss):
            scored = _scored(model, validation, mean, std, config)
            if fitted.validation_accuracy is None or scored > fitted.validation_accuracy:
                fitted.epoch, fitted.validation_accuracy = epoch, scored
                best = [np.array(weight) for weight in model.get_weights()]
        durations.append(time.perf_counter() - started)
        epochs = epochs_in_time(config, durations)
        fitted.epochs_trained, fitted.seconds = epoch, sum(durations)
        if on_epoch:
            on_epoch(epoch, loss, accuracy, scored, epochs)
        if not math.isfinite(loss):
            break  # diverged: more epochs cannot bring it back (divergence() says so)
    if best is not None:
        model.set_weights(best)
        fitted.validation_images = len(validation[1])
    return fitted


def _network_to_train(targets: np.ndarray, num_classes: int, config: TrainConfig, size: int):
    """A new network of config's variant for size x size crops (started from config's
    starting model if any), its optimizer built, and the function that trains it on a chunk of
    batches with config's loss and class weights (of targets): (model, optimizer, run_chunk)."""
    import keras

    from fercli.learn.network import build_model, make_optimizer

    model = build_model(num_classes, config.variant, size)
    if config.init_model:
        start_from(model, load_starting_model(config), list(config.classes))
    optimizer = make_optimizer(config)
    optimizer.build(model.trainable_variables)
    run_chunk = _chunk_trainer(
        model,
        optimizer,
        keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        class_weights(targets, num_classes, config.class_weight),
        config.batch_size,
        config.weight_decay,
    )
    return model, optimizer, run_chunk


def _train_epoch(images, run_chunk) -> tuple[float, float]:
    """One epoch over images' chunks of augmented batches (an augment.TrainingImages): its
    mean loss and training accuracy."""
    import tensorflow as tf

    total_loss = correct = 0.0
    for x, y in images.epoch():
        chunk_loss, chunk_correct = run_chunk(tf.constant(x), tf.constant(y))
        total_loss += float(chunk_loss)
        correct += float(chunk_correct)
    return total_loss / len(images), correct / len(images)


def _chunk_trainer(
    model, optimizer, loss_function, weights: np.ndarray, batch_size: int, decay: float
):
    """run_chunk(x, y): train on x's batches in order, one TensorFlow graph call for them all;
    returns the summed loss (per image) and the hits. Each image's loss weighs as its class
    does (weights; soft targets: as their mixture). decay: L2 weight decay, decay times each
    kernel (convolution, dense) added to its gradient."""
    import tensorflow as tf

    size, num_classes = model.input_shape[1], model.output_shape[-1]
    weights = tf.constant(weights)
    decayed = [
        decay > 0 and variable.path.endswith("kernel") for variable in model.trainable_variables
    ]

    # One trace for every chunk size (a full chunk, the epoch's last one).
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, size, size, 1], tf.float32),
            tf.TensorSpec([None, num_classes], tf.float32),
        ]
    )
    def run_chunk(x, y):
        steps = (tf.shape(x)[0] + batch_size - 1) // batch_size
        total_loss = tf.constant(0.0)
        correct = tf.constant(0.0)
        for step in tf.range(steps):
            x_batch = x[step * batch_size : (step + 1) * batch_size]
            y_batch = y[step * batch_size : (step + 1) * batch_size]
            with tf.GradientTape() as tape:
                predicted = model(x_batch, training=True)
                loss = loss_function(
                    y_batch, predicted, sample_weight=tf.linalg.matvec(y_batch, weights)
                )
            gradients = tape.gradient(loss, model.trainable_variables)
            gradients = [
                gradient + decay * variable if kernel else gradient
                for gradient, variable, kernel in zip(
                    gradients, model.trainable_variables, decayed, strict=True
                )
            ]
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            total_loss += loss * tf.cast(tf.shape(x_batch)[0], tf.float32)
            hits = tf.equal(tf.argmax(predicted, axis=1), tf.argmax(y_batch, axis=1))
            correct += tf.reduce_sum(tf.cast(hits, tf.float32))
        return total_loss, correct

    return run_chunk


def _scored(model, validation, mean, std, config: TrainConfig) -> float:
    """The accuracy of the network on the held-out images (--validation), as predict would
    label them (with the mirrored face where config says)."""
    crops, targets = validation
    probabilities = keras_probabilities(
        model, crops, mean, std, config.test_time_flip, config.normalisation == "image"
    )
    return fold_accuracy(probabilities, targets)


def fold_accuracy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The share of images whose most probable class is their own (NaN: no image)."""
    return float(np.mean(probabilities.argmax(axis=1) == targets)) if len(targets) else math.nan


def _schedule(optimizer, config: TrainConfig, epoch: int, epochs: int) -> None:
    """The learning rate of an epoch of epochs, as config.lr_schedule says."""
    if config.lr_schedule == "cosine":
        rate = 0.5 * config.learning_rate * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        optimizer.learning_rate.assign(rate)


def epochs_in_time(config: TrainConfig, durations: list[float]) -> int:
    """The epochs to train once len(durations) have taken these seconds each: config.epochs,
    or as many as config.time_limit (minutes) holds at the median epoch's pace (robust to an
    epoch slowed by other work, or by building the graph). Recomputed after every epoch, so
    it grows back where the first epochs were slow, up to config.epochs, and the schedule
    follows; never fewer than done."""
    done = len(durations)
    if not config.time_limit or not durations:
        return config.epochs
    left = 60 * config.time_limit - sum(durations)
    fit = done + max(0, int(left / float(np.median(durations))))
    return max(done, min(config.epochs, fit))


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
    probabilities = _in_batches(model, x)
    if flip:
        probabilities = (probabilities + _in_batches(model, x[:, :, ::-1])) / 2
    return probabilities


# keras_probabilities runs the network this many images at a time: the 2,738 held-out crops
# of FER2013 scored after every epoch in one call took 5.8 GB (activations of 48x48x32 for
# every image at once), in batches of 256 1.2 GB, for the same CPU time.
KERAS_BATCH = 256


def _in_batches(model, x: np.ndarray) -> np.ndarray:
    """The network's probabilities for images x (n, s, s, 1), KERAS_BATCH at a time."""
    parts = [
        np.asarray(model(x[start : start + KERAS_BATCH], training=False))
        for start in range(0, len(x), KERAS_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold, so that a fold's numbers do not depend on which worker ran it."""
    return (seed * 1_000_003 + fold) % 2**31
