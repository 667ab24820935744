"""Adaptation to the images being labelled (--adapt): the crops' grey levels mapped pixel by
pixel onto the training crops' (the model file's per-pixel statistics), then the model's
normalisation statistics and its batch normalisation statistics re-estimated from those
crops (AdaBN). Labels are never read: only the pixels of the faces to be labelled.

Why: a model trained on one dataset sees another camera's crops with another mean and
contrast, and its batch normalisation layers with inputs off the scale they were trained on;
the answers then collapse onto one class. A crop's light is not one number: another dataset's
crops are brighter at the forehead and darker at the chin, framed a little higher or lower,
which one global mean cannot move. Moving those statistics to the new set's is cheap (a few
forward passes) and learns nothing about the new set's classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fercli.core.config import ADAPT_PIXEL_MAPS
from fercli.core.errors import FerError
from fercli.core.hashing import crop_digests
from fercli.infer.inputs import PixelMap, PixelStatistics, input_values, network_input
from fercli.infer.model import FerModel, Member
from fercli.infer.runtime import NumpyNetwork, batchnorm_names

# Fewer distinct faces than this give statistics too noisy to trust (a per-pixel mean of 32x32
# values from a handful of faces mostly describes those faces).
MIN_FACES = 20
# A set of faces whose pixels vary by less than this (grey levels, the median over the crop's
# pixels of their deviation) is one picture, not a set: its statistics describe nothing to
# adapt to. Real faces vary by tens of grey levels.
MIN_SET_DEVIATION = 1.0
# How the crops' per-pixel statistics are mapped onto the training crops': "mean" (each
# pixel moved by the difference of the mean images), "mean+std" (also scaled by the ratio of
# the deviation images), or "none" (the global statistics only, as before fercli kept them).
# "mean" beat "mean+std" on every CK+48 <-> FER2013 run; "none" beat both there, which issue
# 35's CK+48 -> JAFFE experiment contradicts (docs/accuracy.md, "--adapt per pixel").
PIXEL_MAPS = ADAPT_PIXEL_MAPS
DEFAULT_PIXEL_MAP = "mean"


def adaptation_mode(adapt: bool | str | None) -> str | None:
    """What an adapt argument asks for: None for no adaptation, else how the per-pixel
    statistics are mapped (True: DEFAULT_PIXEL_MAP; or one of PIXEL_MAPS by name). FerError
    for anything else, before any work."""
    if adapt is None or isinstance(adapt, (bool, np.bool_)):
        return DEFAULT_PIXEL_MAP if adapt else None
    if isinstance(adapt, str) and adapt in PIXEL_MAPS:
        return adapt
    raise FerError(
        f"adapt must be True, False or one of {', '.join(PIXEL_MAPS)} (how the per-pixel "
        f"statistics are mapped), not {adapt!r}"
    )


@dataclass(frozen=True)
class Adaptation:
    """What --adapt did, for the report."""

    faces: int
    batchnorm_layers: int  # per network
    networks: int
    distinct_faces: int = 0  # faces of different pixels (a photo given twice counts once)
    # How the per-pixel statistics were mapped ("mean", "mean+std"); None when they were not.
    pixel_map: str | None = None
    note: str | None = None  # why they were not, when the model file has none

    def to_json(self) -> dict:
        return {
            "faces": self.faces,
            "distinct_faces": self.distinct_faces,
            "per_pixel": self.pixel_map,
            "batchnorm_layers": self.batchnorm_layers,
            "networks": self.networks,
            **({"note": self.note} if self.note else {}),
        }

    def describe(self) -> str:
        layers = (
            f" and {self.batchnorm_layers} batch normalisation layers"
            if self.batchnorm_layers
            else ""
        )
        mapped = {
            "mean": "their per-pixel mean mapped onto the training crops'; ",
            "mean+std": "their per-pixel mean and deviation mapped onto the training crops'; ",
        }.get(self.pixel_map or "", "")
        note = f"; {self.note}" if self.note else ""
        return (
            f"adapted to the {self.faces} faces being labelled ({mapped}normalisation statistics"
            f"{layers} re-estimated from their pixels; no labels used){note}"
        )


def adapt_model(
    model: FerModel,
    crops: np.ndarray,
    where: str = "the faces given",
    pixels: str = DEFAULT_PIXEL_MAP,
) -> tuple[FerModel, Adaptation]:
    """A copy of model adapted to crops (uint8, (n, s, s): the faces about to be labelled):
    their grey levels mapped onto the training crops' per-pixel statistics (pixels: one of
    PIXEL_MAPS; where the model file has none, the global statistics only), then every
    network's normalisation statistics and its batch normalisation layers' mean and variance
    re-estimated from them. where: what the crops are, for the refusal ("the photos", a video's
    path). FerError when there are fewer than MIN_FACES distinct crops, or when their pixels
    hardly vary (copies of one picture)."""
    adaptation_mode(pixels)  # one of PIXEL_MAPS, or FerError
    crops = np.asarray(crops)
    distinct = len(np.unique(crop_digests(crops), axis=0)) if len(crops) else 0
    if distinct < MIN_FACES:
        repeats = f" ({len(crops)} faces, some the same picture)" if distinct < len(crops) else ""
        raise FerError(
            f"--adapt needs at least {MIN_FACES} distinct faces to estimate statistics from; "
            f"there {'is' if distinct == 1 else 'are'} {distinct} in {where}{repeats} "
            "(label without --adapt)"
        )
    statistics = PixelStatistics.of(crops)
    deviation = float(np.median(statistics.std))
    if deviation < MIN_SET_DEVIATION:
        raise FerError(
            f"--adapt cannot estimate statistics from {where}: their {len(crops)} faces are "
            f"nearly the same picture (their pixels vary by {deviation:.2g} grey levels) "
            "(label without --adapt)"
        )
    pixel_map, note = _pixel_map(model, statistics, pixels)
    members = [_adapt_member(member, crops, pixel_map) for member in model.networks]
    first = members[0]
    adapted = replace(
        model,
        network=first.network,
        mean=first.mean,
        std=first.std,
        members=members if len(members) > 1 else [],
        pixel_map=pixel_map,
        meta={**model.meta, "adapted": True},
    )
    layers = sum(spec["type"] == "batchnorm" for spec in first.network.specs)
    return adapted, Adaptation(
        faces=len(crops),
        batchnorm_layers=layers,
        networks=len(members),
        distinct_faces=distinct,
        pixel_map=pixels if pixel_map is not None else None,
        note=note,
    )


def _pixel_map(
    model: FerModel, statistics: PixelStatistics, pixels: str
) -> tuple[PixelMap | None, str | None]:
    """The map of the crops' per-pixel statistics onto the model's training crops', and a note
    when there is none although one was asked for."""
    if pixels == "none":
        return None, None
    if model.pixel_statistics is None:
        return None, (
            "the model file holds no per-pixel statistics of its training crops (written by an "
            "older fercli, or by a newer one in a form this one does not read): only the "
            "global statistics were moved, as before; retrain to adapt per pixel"
        )
    if model.pixel_statistics.mean.shape != statistics.mean.shape:
        raise FerError(
            f"the faces are {statistics.mean.shape[0]}-pixel crops and the model's "
            f"{model.pixel_statistics.mean.shape[0]}-pixel ones"
        )
    return PixelMap(statistics, model.pixel_statistics, scale=pixels == "mean+std"), None


def _adapt_member(member: Member, crops: np.ndarray, pixel_map: PixelMap | None) -> Member:
    # The statistics of what the network's z-score step sees: the crops as pixel_map maps them
    # and, with --normalisation image, each standardised by its own mean and std, as
    # Member.predict_proba does.
    values = input_values(crops, member.per_image, pixel_map)
    if np.ndim(member.mean) == 0:  # one mean and deviation ("global", "image")
        mean, std = np.float64(values.mean()), np.float64(values.std())
    else:  # per pixel
        mean, std = values.mean(axis=0), values.std(axis=0)
    mean, std = np.asarray(mean), np.asarray(np.maximum(std, 1e-6))
    inputs = network_input(crops, mean, std, member.per_image, pixel_map)
    network = _adapt_batchnorm(member.network, inputs)
    return Member(network, mean, std, member.per_image, pixel_map)


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
