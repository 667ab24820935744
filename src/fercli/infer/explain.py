"""Where the network looks: occlusion sensitivity maps, on the NumPy forward pass.

A grey patch slides over the aligned crop; the occluded copies (and the crop itself) go
through the network in batches of bounded size, and a pixel's value is how much covering it
lowers a class's probability, averaged over the patches that covered it. No TensorFlow and no
gradients, so any model that predict runs can be explained, ensembles and test-time flips
included. The grey is the training crops' mean (the z-scored input 0, "no information" to
the network). What the map shows is this network on this crop, not the face: a region the
network never needed, or whose evidence another region repeats, stays dark; the patch size
sets the map's resolution (nothing finer than a patch shows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
# Faces explained together: their probabilities under every occlusion are kept until their
# maps are made (a few KB a face of 32x32, 0.9 MB of 256x256).
FACES_PER_CALL = 8
# Pixels of occluded copies that go through the network in one call: 2,048 copies of a 32x32
# crop, 227 of 96x96, 32 of 256x256. The forward pass holds about 30 bytes a pixel of them
# (float64 input, mirrored copies, float32), so about 64 MB, whatever the crop size: the copies
# of one face number about size**2 / 4 (2,025 of 96x96, 15,625 of 256x256), and all of them
# at once grew with the fourth power of the size (7.6 GB for 256x256).
BATCH_PIXELS = 2**21
# An ensemble's networks explain a batch on this many threads (at most one a core): ten
# networks' batch of occluded copies (2,048 of 32x32 crops) is a few hundred ms of matrix
# products, which numpy runs without the GIL. The maps are the same to the bit
# (FerModel.predict_proba).
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
    covering it. predict: uint8 crops -> probabilities, called with occlusion_batches of
    FACES_PER_CALL faces at a time (the faces themselves first, then their occluded copies).
    grey None: each face's patch is its own mean grey level (networks that standardise each
    crop by its own statistics: grey_crop)."""
    count, size = len(crops), crops.shape[1]
    positions = patch_positions(size, patch, stride)
    # covering[r, i]: whether the patch at the i-th position along a side covers row (or
    # column) r. A pixel's summed drop is covering @ drops @ covering.T, class by class.
    covering = np.zeros((size, len(positions)))
    for number, start in enumerate(positions):
        covering[start : start + patch, number] = 1.0
    times_covered = np.outer(covering.sum(axis=1), covering.sum(axis=1))
    probabilities, maps = [], []
    for start in range(0, count, FACES_PER_CALL):
        chunk = crops[start : start + FACES_PER_CALL]
        if grey is None:
            fills = np.round(chunk.mean(axis=(1, 2))).astype(np.uint8)[:, None, None]
        else:
            fills = grey[None]
        fills = np.broadcast_to(fills, chunk.shape)
        outputs = []
        for batch in occlusion_batches(chunk, fills, positions, patch):
            output = np.asarray(predict(batch), np.float64)
            if not np.all(np.isfinite(output)):
                raise ModelError(
                    "damaged model (its probabilities for a face are not finite numbers)"
                )
            outputs.append(output)
        output = np.concatenate(outputs)
        base = output[: len(chunk)]
        copies = output[len(chunk) :].reshape(len(chunk), len(positions), len(positions), -1)
        drops = (base[:, None, None, :] - copies).transpose(0, 3, 1, 2)  # (faces, classes, i, j)
        maps.append(covering @ drops @ covering.T / times_covered)
        probabilities.append(base)
    if not maps:
        return np.zeros((0, 0)), np.zeros((0, 0, size, size))
    return np.concatenate(probabilities), np.concatenate(maps)


def occlusion_batches(
    crops: np.ndarray,
    fills: np.ndarray,
    positions: list[int],
    patch: int,
    pixels: int = BATCH_PIXELS,
) -> Iterator[np.ndarray]:
    """The crops (n, s, s), then each one's occluded copies (a patch x patch square of its fill,
    an (s, s) image, at each pair of positions: top, then left), face after face, in uint8
    batches of at most `pixels` pixels (one crop at least): what goes through the network a
    call at a time, so that the memory of explaining does not grow with the copies' count."""
    size = crops.shape[1]
    per_batch = max(1, pixels // (size * size))

    def copies() -> Iterator[tuple[np.ndarray, tuple | None]]:
        """Each crop, with the fill and place of its patch (None: the crop itself)."""
        for crop in crops:
            yield crop, None
        for crop, fill in zip(crops, fills, strict=True):
            for top in positions:
                for left in positions:
                    yield crop, (fill, slice(top, top + patch), slice(left, left + patch))

    batch, filled = np.empty((per_batch, size, size), np.uint8), 0
    for crop, patched in copies():
        batch[filled] = crop
        if patched is not None:
            fill, rows, columns = patched
            batch[filled, rows, columns] = fill[rows, columns]
        filled += 1
        if filled == per_batch:
            yield batch
            batch, filled = np.empty_like(batch), 0
    if filled:
        yield batch[:filled]


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
