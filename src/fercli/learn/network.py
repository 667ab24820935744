"""The one Keras model factory (build_model), its optimizer, and the export of a trained
Keras network into the arrays of a fercli model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fercli.core.config import MODEL_VARIANTS, TrainConfig
from fercli.core.errors import FerError, ModelError
from fercli.infer.model import ExportedNetwork, load_model

# The "vgg" variants: the filters of their three convolutions, and the dropout before and
# after their hidden layer. "vgg-wide" is the general recipe's (docs/accuracy.md, "A general
# model": it underfit less; FER2013's validation split, faces found, 48x48 crops, fer train
# with defaults: 63.2% and 62.8% against vgg's 61.2% and 60.7%, seeds 0 and 1).
VGG_SHAPES = {
    "vgg": ((32, 64, 128), (0.3, 0.5)),
    "vgg-wide": ((32, 64, 192), (0.1, 0.3)),
}


def build_model(num_classes: int, variant: str = "paper", input_size: int = 32):
    """The Keras network for a variant; "paper" is conv32-pool-conv64-pool-flatten-softmax.

    Variants keep the paper's two 5x5 convolutions and add to them: "dropout" (dropout 0.5
    before the classifier), "batchnorm" (batch normalisation after each convolution),
    "batchnorm-dropout" (both), "wide" (64 and 128 filters, a 256-unit hidden layer with
    dropout). "vgg" is deeper, for tens of thousands of images: three 3x3 convolutions (32,
    64, 128 filters, 'same' padding), each with batch normalisation and a max-pool, then
    dropout 0.3, a 256-unit hidden layer with batch normalisation, dropout 0.5. "vgg-wide":
    the same with 192 filters in the third convolution and dropout 0.1 and 0.3 (VGG_SHAPES).
    """
    import keras
    from keras import layers

    from fercli.learn.batchnorm import batch_normalization

    if variant not in MODEL_VARIANTS:
        raise ModelError(
            f"unknown model variant {variant!r}; choose from {', '.join(MODEL_VARIANTS)}"
        )
    stack: list = [keras.Input((input_size, input_size, 1))]
    if variant in VGG_SHAPES:
        return keras.Sequential(
            stack + _vgg_layers(num_classes, variant), name=f"fercli_{variant.replace('-', '_')}"
        )
    filters = (64, 128) if variant == "wide" else (32, 64)
    for count in filters:
        if variant.startswith("batchnorm"):
            stack += [
                layers.Conv2D(count, 5, use_bias=False),
                batch_normalization(),
                layers.Activation("relu"),
            ]
        else:
            stack.append(layers.Conv2D(count, 5, activation="relu"))
        stack.append(layers.MaxPooling2D(2))
    stack.append(layers.Flatten())
    if variant == "wide":
        stack += [layers.Dense(256, activation="relu"), layers.Dropout(0.5)]
    if variant.endswith("dropout"):
        stack.append(layers.Dropout(0.5))
    stack.append(layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(stack, name=f"fercli_{variant.replace('-', '_')}")


def _vgg_layers(num_classes: int, variant: str) -> list:
    """The layers of a "vgg" variant after its input (see build_model)."""
    from keras import layers

    from fercli.learn.batchnorm import batch_normalization

    filters, (features_dropout, hidden_dropout) = VGG_SHAPES[variant]
    stack: list = []
    for count in filters:
        stack += [
            layers.Conv2D(count, 3, padding="same", use_bias=False),
            batch_normalization(),
            layers.Activation("relu"),
            layers.MaxPooling2D(2),
        ]
    return stack + [
        layers.Flatten(),
        layers.Dropout(features_dropout),
        layers.Dense(256, use_bias=False),
        batch_normalization(),
        layers.Activation("relu"),
        layers.Dropout(hidden_dropout),
        layers.Dense(num_classes, activation="softmax"),
    ]


def weight_shapes(variant: str, input_size: int, num_classes: int) -> list[list[tuple]]:
    """The shapes of the weights of build_model's network, layer by layer (the layers that have
    weights, as a model file stores them), worked out without Keras: what a starting model
    (--init) must match before any training starts."""
    if variant in VGG_SHAPES:
        return _vgg_weight_shapes(input_size, num_classes, VGG_SHAPES[variant][0])
    filters = (64, 128) if variant == "wide" else (32, 64)
    shapes: list[list[tuple]] = []
    channels, side = 1, input_size
    for count in filters:
        if variant.startswith("batchnorm"):
            # A convolution without bias, then batch normalisation's gamma, beta, mean, variance.
            shapes += [[(5, 5, channels, count)], [(count,)] * 4]
        else:
            shapes.append([(5, 5, channels, count), (count,)])
        channels, side = count, (side - 4) // 2  # a 5x5 "valid" convolution, a 2x2 pooling
    features = side * side * channels
    if variant == "wide":
        shapes.append([(features, 256), (256,)])
        features = 256
    shapes.append([(features, num_classes), (num_classes,)])
    return shapes


def _vgg_weight_shapes(
    input_size: int, num_classes: int, filters: tuple[int, ...]
) -> list[list[tuple]]:
    """weight_shapes of a "vgg" variant (_vgg_layers) with these filters."""
    shapes: list[list[tuple]] = []
    channels, side = 1, input_size
    for count in filters:
        # A 3x3 "same" convolution without bias, batch normalisation, a 2x2 pooling.
        shapes += [[(3, 3, channels, count)], [(count,)] * 4]
        channels, side = count, side // 2
    shapes += [[(side * side * channels, 256)], [(256,)] * 4]
    shapes.append([(256, num_classes), (num_classes,)])
    return shapes


def make_optimizer(config: TrainConfig):
    """The optimizer of a training configuration (the paper: SGD, lr 0.001, momentum 0.9)."""
    import keras

    if config.optimizer in ("sgd", "nesterov"):
        return keras.optimizers.SGD(
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            nesterov=config.optimizer == "nesterov",
        )
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    raise ModelError(f"unknown optimizer {config.optimizer!r}; choose sgd, nesterov or adam")


def export_layers(keras_model) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Describe a trained Keras network as layer specs plus named weight arrays."""
    import keras

    specs: list[dict] = []
    weights: dict[str, np.ndarray] = {}
    for index, layer in enumerate(keras_model.layers):
        kind = type(layer).__name__
        config = layer.get_config()
        values = [np.asarray(weight) for weight in layer.get_weights()]
        if kind == "Conv2D":
            if tuple(config["dilation_rate"]) != (1, 1) or config.get("groups", 1) != 1:
                raise ModelError(
                    f"layer {layer.name}: dilated or grouped convolutions cannot be exported"
                )
            spec = {
                "type": "conv2d",
                "strides": list(config["strides"]),
                "padding": config["padding"],
                "activation": config["activation"],
            }
            names = ["kernel", "bias"][: len(values)]
        elif kind == "MaxPooling2D":
            spec = {
                "type": "maxpool2d",
                "pool_size": list(config["pool_size"]),
                "strides": list(config["strides"] or config["pool_size"]),
                "padding": config["padding"],
            }
            names = []
        elif isinstance(layer, keras.layers.BatchNormalization):  # learn/batchnorm.py's too
            spec = {"type": "batchnorm", "epsilon": config["epsilon"]}
            names = [
                name
                for name, present in (
                    ("gamma", config["scale"]),
                    ("beta", config["center"]),
                    ("mean", True),
                    ("variance", True),
                )
                if present
            ]
        elif kind == "Activation":
            spec = {"type": "activation", "activation": config["activation"]}
            names = []
        elif kind == "Flatten":
            spec = {"type": "flatten"}
            names = []
        elif kind == "Dense":
            spec = {"type": "dense", "activation": config["activation"]}
            names = ["kernel", "bias"][: len(values)]
        elif kind == "Dropout":
            continue  # inactive at inference
        else:
            raise ModelError(f"layer {layer.name} ({kind}) cannot be exported to the numpy runtime")
        spec["weights"] = []
        for name, value in zip(names, values, strict=True):
            key = f"layer{index}_{name}"
            weights[key] = value.astype(np.float32)
            spec["weights"].append(key)
        specs.append(spec)
    return specs, weights


