"""Synthetic prepared datasets for the training, model, predict and CLI tests.

Each class is a shape (a bright disc, a horizontal bar, a vertical bar, a cross, a ring, a
diagonal, a checkerboard) on a 32x32 crop, with noise, a small random shift and a
per-subject brightness, so that a small network separates the classes in a few epochs while
no two crops are the same. Subjects and file names follow CK+ ("S001_003_00000002.png"), so
that subject folds can be tested.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fercli.core.config import CROP_SIZE, PreprocessConfig
from fercli.core.labels import BASIC_LABELS
from fercli.core.store import datasets_dir
from fercli.data.prepared import PreparedDataset, save_dataset

SHAPES = ("disc", "hbar", "vbar", "cross", "ring", "diagonal", "checker")


def draw_shape(kind: str, size: int = CROP_SIZE, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A float mask in [0, 1] of one class's shape, moved by shift (dx, dy) pixels."""
    mask = np.zeros((size, size), np.float32)
    centre = (size // 2 + shift[0], size // 2 + shift[1])
    third = size // 3
    if kind == "disc":
        cv2.circle(mask, centre, third, 1.0, -1)
    elif kind == "hbar":
        cv2.rectangle(
            mask, (4 + shift[0], centre[1] - 3), (size - 5 + shift[0], centre[1] + 3), 1.0, -1
        )
    elif kind == "vbar":
        cv2.rectangle(
            mask, (centre[0] - 3, 4 + shift[1]), (centre[0] + 3, size - 5 + shift[1]), 1.0, -1
        )
    elif kind == "cross":
        cv2.line(mask, (centre[0] - third, centre[1]), (centre[0] + third, centre[1]), 1.0, 3)
        cv2.line(mask, (centre[0], centre[1] - third), (centre[0], centre[1] + third), 1.0, 3)
    elif kind == "ring":
        cv2.circle(mask, centre, third, 1.0, 3)
    elif kind == "diagonal":
        cv2.line(
            mask, (4 + shift[0], 4 + shift[1]), (size - 5 + shift[0], size - 5 + shift[1]), 1.0, 4
        )
    elif kind == "checker":
        cells = (np.indices((size, size)) + np.array(shift)[:, None, None]) // 8
        mask[:] = (cells.sum(axis=0) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask


def make_dataset(
    labels: tuple[str, ...] = BASIC_LABELS,
    subjects: int = 10,
    per_subject: int = 4,
    seed: int = 0,
    with_subjects: bool = True,
) -> PreparedDataset:
    """A PreparedDataset of len(labels) * subjects * per_subject synthetic 32x32 crops.

    Class i is SHAPES[i]; subject s has its own background and shape brightness; each crop has
    its own shift and noise. Without subjects, the subject column is empty and the file names
    carry no subject either.
    """
    if len(labels) > len(SHAPES):
        raise ValueError(f"at most {len(SHAPES)} classes")
    rng = np.random.default_rng(seed)
    crops, label_column, subject_column, paths = [], [], [], []
    for subject_number in range(1, subjects + 1):
        subject = f"S{subject_number:03d}"
        background = rng.uniform(40, 90)
        foreground = rng.uniform(150, 220)
        for class_number, label in enumerate(labels, start=1):
            for frame in range(1, per_subject + 1):
                shift = tuple(int(value) for value in rng.integers(-2, 3, size=2))
                mask = draw_shape(SHAPES[class_number - 1], CROP_SIZE, shift)
                image = (
                    background + (foreground - background) * mask + rng.normal(0, 12, mask.shape)
                )
                crops.append(np.clip(image, 0, 255).astype(np.uint8))
                label_column.append(label)
                subject_column.append(subject if with_subjects else "")
                if with_subjects:
                    name = f"{subject}_{class_number:03d}_{frame:08d}.png"
                    paths.append(f"/synthetic/{subject}/{class_number:03d}/{name}")
                else:
                    paths.append(f"/synthetic/{label}/img{len(paths):04d}.png")
    config = PreprocessConfig()
    return PreparedDataset(
        crops=np.stack(crops),
        labels=np.array(label_column),
        subjects=np.array(subject_column),
        paths=np.array(paths),
        meta={
            "layout": "ck+" if with_subjects else "folders",
            "source": "/synthetic",
            "preprocess": config.to_dict(),
            "preprocess_fingerprint": config.fingerprint(),
            "classes": {label: label_column.count(label) for label in labels},
        },
    )


def save_synthetic(dataset: PreparedDataset, name: str = "synthetic") -> Path:
    """Save a dataset where the CLI finds it (FER_HOME/datasets/<name>/dataset.npz, the most
    recent one); returns the file."""
    return save_dataset(dataset, datasets_dir() / name)


def train_tiny_model(path: Path, labels: tuple[str, ...]) -> Path:
    """A small model trained on synthetic shapes of the given classes (its labels mean nothing
    on a real face: for tests that count faces, tracks and boxes); returns its file."""
    from fercli.core.config import TrainConfig
    from fercli.learn.training import train_model

    return train_model(make_dataset(labels=labels, subjects=4), TrainConfig(epochs=2), path).path


# Where make_region_dataset puts the one region that tells the classes apart (rows, columns):
# off centre, so that a map which just likes the middle of the crop cannot find it.
REGION = (slice(19, 29), slice(3, 13))


def make_region_dataset(
    labels: tuple[str, ...] = ("anger", "happiness", "surprise"),
    per_class: int = 60,
    seed: int = 0,
) -> PreparedDataset:
    """A PreparedDataset whose class is carried by one region alone (REGION: a 10x10 square in
    the lower left): there class i has its own texture (horizontal stripes, vertical stripes,
    a bright spot); everywhere else every crop is the same kind of noise. A network trained on
    it can only look at REGION, so an honest map must find it."""
    if len(labels) > 3:
        raise ValueError("at most 3 classes")
    rng = np.random.default_rng(seed)
    rows, columns = np.indices((10, 10))
    textures = [
        np.where(rows % 4 < 2, 70.0, -70.0),
        np.where(columns % 4 < 2, 70.0, -70.0),
        90.0 * np.exp(-((rows - 4.5) ** 2 + (columns - 4.5) ** 2) / 8) - 30,
    ]
    crops, label_column = [], []
    for class_number, label in enumerate(labels):
        for _ in range(per_class):
            crop = cv2.GaussianBlur(rng.normal(128, 45, (CROP_SIZE, CROP_SIZE)), (3, 3), 0)
            crop[REGION] += textures[class_number] + rng.normal(0, 15, (10, 10))
            crops.append(np.clip(crop, 0, 255).astype(np.uint8))
            label_column.append(label)
    config = PreprocessConfig()
    count = len(crops)
    return PreparedDataset(
        crops=np.stack(crops),
        labels=np.array(label_column),
        subjects=np.array([""] * count),
        paths=np.array([f"/synthetic/region/img{index:04d}.png" for index in range(count)]),
        meta={
            "layout": "folders",
            "source": "/synthetic/region",
            "preprocess": config.to_dict(),
            "preprocess_fingerprint": config.fingerprint(),
            "classes": {label: label_column.count(label) for label in labels},
        },
    )
