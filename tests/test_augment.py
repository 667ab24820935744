"""Augmentation, and the training images built a chunk at a time (fercli.learn.augment)."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from fercli.core.config import TrainConfig
from fercli.learn import augment as augment_module
from fercli.learn.augment import TrainingImages, augment, enlarge
from fercli.learn.fitting import configure_tensorflow, fit
from fercli.learn.selection import normalisation
from synthetic import make_dataset


@pytest.fixture(scope="module")
def dataset():
    """7 classes x 10 subjects x 4 crops = 280 images."""
    return make_dataset()


def test_augment_changes_images_keeps_shape_and_is_reproducible(dataset):
    images = dataset.crops[:50].astype(np.float32)
    first = augment(images, np.random.default_rng(5), 10.0)
    again = augment(images, np.random.default_rng(5), 10.0)
    other = augment(images, np.random.default_rng(6), 10.0)
    assert first.shape == images.shape and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert all(not np.array_equal(a, b) for a, b in zip(first, images, strict=True))
    assert np.array_equal(images, dataset.crops[:50])  # the input is left alone
    # Without rotation, each image is itself or its mirror image, and both occur.
    flipped = augment(images, np.random.default_rng(5), 0.0)
    same = [np.allclose(a, b) for a, b in zip(flipped, images, strict=True)]
    mirrored = [np.allclose(a, b[:, ::-1]) for a, b in zip(flipped, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)


def test_shift_augmentation_moves_the_content_by_up_to_the_limit():
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 15:17, 15:17] = 255  # a bright dot at the centre
    centres = []
    for seed in range(40):
        moved = augment(image, np.random.default_rng(seed), 0.0, max_shift=3.0)[0]
        rows, columns = np.nonzero(moved > 64)
        centres.append((rows.mean() - 15.5, abs(columns.mean() - 15.5)))
    offsets = np.array(centres)
    assert np.abs(offsets).max() <= 3.0 + 0.5
    assert np.abs(offsets).max() > 1.0  # it does move, by more than rounding


def test_enlarged_set_keeps_the_originals_and_alternates_mirrored_copies(dataset):
    images = dataset.crops[:20].astype(np.float32)
    enlarged = enlarge(images, np.random.default_rng(1), copies=4, flip=True, max_rotation=0.0)
    assert enlarged.shape == (100, 32, 32)
    assert np.array_equal(enlarged[:20], images)  # the originals, first and untouched
    for copy in range(4):
        block = enlarged[20 * (copy + 1) : 20 * (copy + 2)]
        expected = images[:, :, ::-1] if copy % 2 == 0 else images
        assert np.array_equal(block, expected), copy
    # With rotations, every copy differs from its original and the draw is reproducible.
    rotated = enlarge(images, np.random.default_rng(1), copies=2, flip=False, max_rotation=3.0)
    again = enlarge(images, np.random.default_rng(1), copies=2, flip=False, max_rotation=3.0)
    assert np.array_equal(rotated, again)
    pairs = zip(rotated[20:40], images, strict=True)
    assert all(not np.array_equal(copy, image) for copy, image in pairs)
    # A rotation of at most 3 degrees moves a 32x32 face only a little.
    assert np.abs(rotated[20:40] - images).mean() < np.abs(images[:, :, ::-1] - images).mean()


# --- the training images, lazily ---------------------------------------------------------


def old_transform_images(images, flips, angles, shifts):
    """transform_images as it was when every augmented image was made up front."""
    size = images.shape[1]
    centre = ((size - 1) / 2, (size - 1) / 2)
    out = np.empty_like(images)
    for index in range(len(images)):
        image = images[index, :, ::-1] if flips[index] else images[index]
        if angles[index] == 0 and not shifts[index].any():
            out[index] = image
            continue
        transform = cv2.getRotationMatrix2D(centre, float(angles[index]), 1.0)
        transform[:, 2] += shifts[index]
        out[index] = cv2.warpAffine(
            np.ascontiguousarray(image),
            transform,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def eager_epochs(
    crops: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    epochs: int,
):
    """Each epoch's (x, y) as fit built them before they were made lazily: every augmented
    image in memory at once (the old code, kept here as the reference)."""
    count = len(crops)
    images = crops.astype(np.float32)
    one_hot = np.eye(num_classes, dtype=np.float32)[targets]
    online = config.augment and config.augment_mode == "online"
    if config.augment and config.augment_mode == "copies" and config.copies > 0:
        parts = [images]
        for copy in range(config.copies):
            flips = np.full(count, config.flip and copy % 2 == 0)
            angles = rng.uniform(-config.max_rotation, config.max_rotation, count)
            shifts = np.zeros((count, 2))
            if config.max_shift > 0:
                shifts = rng.uniform(-config.max_shift, config.max_shift, (count, 2))
            parts.append(old_transform_images(images, flips, angles, shifts))
        images = np.concatenate(parts)
        one_hot = np.tile(one_hot, (config.copies + 1, 1))
    for _ in range(epochs):
        order = rng.permutation(len(images))
        batch = images[order]
        if online:
            flips = rng.random(count) < 0.5 if config.flip else np.zeros(count, bool)
            angles = rng.uniform(-config.max_rotation, config.max_rotation, count)
            shifts = np.zeros((count, 2))
            if config.max_shift > 0:
                shifts = rng.uniform(-config.max_shift, config.max_shift, (count, 2))
            batch = old_transform_images(batch, flips, angles, shifts)
        yield ((batch - mean) / std).astype(np.float32)[..., np.newaxis], one_hot[order]


SETTINGS = {
    "copies": TrainConfig(copies=3, max_rotation=5.0, max_shift=2.0),
    "copies without flips": TrainConfig(copies=2, flip=False),
    "online": TrainConfig(augment_mode="online", max_rotation=10.0, max_shift=1.5),
    "none": TrainConfig(augment=False),
    "pixel statistics": TrainConfig(copies=1, normalisation="pixel"),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("standardised", [False, True], ids=["uint8", "float32"])
def test_chunks_are_the_eager_epochs_exactly(dataset, name, standardised):
    """The same images, pixel for pixel, in the same order, with the same labels, epoch after
    epoch; chunks of whole batches. (float32: the per-dataset z-scored crops crossval gives.)"""
    config = SETTINGS[name]
    crops = dataset.crops[:70]
    if standardised:
        crops = ((crops - crops.mean()) / crops.std()).astype(np.float32)
    targets = np.arange(70) % 7
    mean, std = normalisation(crops, config.normalisation)
    lazy = TrainingImages(
        crops, targets, 7, config, np.random.default_rng(11), mean, std, chunk_images=40
    )
    expected = eager_epochs(crops, targets, 7, config, np.random.default_rng(11), mean, std, 3)
    copies = config.copies if config.augment and config.augment_mode == "copies" else 0
    for eager_x, eager_y in expected:
        chunks = list(lazy.epoch())
        sizes = [len(x) for x, _ in chunks]
        assert sizes[:-1] == [32] * (len(sizes) - 1) and 0 < sizes[-1] <= 32  # whole batches of 16
        x = np.concatenate([x for x, _ in chunks])
        y = np.concatenate([y for _, y in chunks])
        assert len(lazy) == len(x) == 70 * (1 + copies)
        assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 1)
        assert np.array_equal(x, eager_x)
        assert np.array_equal(y, eager_y)


def test_memory_does_not_grow_with_the_copies(dataset):
    """One epoch's peak allocation is one chunk's, whether 1 or 10 copies are added; the
    eager construction's grows with them."""
    crops = np.concatenate([dataset.crops] * 2)  # 560 crops
    targets = np.arange(len(crops)) % 7
    mean, std = normalisation(crops, "global")

    def peak(copies: int, lazily: bool) -> int:
        config = TrainConfig(copies=copies)
        tracemalloc.start()
        try:
            if lazily:
                rng = np.random.default_rng(0)
                images = TrainingImages(crops, targets, 7, config, rng, mean, std, chunk_images=256)
                for _ in images.epoch():
                    pass
            else:
                rng = np.random.default_rng(0)
                next(eager_epochs(crops, targets, 7, config, rng, mean, std, 1))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    one, ten = peak(1, lazily=True), peak(10, lazily=True)
    assert ten < 1.3 * one
    assert peak(10, lazily=False) > 4 * peak(1, lazily=False)  # what it was


