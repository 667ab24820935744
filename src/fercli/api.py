"""fercli as a library: the functions the commands use, for programs that tag photos.

    import fercli

    model = fercli.load_model()                 # the newest in FER_HOME, or load_model("m.npz")
    for face in model.predict("photo.jpg"):     # a path, or a numpy image (BGR or grayscale)
        print(face.box, face.label, face.probabilities[face.label])

Predicting and aligning never import TensorFlow; train and crossval do, when called. (The
names label_faces and prepare_dataset, not predict and preprocess, because fercli.predict
and fercli.preprocess are the modules behind the commands.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fercli.align import AlignedFace
from fercli.config import PreprocessConfig, ScanOptions, recipe_config
from fercli.errors import ImageError
from fercli.model import FerModel
from fercli.predict import FacePrediction


def load_model(path: str | Path | None = None) -> FerModel:
    """A trained model: the file at path, else the most recently trained one in FER_HOME.
    ModelError with the reason when there is none or the file is unusable."""
    from fercli.predict import resolve_model

    return resolve_model(None if path is None else Path(path))


def as_gray(image: str | Path | np.ndarray) -> np.ndarray:
    """A 2-D uint8 image from a path (read as fercli reads images) or an array: grayscale,
    BGR or BGRA, 8-bit. ImageError for anything else."""
    if isinstance(image, (str, Path)):
        from fercli.images import load_gray

        return load_gray(Path(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"an image array must be 8-bit (uint8), not {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        import cv2

        return cv2.cvtColor(array, cv2.COLOR_BGR2GRAY if array.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    raise ImageError(f"an image array must be (height, width) or (height, width, 3 or 4), not {array.shape}")


def align_faces(image: str | Path | np.ndarray, config: PreprocessConfig | None = None) -> list[AlignedFace]:
    """Every face in an image, aligned as for training (32x32 crops), largest first: each
    with its crop, box, landmarks and the map from image to crop coordinates."""
    from fercli.align import align_detected, detect_faces

    gray = as_gray(image)
    config = config or PreprocessConfig()
    return align_detected([(gray, detect_faces(gray, config))], config)[0]


def label_faces(image: str | Path | np.ndarray, model: FerModel | None = None) -> list[FacePrediction]:
    """The expression of every face in an image (box, label, probabilities), aligned with
    the model's own preprocessing settings; model: default the newest, as fer predict."""
    from fercli.predict import classify

    model = model or load_model()
    faces = align_faces(image, model.preprocess)
    if not faces:
        return []
    source = str(image) if isinstance(image, (str, Path)) else "the image"
    return classify(model, np.stack([face.crop for face in faces]), [face.box for face in faces],
                    [source] * len(faces))


def prepare_dataset(folder: str | Path, options: ScanOptions | None = None, config: PreprocessConfig | None = None,
               workers: int | None = None):
    """fer preprocess: align and cache every image of a dataset folder; the PreprocessReport."""
    from fercli.preprocess import preprocess_dataset

    return preprocess_dataset(Path(folder), options or ScanOptions(), config or PreprocessConfig(), workers)


def crossval(dataset: str | Path | None = None, folds: int = 10, group: str = "random", recipe: str = "paper",
             workers: int | None = None, **settings):
    """fer crossval: the CrossvalReport of a recipe (settings: TrainConfig fields that
    override it, e.g. epochs=50) on a preprocessed dataset (default: the newest)."""
    from fercli.store import resolve_dataset
    from fercli.training import cross_validate

    return cross_validate(resolve_dataset(dataset), recipe_config(recipe, **settings), folds, group, workers)


def train(dataset: str | Path | None = None, output: str | Path | None = None, recipe: str = "paper", **settings):
    """fer train: train on every image of a dataset and save a model (default: a new file in
    FER_HOME/models); the TrainResult, whose path load_model takes."""
    from fercli.store import models_dir, resolve_dataset, timestamp
    from fercli.training import train_model

    prepared = resolve_dataset(dataset)
    made_up = output is None
    path = Path(output) if output else models_dir() / f"{prepared.name}-{timestamp()}.npz"
    return train_model(prepared, recipe_config(recipe, **settings), path, keep_existing=made_up)
