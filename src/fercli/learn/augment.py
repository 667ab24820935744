"""Augmentation: the transformed training images each epoch trains on, built a chunk at a time.

Only the transforms' parameters (mirrored or not, an angle, a shift, a scale per image) are
drawn and kept; the images are made from the original crops when an epoch needs them, one
chunk at a time (photometric jitter and mixup are drawn there too). So training holds the
crops, the parameters and one chunk of float32 images, however many copies augmentation adds:
a training process on FER2013's 28,709 crops with 5 copies peaked at 1.06 GB instead of
4.06 GB (bench/train_memory.py, README's Speed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fercli.core.config import TrainConfig
from fercli.infer.model import standardise_each

# Images per chunk of an epoch (rounded down to whole batches): 16 MB of float32 32x32
# images, small beside TensorFlow, and large enough that a chunk's graph call costs nothing
# against its training (a 213-image set with 5 copies is one chunk, as the whole epoch was).
CHUNK_IMAGES = 4096


@dataclass(frozen=True)
class Transforms:
    """Transform parameters, one per image: mirrored or not, a rotation in degrees about the
    centre, a (dx, dy) shift in pixels and a scale about the centre (None: all 1)."""

    flips: np.ndarray  # (n,) bool
    angles: np.ndarray  # (n,) float
    shifts: np.ndarray  # (n, 2) float
    scales: np.ndarray | None = None  # (n,) float

    def __len__(self) -> int:
        return len(self.flips)

    def __getitem__(self, index) -> Transforms:
        scales = None if self.scales is None else self.scales[index]
        return Transforms(self.flips[index], self.angles[index], self.shifts[index], scales)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """images[i] transformed by the i-th parameters (a new array)."""
        return transform_images(images, self.flips, self.angles, self.shifts, self.scales)


def online_transforms(
    count: int,
    rng: np.random.Generator,
    max_rotation: float,
    max_shift: float = 0.0,
    flip: bool = True,
    max_scale: float = 0.0,
) -> Transforms:
    """Random parameters for count images ("online" augmentation): mirrored half the time (if
    flip), rotated by up to max_rotation degrees, shifted by up to max_shift pixels, scaled by
    1 +/- max_scale at most."""
    flips = rng.random(count) < 0.5 if flip else np.zeros(count, bool)
    angles = rng.uniform(-max_rotation, max_rotation, count)
    shifts = random_shifts(count, rng, max_shift)
    return Transforms(flips, angles, shifts, random_scales(count, rng, max_scale))


def copies_transforms(
    count: int,
    rng: np.random.Generator,
    copies: int,
    flip: bool,
    max_rotation: float,
    max_shift: float = 0.0,
    max_scale: float = 0.0,
) -> Transforms:
    """Parameters of the enlarged set of count images ("copies" augmentation): the originals
    (no transform) followed by `copies` transformed copies of every image; copy k is mirrored
    when flip is on and k is even, and rotated (and shifted, and scaled) at random. Image i of
    the enlarged set is a transform of original i % count."""
    ones = np.ones(count) if max_scale > 0 else None
    parts = [Transforms(np.zeros(count, bool), np.zeros(count), np.zeros((count, 2)), ones)]
    for copy in range(copies):
        flips = np.full(count, flip and copy % 2 == 0)
        angles = rng.uniform(-max_rotation, max_rotation, count)
        shifts = random_shifts(count, rng, max_shift)
        parts.append(Transforms(flips, angles, shifts, random_scales(count, rng, max_scale)))
    return Transforms(
        *(
            np.concatenate([getattr(part, name) for part in parts])
            for name in ("flips", "angles", "shifts")
        ),
        None if ones is None else np.concatenate([part.scales for part in parts]),
    )


def random_shifts(count: int, rng: np.random.Generator, max_shift: float) -> np.ndarray:
    """(count, 2) shifts of up to max_shift pixels; zeros, drawing nothing, when it is 0."""
    if max_shift > 0:
        return rng.uniform(-max_shift, max_shift, (count, 2))
    return np.zeros((count, 2))


def random_scales(count: int, rng: np.random.Generator, max_scale: float) -> np.ndarray | None:
    """count scales in 1 +/- max_scale, even on a log scale (zooming in by 1.1 is as likely
    as out by 1/1.1); None, drawing nothing, when it is 0 (the random stream stays the
    paper recipe's)."""
    if max_scale > 0:
        return np.exp(rng.uniform(np.log1p(-max_scale), np.log1p(max_scale), count))
    return None


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    max_rotation: float,
    max_shift: float = 0.0,
    flip: bool = True,
) -> np.ndarray:
    """A random transformed copy of every image ("online" augmentation; float32 in/out): see
    online_transforms."""
    return online_transforms(len(images), rng, max_rotation, max_shift, flip).apply(images)


