"""What a model file keeps of the data it was trained on: the digests of its training crops
and of its training images' files (so that predict can tell a face the model was trained on),
and the crops' per-pixel statistics (--adapt). NumPy only."""

from __future__ import annotations

import numpy as np

from fercli.core.errors import ModelError
from fercli.core.hashing import CROP_DIGEST_BYTES, SOURCE_DIGEST_BYTES, crop_digests
from fercli.infer.inputs import PIXEL_STATISTICS_VERSION, PixelStatistics

# The training crops' SHA-256 digests are kept cut to 8 bytes: 80 KB for 10,000 crops, and a
# chance of about n / 2**64 that a new face is taken for a training face.
TRAINING_HASH_BYTES = CROP_DIGEST_BYTES


def crop_hashes(crops: np.ndarray) -> np.ndarray:
    """The sorted, distinct crop_digests of crops: (n, TRAINING_HASH_BYTES) uint8, for a model
    file to recognise its training faces."""
    return np.unique(crop_digests(crops, TRAINING_HASH_BYTES), axis=0)


def training_arrays(
    training_crops: np.ndarray, training_sources: np.ndarray | None
) -> tuple[dict[str, np.ndarray], dict]:
    """What a model file keeps of its training data: the crops' hashes (seen_in_training),
    the source digests of their files where known (seen_source; kept sorted and distinct)
    and the crops' pixel statistics (the arrays), and the meta entry that names the
    statistics."""
    pixels = PixelStatistics.of(training_crops)
    arrays = {
        "training_hashes": crop_hashes(training_crops),
        "pixel_mean": pixels.mean.astype(np.float32),
        "pixel_std": pixels.std.astype(np.float32),
    }
    if training_sources is not None:
        digest_array("training_sources", training_sources, SOURCE_DIGEST_BYTES)
        arrays["training_sources"] = np.unique(training_sources, axis=0)
    entry = {
        "version": PIXEL_STATISTICS_VERSION,
        "mean": "pixel_mean",
        "std": "pixel_std",
        "images": pixels.images,
    }
    return arrays, entry


def digest_array(name: str, array: np.ndarray | None, length: int) -> np.ndarray | None:
    """A model file's array of digests (training_hashes, training_sources), checked to be
    (n, length) uint8; None where the file has none (older files)."""
    if array is None:
        return None
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != length:
        raise ModelError(f"{name} is {array.dtype} {array.shape}, not (n, {length}) uint8")
    return array
