"""What a network is fed: uint8 crops turned into the values its z-score statistics are of
(the grey levels, or each crop standardised by its own statistics), mapped first, under
--adapt, from the labelled set's per-pixel statistics onto the training crops' (PixelMap);
and those per-pixel statistics as a model file keeps them. NumPy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fercli.core.errors import ModelError

# A crop's own standard deviation is floored at one grey level: a flat crop stays flat.
MIN_IMAGE_STD = 1.0


def standardise_each(crops: np.ndarray) -> np.ndarray:
    """Each crop (n, s, s) minus its own mean, divided by its own standard deviation (float64):
    --normalisation image, which needs no statistics of the set a photo comes from."""
    values = crops.astype(np.float64)
    mean = values.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(values.std(axis=(1, 2), keepdims=True), MIN_IMAGE_STD)
    return (values - mean) / std


# The training crops' per-pixel statistics (meta "pixel_statistics", arrays pixel_mean and
# pixel_std): what --adapt maps a new set's crops onto. Optional: a file without them (an older
# fercli's) predicts the same, and --adapt then moves the global statistics only. A version
# this fercli does not know is ignored the same way, so that a later change of what they hold
# never feeds an older fercli numbers it would misread.
PIXEL_STATISTICS_VERSION = 1
# A set's per-pixel deviation is floored at one grey level before it divides (a pixel that
# never changes in the set, the black corner of every crop, is not stretched into noise).
MIN_PIXEL_STD = 1.0


@dataclass(frozen=True)
class PixelStatistics:
    """The per-pixel mean and standard deviation (s, s) of a set of uint8 crops' grey levels,
    before any normalisation of the network's, and how many crops they are of."""

    mean: np.ndarray
    std: np.ndarray
    images: int

    @classmethod
    def of(cls, crops: np.ndarray) -> PixelStatistics:
        values = np.asarray(crops, np.float64)
        return cls(values.mean(axis=0), values.std(axis=0), len(values))


@dataclass(frozen=True)
class PixelMap:
    """--adapt's mapping of the grey levels of the crops being labelled onto the training
    crops', pixel by pixel, applied before the network's own normalisation: each pixel minus
    the labelled set's mean image plus the training crops' (with scale, also divided by the
    set's deviation image and multiplied by the training crops')."""

    source: PixelStatistics  # the crops being labelled
    target: PixelStatistics  # the training crops (the model file's)
    scale: bool = False

    @property
    def gain(self) -> np.ndarray | float:
        if not self.scale:
            return 1.0
        return self.target.std / np.maximum(self.source.std, MIN_PIXEL_STD)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (n, s, s) (or grey levels as floats) -> mapped float64 grey levels."""
        values = np.asarray(crops, np.float64)
        return (values - self.source.mean) * self.gain + self.target.mean

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """The grey levels of a labelled crop that map to values (s, s)."""
        return (np.asarray(values, np.float64) - self.target.mean) / self.gain + self.source.mean


def input_values(
    crops: np.ndarray, per_image: bool = False, pixel_map: PixelMap | None = None
) -> np.ndarray:
    """uint8 crops (n, s, s) as the float64 values the z-score statistics are of: the grey
    levels (mapped first by pixel_map: --adapt), or standardise_each's when per_image."""
    values = crops.astype(np.float64) if pixel_map is None else pixel_map(crops)
    return standardise_each(values) if per_image else values


def network_input(
    crops: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    per_image: bool = False,
    pixel_map: PixelMap | None = None,
) -> np.ndarray:
    """uint8 crops (n, s, s) -> the network's float64 input (n, s, s, 1): input_values
    z-scored with the training statistics."""
    return ((input_values(crops, per_image, pixel_map) - mean) / std)[..., np.newaxis]


def checked_pixel_statistics(meta: dict, arrays: dict, size: int) -> PixelStatistics | None:
    """A model file's training per-pixel statistics, checked; None where the file has none (an
    older fercli's) or holds a version of them this fercli does not know (a newer one's).
    ModelError for a description or arrays that cannot be them."""
    described = meta.get("pixel_statistics")
    if described is None or (
        isinstance(described, dict) and described.get("version") != PIXEL_STATISTICS_VERSION
    ):
        return None
    if not (
        isinstance(described, dict)
        and all(
            isinstance(described.get(key), str) and described[key] in arrays
            for key in ("mean", "std")
        )
        and isinstance(described.get("images"), int)
        and not isinstance(described["images"], bool)
        and described["images"] > 0
    ):
        raise ModelError(
            "damaged model file (pixel_statistics does not name its mean and std arrays and "
            "the number of images)"
        )
    mean, std = arrays[described["mean"]], arrays[described["std"]]
    for name, value in (("mean", mean), ("std", std)):
        if (
            value.shape != (size, size)
            or value.dtype.kind != "f"
            or not np.all(np.isfinite(value))
            or not np.all((value >= 0) & (value <= 255))
        ):
            raise ModelError(
                f"damaged model file (the training crops' per-pixel {name} is not a "
                f"{size}x{size} image of grey levels)"
            )
    return PixelStatistics(mean.astype(np.float64), std.astype(np.float64), described["images"])