def export_network(
    keras_model, mean: np.ndarray, std: np.ndarray, per_image: bool = False
) -> ExportedNetwork:
    """A trained Keras network and its statistics, as plain arrays (picklable, no Keras);
    per_image: each crop is standardised by its own statistics first (--normalisation image)."""
    specs, weights = export_layers(keras_model)
    return ExportedNetwork(
        specs, weights, np.asarray(mean, np.float64), np.asarray(std, np.float64), per_image
    )


# The NumPy forward pass agrees with Keras to about 1e-6 (float32 sums in another order).
EXPORT_TOLERANCE = 1e-4


def export_check(sample: np.ndarray, expected: np.ndarray, what: str, checked: dict | None = None):
    """A save check (infer.model.save_networks' check): the model file written to a temporary
    path gives Keras's probabilities on sample (uint8 crops), or FerError and nothing is saved.
    checked, when given, receives the largest difference."""

    def check(temporary: Path) -> None:
        exported = load_model(temporary).predict_proba(sample)
        difference = float(np.abs(exported - expected).max())
        if not difference <= EXPORT_TOLERANCE:  # also NaN
            raise FerError(
                f"{what} disagrees with Keras by {difference:.2g}; nothing was saved "
                "(a bug: please report it)"
            )
        if checked is not None:
            checked["difference"] = difference

    return check