def test_fit_trains_on_the_same_batches_in_chunks(dataset, monkeypatch):
    """Chunks of 32 images or the whole epoch in one graph call: the same network (each batch
    is the same computation on the same images, in the same order)."""
    configure_tensorflow(None)
    crops, targets = dataset.crops[::4], np.arange(70) % 7
    for config in (TrainConfig(epochs=2, copies=2), TrainConfig(epochs=2, augment_mode="online")):
        whole = fit(crops, targets, 7, config, seed=5).model
        monkeypatch.setattr(augment_module, "CHUNK_IMAGES", 32)
        losses = []
        chunked = fit(
            crops, targets, 7, config, seed=5, on_epoch=lambda *figures: losses.append(figures)
        ).model
        monkeypatch.undo()
        assert [(epoch, epochs) for epoch, _, _, _, epochs in losses] == [(1, 2), (2, 2)]
        assert all(np.isfinite(loss) and 0 <= accuracy <= 1 for _, loss, accuracy, _, _ in losses)
        for a, b in zip(whole.get_weights(), chunked.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_scale_augmentation_zooms_about_the_centre_within_the_limit():
    from fercli.core.errors import SettingError
    from fercli.learn.augment import copies_transforms, transform_images

    square = np.zeros((1, 32, 32), np.float32)
    square[0, 12:20, 12:20] = 255.0  # an 8x8 square in the middle
    nothing = np.zeros(1, bool), np.zeros(1), np.zeros((1, 2))
    bigger = transform_images(square, *nothing, np.array([1.5]))
    smaller = transform_images(square, *nothing, np.array([0.75]))
    area = (square > 127).sum()
    assert (bigger > 127).sum() > 1.8 * area and (smaller > 127).sum() < 0.7 * area
    # The centre stays where it was.
    rows, columns = np.nonzero(bigger[0] > 127)
    assert abs(rows.mean() - 15.5) < 0.6 and abs(columns.mean() - 15.5) < 0.6
    # Copies: the originals unscaled, the copies within 1 +/- max_scale, several scales.
    transforms = copies_transforms(100, np.random.default_rng(0), 2, True, 3.0, 0.0, 0.2)
    assert np.all(transforms.scales[:100] == 1)
    copies = transforms.scales[100:]
    assert copies.min() >= 0.8 and copies.max() <= 1.2 and copies.std() > 0.05
    # No scaling draws nothing: the paper recipe's random stream is unchanged.
    assert copies_transforms(100, np.random.default_rng(0), 2, True, 3.0).scales is None
    with pytest.raises(SettingError, match="max_scale"):
        TrainConfig(max_scale=0.7)
    with pytest.raises(SettingError, match="max_scale"):
        TrainConfig(max_scale=float("nan"))


def test_photometric_augmentation_changes_the_look_not_the_layout(dataset):
    from fercli.learn.augment import photometric_jitter

    images = dataset.crops[:200].astype(np.float32)
    jittered = photometric_jitter(images, np.random.default_rng(1), 1.0)
    again = photometric_jitter(images, np.random.default_rng(1), 1.0)
    assert np.array_equal(jittered, again) and jittered.dtype == np.float32
    assert jittered.min() >= 0 and jittered.max() <= 255
    changed = np.abs(jittered - images).mean(axis=(1, 2)) > 0.5
    assert 0.7 < changed.mean() < 1.0  # each of four looks on half: about 15/16 changed
    # The shape is kept: each image still correlates with its original far more than with
    # another class's image.
    own = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(jittered, images, strict=True)]
    assert np.median(own) > 0.8
    assert np.array_equal(photometric_jitter(images, np.random.default_rng(1), 0.0), images)


