"""The Keras model factory, and the model file that predict reads without TensorFlow."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fercli.core.config import (
    ALIGN_VERSION,
    MODEL_VARIANTS,
    PreprocessConfig,
    TrainConfig,
    fingerprint,
)
from fercli.core.errors import ModelError
from fercli.core.labels import BASIC_LABELS
from fercli.core.store import pack_json, unpack_json
from fercli.infer.model import load_model, save_networks
from fercli.infer.runtime import FORWARD_BATCH, NumpyNetwork
from fercli.learn.fitting import configure_tensorflow, fit
from fercli.learn.network import build_model, export_layers, export_network, make_optimizer
from fercli.learn.selection import select_classes
from synthetic import make_dataset

CLASSES = 7


@pytest.fixture(scope="module")
def selection():
    configure_tensorflow(None)
    return select_classes(make_dataset())


@pytest.fixture(scope="module")
def probe_crops(selection) -> np.ndarray:
    """Real crops and noise crops, so that every unit of the network sees varied input."""
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32), dtype=np.uint8)
    return np.concatenate([selection.crops[::7], noise])


def save_model(
    path,
    keras_model,
    classes,
    mean,
    std,
    preprocess,
    training,
    extra=None,
    training_crops=None,
    training_sources=None,
):
    """One Keras network to a model file, as fer train writes it (save_networks of one)."""
    return save_networks(
        path,
        [export_network(keras_model, mean, std)],
        classes,
        preprocess,
        training,
        extra,
        training_crops=training_crops,
        training_sources=training_sources,
    )


def keras_output(model, crops: np.ndarray, mean, std) -> np.ndarray:
    x = ((crops.astype(np.float32) - mean) / std).astype(np.float32)[..., np.newaxis]
    return np.asarray(model(x, training=False))


@pytest.fixture(scope="module")
def trained(selection, tmp_path_factory):
    """{variant: (keras model, mean, std, saved model file)}, each trained for two epochs so
    that batch-normalisation statistics have moved away from their initial values."""
    folder = tmp_path_factory.mktemp("models")
    models = {}
    for variant in MODEL_VARIANTS:
        config = TrainConfig(variant=variant, epochs=2)
        fitted = fit(selection.crops[::2], selection.targets[::2], CLASSES, config, seed=1)
        model, mean, std = fitted.model, fitted.mean, fitted.std
        path = save_model(
            folder / f"{variant}.npz",
            model,
            selection.labels,
            mean,
            std,
            PreprocessConfig(),
            config,
        )
        models[variant] = (model, mean, std, path)
    return models


@pytest.fixture
def model_file(trained) -> Path:
    return trained["paper"][3]


# --- the factory ------------------------------------------------------------------------


def test_default_network_is_the_papers():
    model = build_model(CLASSES)
    assert model.input_shape == (None, 32, 32, 1)
    layers = [(type(layer).__name__, tuple(layer.output.shape)) for layer in model.layers]
    assert layers == [
        ("Conv2D", (None, 28, 28, 32)),
        ("MaxPooling2D", (None, 14, 14, 32)),
        ("Conv2D", (None, 10, 10, 64)),
        ("MaxPooling2D", (None, 5, 5, 64)),
        ("Flatten", (None, 1600)),
        ("Dense", (None, CLASSES)),
    ]
    first, _, second, _, _, classifier = model.layers
    for layer, filters in ((first, 32), (second, 64)):
        config = layer.get_config()
        assert config["filters"] == filters and tuple(config["kernel_size"]) == (5, 5)
        assert config["activation"] == "relu"
    assert tuple(model.layers[1].get_config()["pool_size"]) == (2, 2)
    assert classifier.get_config()["activation"] == "softmax"
    # (5*5*1*32 + 32) + (5*5*32*64 + 64) + (1600*7 + 7)
    assert model.count_params() == 832 + 51264 + 11207 == 63303


def test_default_optimizer_is_momentum_sgd():
    optimizer = make_optimizer(TrainConfig())
    assert type(optimizer).__name__ == "SGD"
    assert float(optimizer.learning_rate) == pytest.approx(0.001)
    assert optimizer.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_every_variant_builds_a_softmax_over_the_classes(variant):
    model = build_model(4, variant)
    assert model.output_shape == (None, 4)
    probabilities = np.asarray(model(np.zeros((2, 32, 32, 1), np.float32), training=False))
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_the_weight_shapes_worked_out_without_keras_are_the_network_s(variant):
    """weight_shapes, which checks a starting model (--init) before any training, describes
    the network build_model makes, as a model file stores it."""
    from fercli.learn.network import weight_shapes

    for size in (32, 48):
        specs, weights = export_layers(build_model(5, variant, size))
        stored = [
            [weights[key].shape for key in spec["weights"]] for spec in specs if spec["weights"]
        ]
        assert stored == weight_shapes(variant, size, 5), (variant, size)


def test_unknown_variant_is_refused():
    with pytest.raises(ModelError, match="unknown model variant 'huge'; choose from paper"):
        build_model(CLASSES, "huge")


# --- save, load, agree ------------------------------------------------------------------


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_saved_model_gives_kerass_probabilities(trained, probe_crops, variant):
    model, mean, std, path = trained[variant]
    expected = keras_output(model, probe_crops, mean, std)
    loaded = load_model(path)
    got = loaded.predict_proba(probe_crops)
    assert got.shape == expected.shape == (len(probe_crops), CLASSES)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.allclose(got.sum(axis=1), 1, atol=1e-9)
    assert loaded.classes == list(BASIC_LABELS)
    # Not a degenerate network: the inputs get different answers.
    assert got.argmax(axis=1).min() != got.argmax(axis=1).max() or got.std(axis=0).max() > 1e-3


def test_batchnorm_statistics_survive_the_round_trip(trained):
    import keras

    model = trained["batchnorm"][0]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:
        moving_mean = np.asarray(layer.moving_mean)
        assert np.abs(moving_mean).max() > 1e-3  # trained, not the initial zeros


@pytest.mark.parametrize("shape", [(4, 6, 6, 3), (2, 2, 2, 5), (1, 1, 1, 2)])
def test_fused_batch_normalisation_trains_as_kerass_own_layer(shape):
    """The fused layer (learn/batchnorm.py) gives Keras's outputs, gradients and moving
    statistics; (2, 2, 2, 5) has 8 values a channel, where the fused op's variance over n - 1
    would be 14% off Keras's over n if it were not taken back out."""
    import keras
    import tensorflow as tf

    from fercli.learn.batchnorm import batch_normalization

    configure_tensorflow(None)
    rng = np.random.default_rng(3)
    keras_layer, fused_layer = keras.layers.BatchNormalization(), batch_normalization()
    assert type(fused_layer).__name__ == "FusedBatchNormalization"
    gamma, beta = rng.normal(1, 0.3, shape[-1]), rng.normal(0, 0.3, shape[-1])
    moving_mean, moving_variance = rng.normal(0, 1, shape[-1]), rng.uniform(0.5, 2, shape[-1])
    for layer in (keras_layer, fused_layer):
        layer.build(shape)
        layer.set_weights([gamma, beta, moving_mean, moving_variance])
    x = tf.constant(rng.normal(1, 3, shape).astype(np.float32))
    results = []
    for layer in (keras_layer, fused_layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y * x)  # a loss whose gradient is not trivially zero
        gradients = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *gradients, *layer.get_weights()[2:], layer(x, training=False)])
    for expected, got in zip(*results, strict=True):
        expected, got = np.asarray(expected), np.asarray(got)
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # Training moved the statistics (the comparison above is not between two untouched sets).
    assert np.abs(results[1][4] - moving_variance).max() > 1e-3


