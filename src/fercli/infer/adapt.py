"""Adaptation to the images being labelled (--adapt): a model's normalisation statistics, and
its batch normalisation statistics, re-estimated from the unlabelled crops of the set it is
about to label (AdaBN). Labels are never read: only the pixels of the faces to be labelled.

Why: a model trained on one dataset sees another camera's crops with another mean and
contrast, and its batch normalisation layers with inputs off the scale they were trained on;
the answers then collapse onto one class. Moving those statistics to the new set's is cheap
(a few forward passes) and learns nothing about the new set's classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fercli.core.errors import FerError
from fercli.infer.model import FerModel, Member, input_values, network_input
from fercli.infer.runtime import NumpyNetwork, batchnorm_names

# Fewer faces than this give statistics too noisy to trust (a per-pixel mean of 32x32 values
# from a handful of faces mostly describes those faces).
MIN_FACES = 20


@dataclass(frozen=True)
class Adaptation:
    """What --adapt did, for the report."""

    faces: int
    batchnorm_layers: int  # per network
    networks: int

    def to_json(self) -> dict:
        return {
            "faces": self.faces,
            "batchnorm_layers": self.batchnorm_layers,
            "networks": self.networks,
        }

    def describe(self) -> str:
        layers = (
            f" and {self.batchnorm_layers} batch normalisation layers"
            if self.batchnorm_layers
            else ""
        )
        return (
            f"adapted to the {self.faces} faces being labelled (normalisation statistics"
            f"{layers} re-estimated from their pixels; no labels used)"
        )


def adapt_model(model: FerModel, crops: np.ndarray) -> tuple[FerModel, Adaptation]:
    """A copy of model whose every network normalises with the statistics of crops (uint8,
    (n, s, s): the faces about to be labelled) and whose batch normalisation layers use the
    mean and variance of their inputs over those crops. FerError when there are fewer than
    MIN_FACES crops."""
    crops = np.asarray(crops)
    if len(crops) < MIN_FACES:
        raise FerError(
            f"--adapt needs at least {MIN_FACES} faces to estimate statistics from; "
            f"there {'is' if len(crops) == 1 else 'are'} {len(crops)} (label without --adapt)"
        )
    members = [_adapt_member(member, crops) for member in model.networks]
    first = members[0]
    adapted = replace(
        model,
        network=first.network,
        mean=first.mean,
        std=first.std,
        members=members if len(members) > 1 else [],
        meta={**model.meta, "adapted": True},
    )
    layers = sum(spec["type"] == "batchnorm" for spec in first.network.specs)
    return adapted, Adaptation(len(crops), layers, len(members))


def _adapt_member(member: Member, crops: np.ndarray) -> Member:
    # The statistics of what the network's z-score step sees: with --normalisation image, the
    # crops each standardised by their own mean and std first, as Member.predict_proba does.
    values = input_values(crops, member.per_image)
    if np.ndim(member.mean) == 0:  # one mean and deviation ("global", "image")
        mean, std = np.float64(values.mean()), np.float64(values.std())
    else:  # per pixel
        mean, std = values.mean(axis=0), values.std(axis=0)
    mean, std = np.asarray(mean), np.asarray(np.maximum(std, 1e-6))
    inputs = network_input(crops, mean, std, member.per_image)
    network = _adapt_batchnorm(member.network, inputs)
    return Member(network, mean, std, member.per_image)


def _adapt_batchnorm(network: NumpyNetwork, inputs: np.ndarray) -> NumpyNetwork:
    """The network with each batch normalisation layer's moving mean and variance replaced by
    those of its input over inputs, layer after layer (each sees the layers before it already
    adapted)."""
    weights = dict(network.weights)
    for position, spec in enumerate(network.specs):
        if spec["type"] != "batchnorm":
            continue
        before = NumpyNetwork(network.specs[:position], weights, network.dtype)
        activations = before(inputs) if position else inputs
        axes = tuple(range(activations.ndim - 1))  # every axis but the channels
        named = dict(zip(batchnorm_names(spec), spec["weights"], strict=True))
        weights[named["mean"]] = activations.mean(axis=axes)
        weights[named["variance"]] = activations.var(axis=axes)
    return NumpyNetwork(network.specs, weights, network.dtype)
