"""Labelling faces: aligned crops in, a FacePrediction (box, label, probabilities) for each
out. The one verb for "the expression of every face in this image"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.errors import ImageError, ModelError
from fercli.core.hashing import source_digest
from fercli.faces.pipeline import align_faces
from fercli.media.images import image_name, read_file
from fercli.media.video import is_video

if TYPE_CHECKING:
    from fercli.infer.model import FerModel


@dataclass
class FacePrediction:
    box: tuple[int, int, int, int]  # x, y, width, height
    label: str
    probabilities: dict[str, float]
    # Whether the model was trained on this face: on exactly this crop, or on the largest face
    # of this very image file (then its score says nothing about new faces); None when the
    # model file does not say (written by an older fercli).
    in_training_data: bool | None = None
    # The image is itself a face crop in which the detector found nothing: the face was found
    # from its own landmarks (faces.face_crops).
    whole_image: bool = False
    # False: such a face that the face check turned down, labelled on the word of
    # --face-crops (every image is a face crop).
    face_check: bool = True

    def to_json(self) -> dict:
        return {
            "box": list(self.box),
            "label": self.label,
            "probabilities": self.probabilities,
            "in_training_data": self.in_training_data,
            **({"whole_image": True} if self.whole_image else {}),
            **({} if self.face_check else {"face_check": False}),
        }


def label_crops(
    model: FerModel,
    crops: np.ndarray,
    boxes: list,
    sources: list[str],
    files: list[bytes | None] | None = None,
) -> list[FacePrediction]:
    """Label aligned uint8 crops (n, s, s) in one forward pass; boxes and the source of each
    (for messages) in the same order. ModelError if the network gives a non-finite number.

    files: for each crop that is the largest face of an image file, the file's source digest
    (core.hashing.source_digest), else None: a training photo is recognised by its file too,
    where its face is cropped differently from its training crop (in_training_data)."""
    probabilities = model.predict_proba(crops)
    for source, row in zip(sources, probabilities, strict=True):
        if not np.all(np.isfinite(row)):
            # The load check passed, yet this face overflows the network: the model is broken.
            raise ModelError(
                f"{model.path}: damaged model file (its probabilities for a face in "
                f"{source} are not finite numbers)"
            )
    seen = _in_training(model, crops, files)
    return [
        FacePrediction(
            box=tuple(int(value) for value in box),
            label=model.classes[int(np.argmax(row))],
            probabilities={
                label: round(float(p), 6) for label, p in zip(model.classes, row, strict=True)
            },
            in_training_data=in_training,
        )
        for box, row, in_training in zip(boxes, probabilities, seen, strict=True)
    ]


def _in_training(
    model: FerModel, crops: np.ndarray, files: list[bytes | None] | None
) -> list[bool | None]:
    """For each crop, whether the model was trained on it: True when its crop or its file
    (files, as label_crops takes them) is one of the model's, False when the model file says
    neither is, None when it says nothing of either."""
    seen = model.seen_in_training(crops)
    by_crop: list[bool | None] = [None] * len(crops) if seen is None else list(seen)
    by_file = [
        None if digest is None else model.seen_source(digest)
        for digest in (files or [None] * len(crops))
    ]
    return [
        None if crop_seen is None and file_seen is None else bool(crop_seen or file_seen)
        for crop_seen, file_seen in zip(by_crop, by_file, strict=True)
    ]


def label_faces(image: str | os.PathLike | np.ndarray, model: FerModel) -> list[FacePrediction]:
    """The expression of every face in an image (a path: str, bytes or os.PathLike; or a BGR
    or grayscale uint8 array): box, label, probabilities, the faces aligned with the model's
    own preprocessing settings."""
    try:
        faces = align_faces(image, model.preprocess)
    except ImageError:
        name = image_name(image)
        if name and is_video(Path(name)):
            raise ImageError(
                f"{name}: a video, not an image; label the faces of videos with "
                f"fercli.label_media([{name!r}]), which follows them from frame to frame"
            ) from None
        raise
    if not faces:
        return []
    source = image_name(image) or "the image"
    # Its largest face, the first, is the one a training photo was trained on.
    digest = _file_digest(image) if model.training_sources is not None else None
    labelled = label_crops(
        model,
        np.stack([face.crop for face in faces]),
        [face.box for face in faces],
        [source] * len(faces),
        [digest] + [None] * (len(faces) - 1),
    )
    for face, prediction in zip(faces, labelled, strict=True):
        prediction.whole_image = face.whole_image
    return labelled


def _file_digest(image: str | os.PathLike | np.ndarray) -> bytes | None:
    """The source digest of the file an image argument names (core.hashing.source_digest);
    None for an array, or a file that can no longer be read."""
    name = image_name(image)
    if name is None:
        return None
    try:
        return source_digest(read_file(Path(name)))
    except ImageError:
        return None