def enlarge(
    images: np.ndarray,
    rng: np.random.Generator,
    copies: int,
    flip: bool,
    max_rotation: float,
    max_shift: float = 0.0,
) -> np.ndarray:
    """The originals followed by `copies` transformed copies of every image, all in memory
    ("copies" augmentation, the paper's "enlarged with flipped and rotated copies"): see
    copies_transforms. Training builds the same images lazily (TrainingImages)."""
    transforms = copies_transforms(len(images), rng, copies, flip, max_rotation, max_shift)
    return transforms.apply(images[np.arange(len(transforms)) % len(images)])


def transform_images(
    images: np.ndarray,
    flips: np.ndarray,
    angles: np.ndarray,
    shifts: np.ndarray,
    scales: np.ndarray | None = None,
) -> np.ndarray:
    """Each image mirrored (where flips), rotated by its angle in degrees about the centre,
    scaled about the centre by its scale (a scale above 1 zooms in) and shifted by its
    (dx, dy); borders replicated."""
    import cv2

    size = images.shape[1]
    centre = ((size - 1) / 2, (size - 1) / 2)
    out = np.empty_like(images)
    # A 32x32 image is too small to share out: OpenCV's threads would double the time of each
    # call (the same pixels either way). Training makes these every epoch.
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        # Python numbers: numpy's per-element indexing would cost more than the warp.
        every_scale = [1.0] * len(flips) if scales is None else scales.tolist()
        parameters = zip(flips.tolist(), angles.tolist(), shifts.tolist(), every_scale, strict=True)
        for index, (flip, angle, (dx, dy), scale) in enumerate(parameters):
            image = images[index, :, ::-1] if flip else images[index]
            if angle == 0 and dx == 0 and dy == 0 and scale == 1:
                out[index] = image
                continue
            transform = cv2.getRotationMatrix2D(centre, angle, scale)
            transform[0, 2] += dx
            transform[1, 2] += dy
            cv2.warpAffine(
                np.ascontiguousarray(image),
                transform,
                (size, size),
                dst=out[index],
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
    finally:
        cv2.setNumThreads(opencv_threads)
    return out


# At photometric strength 1: gamma and contrast factors up to 1.6 and 1.5 either way, blur of
# sigma up to 1 crop pixel, noise of sigma up to 8 grey levels; each applied to half the
# images, drawn anew every epoch. Another camera's look, after its crop was equalized.
PHOTOMETRIC_RANGES = {"gamma": 1.6, "contrast": 1.5, "blur": 1.0, "noise": 8.0}


def photometric_jitter(images: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """float32 crops (n, s, s) in 0..255 with random gamma, contrast, blur and noise (each
    on about half of them, up to PHOTOMETRIC_RANGES x strength); a new array, clipped."""
    import cv2

    count = len(images)
    chosen = {name: rng.random(count) < 0.5 for name in PHOTOMETRIC_RANGES}
    gamma = np.exp(rng.uniform(-1, 1, count) * strength * np.log(PHOTOMETRIC_RANGES["gamma"]))
    factor = np.exp(rng.uniform(-1, 1, count) * strength * np.log(PHOTOMETRIC_RANGES["contrast"]))
    sigma = rng.uniform(0, strength * PHOTOMETRIC_RANGES["blur"], count)
    noise = rng.uniform(0, strength * PHOTOMETRIC_RANGES["noise"], count)
    out = np.clip(images, 0, 255).astype(np.float32)
    power = np.where(chosen["gamma"], gamma, 1.0)[:, None, None]
    out = 255 * (out / 255) ** power
    mean = out.mean(axis=(1, 2), keepdims=True)
    out = mean + np.where(chosen["contrast"], factor, 1.0)[:, None, None] * (out - mean)
    for index in np.flatnonzero(chosen["blur"] & (sigma > 0.05)):
        out[index] = cv2.GaussianBlur(out[index], (0, 0), float(sigma[index]))
    spread = np.where(chosen["noise"], noise, 0.0)[:, None, None]
    out = out + spread * rng.standard_normal(out.shape)
    return np.clip(out, 0, 255).astype(np.float32)


class TrainingImages:
    """What the network trains on, epoch by epoch: the crops augmented as config says,
    shuffled, z-scored with (mean, std) and one-hot labelled, made a chunk at a time.

    The random draws are those of building every image up front: the copies' parameters
    when this is made, then each epoch's order (and, online, its parameters) when epoch()
    is called; so the chunks put together are exactly the images and order the eager
    construction gave (enlarge or augment, then index with the order, then z-score).
    """

    def __init__(
        self,
        crops: np.ndarray,
        targets: np.ndarray,
        num_classes: int,
        config: TrainConfig,
        rng: np.random.Generator,
        mean: np.ndarray,
        std: np.ndarray,
        chunk_images: int | None = None,
        draw_weights: np.ndarray | None = None,
    ):
        self.crops, self.targets, self.num_classes = crops, targets, num_classes
        # How often each crop is drawn relative to the others (selection.dataset_draws: each dataset
        # of a combination as often as the others); None: each once an epoch, in a new order.
        self.draw_weights = draw_weights
        self.config, self.rng, self.mean, self.std = config, rng, mean, std
        self.online = config.augment and config.augment_mode == "online"
        # The enlarged set's parameters, drawn once ("copies"); None: the crops as they are.
        self.copies = None
        if config.augment and config.augment_mode == "copies" and config.copies > 0:
            self.copies = copies_transforms(
                len(crops),
                rng,
                config.copies,
                config.flip,
                config.max_rotation,
                config.max_shift,
                config.max_scale,
            )
        # Whole batches, so that chunks cut the epoch exactly where its batches begin.
        self.chunk = config.batch_size * max(1, (chunk_images or CHUNK_IMAGES) // config.batch_size)

    def __len__(self) -> int:
        """Images per epoch."""
        return len(self.crops) if self.copies is None else len(self.copies)

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Draw the next epoch's order (and online transforms) now; return its chunks, each
        (images (k, s, s, 1) float32 z-scored, one-hot targets (k, classes) float32)."""
        config = self.config
        if self.draw_weights is None:
            order = self.rng.permutation(len(self))
        else:
            # As many draws as images, with replacement: a small dataset's images come up
            # several times an epoch (each time transformed anew), a large one's not all.
            weights = self.draw_weights[np.arange(len(self)) % len(self.crops)]
            order = self.rng.choice(len(self), size=len(self), p=weights / weights.sum())
        if self.online:
            transforms = online_transforms(
                len(order),
                self.rng,
                config.max_rotation,
                config.max_shift,
                config.flip,
                config.max_scale,
            )
        else:
            transforms = None if self.copies is None else self.copies[order]
        # The epoch's photometric and mixup draws come from a generator of their own, made
        # only when either is on (the paper recipe's random stream stays as it was).
        draws = None
        if config.augment and (config.photometric > 0 or config.mixup > 0):
            draws = np.random.default_rng(self.rng.integers(2**63))
        return self._chunks(order % len(self.crops), transforms, draws)

    def _chunks(
        self,
        sources: np.ndarray,
        transforms: Transforms | None,
        draws: np.random.Generator | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        one_hot = np.eye(self.num_classes, dtype=np.float32)
        config = self.config
        for start in range(0, len(sources), self.chunk):
            part = slice(start, start + self.chunk)
            images = self.crops[sources[part]].astype(np.float32)
            if transforms is not None:
                images = transforms[part].apply(images)
            if draws is not None and config.photometric > 0:
                images = photometric_jitter(images, draws, config.photometric)
            if config.normalisation == "image":
                images = standardise_each(images)
            x = ((images - self.mean) / self.std).astype(np.float32)
            y = one_hot[self.targets[sources[part]]]
            if draws is not None and config.mixup > 0:
                x, y = mix_up(x, y, draws, config.mixup)
            yield x[..., np.newaxis], y


def mix_up(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """mixup: each image and its one-hot target blended with another of the chunk, in a
    proportion drawn from Beta(alpha, alpha) (float32 out)."""
    partner = rng.permutation(len(x))
    share = rng.beta(alpha, alpha, len(x)).astype(np.float32)
    mixed_x = share[:, None, None] * x + (1 - share[:, None, None]) * x[partner]
    mixed_y = share[:, None] * y + (1 - share[:, None]) * y[partner]
    return mixed_x.astype(np.float32), mixed_y.astype(np.float32)