def test_test_time_flip_is_applied_by_the_loaded_model(trained, probe_crops, tmp_path):
    model, mean, std, _ = trained["paper"]
    path = save_model(
        tmp_path / "flip.npz",
        model,
        list(BASIC_LABELS),
        mean,
        std,
        PreprocessConfig(),
        TrainConfig(test_time_flip=True),
        extra={"test_time_flip": True},
    )
    x = probe_crops
    expected = (
        keras_output(model, x, mean, std) + keras_output(model, x[:, :, ::-1], mean, std)
    ) / 2
    assert np.abs(load_model(path).predict_proba(x) - expected).max() <= 1e-5


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_the_float32_runtime_gives_the_float64_probabilities(trained, probe_crops, variant):
    loaded = load_model(trained[variant][3])
    network = loaded.network
    exact = NumpyNetwork(network.specs, network.weights, dtype=np.float64)
    x = loaded.normalise(probe_crops)
    fast = network(x)
    assert network.dtype == np.float32 and fast.dtype == np.float64
    assert np.abs(fast - exact(x)).max() <= 1e-5
    assert np.allclose(fast.sum(axis=1), 1, atol=1e-9)


def test_a_big_batch_gives_each_face_its_own_probabilities(trained, probe_crops):
    loaded = load_model(trained["batchnorm-dropout"][3])
    crops = np.concatenate([probe_crops] * (FORWARD_BATCH // len(probe_crops) + 2))
    assert len(crops) > 2 * FORWARD_BATCH  # several passes, the last one partly filled
    together = loaded.predict_proba(crops)
    alone = np.concatenate([loaded.predict_proba(crop[np.newaxis]) for crop in crops])
    assert np.abs(together - alone).max() <= 1e-6
    # The same face gets the same answer wherever it falls among the passes.
    copies = together.reshape(-1, len(probe_crops), CLASSES)
    assert np.abs(copies - copies[0]).max() <= 1e-6


def test_the_runtime_folds_layers_together_as_keras_computes_them():
    """Every way the runtime joins layers (batch normalisation into the product before it,
    pooling before bias and activation) and every way it must not (a batch normalisation
    with negative scales after a pooling; "same" padding; pooling windows that overlap)."""
    import keras
    from keras import layers

    configure_tensorflow(None)
    network = keras.Sequential(
        [
            keras.Input((13, 13, 1)),
            layers.Conv2D(6, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.MaxPooling2D(3, strides=2, padding="same"),
            layers.Conv2D(5, 3, strides=2),
            layers.MaxPooling2D(2, padding="same"),
            layers.BatchNormalization(),
            layers.Activation("tanh"),
            layers.Conv2D(4, 1, activation="sigmoid"),
            layers.MaxPooling2D(2, padding="same"),
            layers.Flatten(),
            layers.Dense(8, use_bias=False),
            layers.BatchNormalization(center=False),
            layers.Activation("relu"),
            layers.Dense(5, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(3)
    for layer in network.layers:
        weights = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):
            count = weights[0].shape[0]
            # Negative scales: a pooling must not move in front of them.
            values = [rng.uniform(-2, 2, count)] + (
                [rng.normal(0, 1, count)] if layer.center else []
            )
            layer.set_weights([*values, rng.normal(0, 1, count), rng.uniform(0.2, 3, count)])
        elif weights:
            # Seeded, and large enough that the answers differ from input to input.
            kernel = weights[0]
            layer.set_weights(
                [
                    rng.normal(0, 2 / np.sqrt(np.prod(kernel.shape[:-1])), kernel.shape),
                    *[rng.normal(0, 0.5, bias.shape) for bias in weights[1:]],
                ]
            )
    x = rng.normal(0, 1, (2 * FORWARD_BATCH + 5, 13, 13, 1)).astype(np.float32)
    expected = np.asarray(network(x, training=False))
    specs, weights = export_layers(network)
    fast = NumpyNetwork(specs, weights)(x)
    exact = NumpyNetwork(specs, weights, dtype=np.float64)(x)
    assert fast.shape == expected.shape == (len(x), 5)
    assert np.abs(fast - expected).max() <= 1e-5 and np.abs(exact - expected).max() <= 1e-5
    assert expected.std(axis=0).max() > 1e-2  # the inputs get different answers


def test_model_file_carries_what_predict_needs(model_file):
    loaded = load_model(model_file)
    meta = loaded.meta
    assert meta["classes"] == list(BASIC_LABELS)
    assert meta["preprocess"] == PreprocessConfig().to_dict()
    assert meta["preprocess_fingerprint"] == PreprocessConfig().fingerprint()
    assert meta["align_version"] == ALIGN_VERSION
    assert meta["training"]["variant"] == "paper" and meta["training"]["epochs"] == 2
    assert {"fercli", "numpy", "keras"} <= set(meta["versions"])
    assert loaded.preprocess == PreprocessConfig()
    assert np.ndim(loaded.mean) == 0 and float(loaded.std) > 0


def test_loading_and_predicting_needs_no_tensorflow(trained, probe_crops, tmp_path):
    model, mean, std, path = trained["batchnorm"]
    crops_file, output_file = tmp_path / "crops.npy", tmp_path / "out.npy"
    np.save(crops_file, probe_crops)
    script = (
        "import sys, numpy as np\n"
        "from fercli.infer.model import load_model\n"
        f"model = load_model({str(path)!r})\n"
        f"np.save({str(output_file)!r}, model.predict_proba(np.load({str(crops_file)!r})))\n"
        "heavy = sorted(name for name in ('tensorflow', 'keras') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    expected = keras_output(model, probe_crops, mean, std)
    assert np.abs(np.load(output_file) - expected).max() <= 1e-5


# --- refusals ---------------------------------------------------------------------------


def rewrite(
    source: Path, target: Path, meta_changes: dict | None = None, arrays: dict | None = None
) -> Path:
    """A copy of a model file with some meta fields or arrays replaced."""
    with np.load(source, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files}
    meta = unpack_json(content["meta"])
    meta.update(meta_changes or {})
    content["meta"] = pack_json(meta)
    content.update(arrays or {})
    np.savez(target, **content)
    return target


def test_missing_model_file_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "nothing.npz")


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path)


def test_another_format_version_is_refused(model_file, tmp_path):
    path = rewrite(model_file, tmp_path / "future.npz", {"format_version": 99})
    with pytest.raises(ModelError, match="model format version 99 is not supported.*retrain"):
        load_model(path)


def test_a_model_from_another_alignment_version_is_refused(model_file, tmp_path):
    old = PreprocessConfig().to_dict()
    path = rewrite(
        model_file,
        tmp_path / "old.npz",
        {
            "align_version": ALIGN_VERSION - 1,
            "preprocess_fingerprint": fingerprint({"align_version": ALIGN_VERSION - 1, **old}),
        },
    )
    with pytest.raises(ModelError, match=f"alignment version {ALIGN_VERSION - 1}.*retrain"):
        load_model(path)


def newer_settings_model(model_file: Path, target: Path) -> Path:
    """A model as a later fercli might write it: same alignment version, one more setting."""
    settings = {**PreprocessConfig().to_dict(), "clahe": True}
    return rewrite(
        model_file,
        target,
        {
            "preprocess": settings,
            "preprocess_fingerprint": fingerprint({"align_version": ALIGN_VERSION, **settings}),
        },
    )


def test_a_model_with_preprocessing_settings_this_version_cannot_reproduce_is_refused(
    model_file, tmp_path
):
    path = newer_settings_model(model_file, tmp_path / "newer.npz")
    with pytest.raises(ModelError, match="newer.npz.*retrain"):
        load_model(path)


def test_a_preprocessing_mismatch_says_what_differs(model_file, tmp_path):
    path = newer_settings_model(model_file, tmp_path / "newer.npz")
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert (
        f"version {ALIGN_VERSION}, this fercli aligns with version {ALIGN_VERSION}" not in message
    )
    assert "settings" in message or "fingerprint" in message


def test_weights_that_do_not_fit_the_layers_are_refused(model_file, tmp_path):
    wrong_shape = rewrite(
        model_file,
        tmp_path / "shape.npz",
        arrays={"layer0_kernel": np.zeros((5, 5, 1, 16), np.float32)},
    )
    with pytest.raises(ModelError, match="shape.npz: damaged model file"):
        load_model(wrong_shape)
    with np.load(model_file) as archive:
        kernel = archive["layer0_kernel"].copy()
    kernel[0, 0, 0, 0] = np.nan
    not_finite = rewrite(model_file, tmp_path / "nan.npz", arrays={"layer0_kernel": kernel})
    with pytest.raises(ModelError, match="nan.npz: damaged model file"):
        load_model(not_finite)
    fewer_classes = rewrite(
        model_file, tmp_path / "classes.npz", {"classes": ["anger", "happiness"]}
    )
    with pytest.raises(ModelError, match="classes.npz: damaged model file.*2 classes"):
        load_model(fewer_classes)


def save_paper_model(trained, selection, path: Path, **training) -> Path:
    """The trained "paper" network saved with default settings and the given training arrays
    (training_crops, training_sources)."""
    model, mean, std, _ = trained["paper"]
    return save_model(
        path, model, selection.labels, mean, std, PreprocessConfig(), TrainConfig(), **training
    )


def test_the_model_file_keeps_hashes_of_its_training_crops(trained, selection, tmp_path):
    from fercli.infer.model import TRAINING_HASH_BYTES, crop_hashes

    crops = np.random.default_rng(0).integers(0, 256, (5, 32, 32), np.uint8)
    hashes = crop_hashes(np.concatenate([crops, crops[:2]]))  # repeats are kept once
    assert hashes.dtype == np.uint8 and hashes.shape == (5, TRAINING_HASH_BYTES)
    assert [row.tobytes() for row in hashes] == sorted(row.tobytes() for row in hashes)
    path = save_paper_model(trained, selection, tmp_path / "m.npz", training_crops=crops)
    loaded = load_model(path)
    other = crops[0].copy()
    other[0, 0] ^= 1
    assert loaded.seen_in_training(np.stack([crops[3], other])) == [True, False]
    # A damaged hash array is refused like any damaged part of a model file.
    bad = rewrite(
        path, tmp_path / "bad.npz", arrays={"training_hashes": np.zeros((3, 5), np.uint8)}
    )
    with pytest.raises(ModelError, match="bad.npz: training_hashes"):
        load_model(bad)


def test_the_model_file_keeps_the_source_digests_of_its_training_files(
    trained, selection, tmp_path
):
    from fercli.core.hashing import SOURCE_DIGEST_BYTES, digest_rows, source_digest

    files = [b"first photo", b"second photo", b"third photo"]
    digests = [source_digest(data) for data in files]
    # Two crops of one file (repeats are kept once), in no particular order.
    sources = digest_rows([digests[2], digests[0], digests[2]])
    crops = np.random.default_rng(1).integers(0, 256, (3, 32, 32), np.uint8)
    path = save_paper_model(
        trained, selection, tmp_path / "m.npz", training_crops=crops, training_sources=sources
    )
    loaded = load_model(path)
    assert loaded.training_sources.dtype == np.uint8
    assert [row.tobytes() for row in loaded.training_sources] == sorted([digests[0], digests[2]])
    assert [loaded.seen_source(digest) for digest in digests] == [True, False, True]
    assert digests[2] == hashlib.sha256(b"third photo").digest()[:SOURCE_DIGEST_BYTES]
    # A file written without them (an older fercli's, or trained on FER2013's CSV) does not say.
    older = load_model(rewrite_without(path, tmp_path / "older.npz", "training_sources"))
    assert older.training_sources is None and older.seen_source(digests[0]) is None
    assert older.seen_in_training(crops[:1]) == [True]  # the crops' hashes still tell
    # A damaged array is refused like any damaged part of a model file.
    bad = rewrite(
        path, tmp_path / "bad.npz", arrays={"training_sources": np.zeros((2, 4), np.uint8)}
    )
    with pytest.raises(ModelError, match="bad.npz: training_sources"):
        load_model(bad)
    bad = rewrite(path, tmp_path / "text.npz", arrays={"training_sources": np.array(["a", "b"])})
    with pytest.raises(ModelError, match="text.npz: training_sources"):
        load_model(bad)


def rewrite_without(source: Path, target: Path, key: str) -> Path:
    """A copy of a model file without one of its arrays (as an older fercli wrote it)."""
    with np.load(source, allow_pickle=False) as archive:
        np.savez(target, **{name: archive[name] for name in archive.files if name != key})
    return target
