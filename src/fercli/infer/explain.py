"""Where the network looks: occlusion sensitivity maps, on the NumPy forward pass.

A grey patch slides over the aligned crop; every occluded copy (and the crop itself) goes
through the network in one batched call, and a pixel's value is how much covering it lowers a
class's probability, averaged over the patches that covered it. No TensorFlow and no
gradients, so any model that predict runs can be explained, ensembles and test-time flips
included. The grey is the training crops' mean (the z-scored input 0, "no information" to
the network). What the map shows is this network on this crop, not the face: a region the
network never needed, or whose evidence another region repeats, stays dark; the patch size
sets the map's resolution (nothing finer than a patch shows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.errors import FerError, ModelError
from fercli.core.parallel import default_workers

if TYPE_CHECKING:
    from fercli.infer.inputs import PixelMap
    from fercli.infer.model import FerModel

# An 8x8 patch covers an eye, a brow or a mouth corner of a 32x32 crop; a stride of 2 gives
# 13x13 positions (169 occluded copies a face) and a smooth map. Measured in bench/explain.py:
# about 25 ms of CPU a face for one paper network, ten times that for a 10-network ensemble.
PATCH = 8
STRIDE = 2
# Faces whose occluded copies go through the network together: 8 faces are 1,360 crops
# (1.4 MB of uint8), which bounds the memory of explaining a whole folder.
FACES_PER_CALL = 8
# An ensemble's networks explain a batch on this many threads (at most one a core): ten
# networks' 1,360 occluded copies are a few hundred ms of matrix products, which numpy runs
# without the GIL. The maps are the same to the bit (FerModel.predict_proba).
EXPLAIN_THREADS = 2


@dataclass
class FaceExplanation:
    """One face, explained: its map for the predicted class (and each class's on request)."""

    box: tuple[int, int, int, int]  # x, y, width, height in the image
    label: str  # the predicted class
    probability: float  # its probability
    # (s, s) float: how much covering each pixel of the crop with a grey patch lowers the
    # probability of label, averaged over the patches that covered it (below 0: raises it).
    map: np.ndarray
    crop: np.ndarray  # the aligned uint8 crop (s, s) the map belongs to
    probabilities: dict[str, float] = field(default_factory=dict)
    # With every_class: the same map for each class, by name; empty otherwise.
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Where a patch starts along one side: every stride, and flush with the far edge, so that
    every pixel is covered."""
    if not 1 <= patch <= size or stride < 1:
        raise FerError(
            f"an occlusion patch must be 1 to {size} pixels and its stride at least 1, not "
            f"patch {patch}, stride {stride}"
        )
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:
        positions.append(size - patch)
    return positions


def occlusion_maps(
    predict: Callable[[np.ndarray], np.ndarray],
    crops: np.ndarray,
    grey: np.ndarray | None,
    patch: int = PATCH,
    stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities (n, classes) of uint8 crops (n, s, s) and each class's occlusion map
    (n, classes, s, s): the drop of that class's probability when a patch of grey (a uint8
    (s, s) image to take the patch's pixels from) covers each pixel, averaged over the patches
    covering it. predict: uint8 crops -> probabilities, called once per FACES_PER_CALL faces
    with every occluded copy of them. grey None: each face's patch is its own mean grey level
    (networks that standardise each crop by its own statistics: grey_crop)."""
    count, size = len(crops), crops.shape[1]
    positions = patch_positions(size, patch, stride)
    covers = np.zeros((len(positions) ** 2, size, size), bool)
    for number, (top, left) in enumerate((y, x) for y in positions for x in positions):
        covers[number, top : top + patch, left : left + patch] = True
    coverage = covers.reshape(len(covers), -1).astype(np.float64)
    times_covered = coverage.sum(axis=0)
    probabilities, maps = [], []
    for start in range(0, count, FACES_PER_CALL):
        chunk = crops[start : start + FACES_PER_CALL]
        if grey is None:
            fill = np.round(chunk.mean(axis=(1, 2))).astype(np.uint8)[:, None, None, None]
        else:
            fill = grey[None, None]
        occluded = np.where(covers[None], fill, chunk[:, None])
        # The crops themselves first, then their occluded copies: one call to the network.
        batch = np.concatenate([chunk, occluded.reshape(-1, size, size)])
        output = np.asarray(predict(batch), np.float64)
        if not np.all(np.isfinite(output)):
            raise ModelError("damaged model (its probabilities for a face are not finite numbers)")
        base = output[: len(chunk)]
        copies = output[len(chunk) :].reshape(len(chunk), len(covers), -1)
        drops = base[:, None, :] - copies  # (faces, positions, classes)
        summed = np.einsum("fpc,pk->fck", drops, coverage)
        maps.append((summed / times_covered).reshape(len(chunk), -1, size, size))
        probabilities.append(base)
    if not maps:
        return np.zeros((0, 0)), np.zeros((0, 0, size, size))
    return np.concatenate(probabilities), np.concatenate(maps)


def grey_crop(
    means: list[np.ndarray], size: int, per_image: bool = False, pixel_map: PixelMap | None = None
) -> np.ndarray | None:
    """The uint8 (s, s) grey that patches are cut from: the training crops' mean (a scalar or
    per pixel; an ensemble's members' means averaged), rounded; for a model adapted per pixel
    (pixel_map), the grey levels that map to it. None for networks that standardise each crop
    by its own statistics (--normalisation image), whose means are 0: there each face's patch
    is its own mean grey (occlusion_maps)."""
    if per_image:
        return None
    mean = np.mean([np.broadcast_to(np.asarray(m, np.float64), (size, size)) for m in means], 0)
    if pixel_map is not None:
        mean = pixel_map.inverse(mean)
    return np.clip(np.round(mean), 0, 255).astype(np.uint8)


def explain_crops(
    model: FerModel,
    crops: np.ndarray,
    boxes: list,
    every_class: bool = False,
    patch: int = PATCH,
    stride: int = STRIDE,
) -> list[FaceExplanation]:
    """Explain aligned uint8 crops (n, s, s) with a model: a FaceExplanation for each, in order
    (boxes: each crop's box in its image)."""
    crops = np.asarray(crops, np.uint8)
    if len(crops) == 0:
        return []
    grey = grey_crop(
        [member.mean for member in model.networks],
        crops.shape[1],
        model.per_image,
        model.pixel_map,
    )
    threads = min(EXPLAIN_THREADS, default_workers())
    probabilities, maps = occlusion_maps(
        lambda batch: model.predict_proba(batch, threads=threads), crops, grey, patch, stride
    )
    explained = []
    for crop, box, row, face_maps in zip(crops, boxes, probabilities, maps, strict=True):
        best = int(np.argmax(row))
        explained.append(
            FaceExplanation(
                box=tuple(int(value) for value in box),
                label=model.classes[best],
                probability=float(row[best]),
                map=face_maps[best],
                crop=crop,
                probabilities={
                    label: round(float(p), 6) for label, p in zip(model.classes, row, strict=True)
                },
                maps=dict(zip(model.classes, face_maps, strict=True)) if every_class else {},
            )
        )
    return explained


def explain_faces(
    image: str | Path | np.ndarray, model: FerModel, every_class: bool = False
) -> list[FaceExplanation]:
    """Every face of an image (a path, or a BGR or grayscale uint8 array), aligned with the
    model's preprocessing settings and explained: a FaceExplanation each, largest first."""
    from fercli.faces.pipeline import align_faces

    faces = align_faces(image, model.preprocess)
    if not faces:
        return []
    return explain_crops(
        model, np.stack([face.crop for face in faces]), [face.box for face in faces], every_class
    )