def test_photometric_strength_zero_draws_nothing_and_is_checked(dataset):
    from fercli.core.errors import SettingError

    crops, targets = dataset.crops[:64], np.arange(64) % 7
    plain = TrainingImages(crops, targets, 7, TrainConfig(copies=1), np.random.default_rng(3), 0, 1)
    jittered = TrainingImages(
        crops, targets, 7, TrainConfig(copies=1, photometric=0.5), np.random.default_rng(3), 0, 1
    )
    [(x_plain, y_plain)], [(x_jittered, y_jittered)] = plain.epoch(), jittered.epoch()
    assert np.array_equal(y_plain, y_jittered) and not np.array_equal(x_plain, x_jittered)
    # The looks are drawn anew every epoch: the same source image looks different.
    [(x2_jittered, _)] = jittered.epoch()
    assert not np.array_equal(np.sort(x2_jittered, axis=None), np.sort(x_jittered, axis=None))
    with pytest.raises(SettingError, match="photometric"):
        TrainConfig(photometric=1.5)


def test_mixup_blends_images_and_targets_in_the_same_proportion(dataset):
    from fercli.core.errors import SettingError
    from fercli.learn.augment import mix_up

    # One class per image, so that each target names the two images it blends.
    x = dataset.crops[:100].astype(np.float32)
    y = np.eye(100, dtype=np.float32)
    mixed_x, mixed_y = mix_up(x, y, np.random.default_rng(0), 0.4)
    assert mixed_x.shape == x.shape and np.allclose(mixed_y.sum(1), 1)
    for index in range(100):
        weights = mixed_y[index].copy()
        own = weights[index]
        weights[index] = 0
        partner = int(weights.argmax())
        expected = own * x[index] + (1 - own) * x[partner]
        assert np.allclose(mixed_x[index], expected, atol=1e-2)
    assert not np.allclose(mixed_x, x)
    crops, targets = dataset.crops[:64], np.arange(64) % 7
    images = TrainingImages(
        crops, targets, 7, TrainConfig(copies=1, mixup=0.2), np.random.default_rng(3), 0, 1
    )
    [(_, soft)] = images.epoch()
    assert np.allclose(soft.sum(1), 1) and (soft.max(1) < 1 - 1e-6).any()
    with pytest.raises(SettingError, match="mixup"):
        TrainConfig(mixup=-1)
