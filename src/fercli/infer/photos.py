"""fer predict: faces in photos -> labelled probabilities, without TensorFlow."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from fercli.core.config import BATCH_PIXELS, PreprocessConfig
from fercli.core.errors import FerError, ModelError
from fercli.core.events import Progress, items
from fercli.core.parallel import batches, default_workers, run_tasks
from fercli.core.store import latest, models_dir
from fercli.faces.align import (
    align_batch,
    detect_faces,
    landmark_predictor,
    landmarks_load_quickly,
)
from fercli.infer.adapt import Adaptation, adapt_model
from fercli.infer.label import FacePrediction, label_crops
from fercli.infer.model import FerModel, load_model
from fercli.media.discover import Skipped, discover_images
from fercli.media.images import load_gray, single_threaded_opencv


@dataclass
class ImagePrediction:
    path: str
    faces: list[FacePrediction] = field(default_factory=list)
    error: str | None = None  # why the image could not be read; None when it was
    # The aligned crop of each face, in the order of faces (for fer predict --explain).
    crops: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        data = {"path": self.path, "faces": [face.to_json() for face in self.faces]}
        if self.error:
            data["error"] = self.error
        return data


@dataclass
class PredictReport:
    model: str
    classes: list[str]
    images: list[ImagePrediction]
    problems: list[Skipped]  # paths that named no file
    inputs: list[str] = field(default_factory=list)  # the files and folders asked for
    notes: list[str] = field(default_factory=list)  # what the user should know (renamed copies)
    # Annotated copies that could not be written (a full disk): the run failed, not just noted.
    copy_failures: list[str] = field(default_factory=list)
    adaptation: Adaptation | None = None  # --adapt: what was re-estimated, from how many faces

    @property
    def processed(self) -> int:
        return sum(1 for image in self.images if image.error is None)


def resolve_model(choice: Path | None) -> FerModel:
    """The model to use: a given file, else the most recently trained one."""
    if choice is None:
        path = latest(models_dir(), "*.npz")
        if path is None:
            raise ModelError("no trained model: run `fer train` first, or pass --model")
        return load_model(path)
    return load_model(Path(choice))


def _align_files(paths: list[str], config: PreprocessConfig) -> list[tuple[list, str | None]]:
    """The faces of each image, aligned: (crop, box) each, and why the image could not be read
    (None when it could); the landmarks of the images' faces found together."""
    results: list = [([], None)] * len(paths)
    waiting: list[tuple[int, np.ndarray, list]] = []

    def align_waiting() -> None:
        for index, outcome in _align_found(waiting, config):
            results[index] = outcome
        waiting.clear()

    for index, path in enumerate(paths):
        try:
            gray = load_gray(Path(path))
            detections = detect_faces(gray, config, every_face=True)
        except Exception as error:
            results[index] = [], _reason(error)
            continue
        if not detections:
            continue
        waiting.append((index, gray, detections))
        # A bound on the memory that decoded images waiting for their landmarks hold.
        if sum(gray.size for _, gray, _ in waiting) >= BATCH_PIXELS:
            align_waiting()
    if waiting:
        align_waiting()
    return results


def _align_found(waiting: list[tuple[int, np.ndarray, list]], config: PreprocessConfig) -> list:
    """(index, (faces, None)) for each image of waiting, or (index, ([], why)) if it failed."""
    try:
        aligned = align_batch([(gray, detections) for _, gray, detections in waiting], config)
    except FerError as error:
        return [(index, ([], _reason(error))) for index, _, _ in waiting]
    return [
        (index, ([], _reason(faces)))
        if isinstance(faces, Exception)
        else (index, ([(face.crop, face.box) for face in faces], None))
        for (index, _, _), faces in zip(waiting, aligned, strict=True)
    ]


def _reason(error: Exception) -> str:
    """Why an image gave no faces; a dlib failure is named as such."""
    if isinstance(error, FerError):
        return str(error)
    return f"alignment failed: {type(error).__name__}: {error}"


def label_photos(
    paths: list[Path],
    model: FerModel,
    workers: int | None = None,
    progress: Progress | None = None,
    adapt: bool = False,
) -> PredictReport:
    """Find, align and classify every face in the images named by paths (files or folders).
    adapt: the model's statistics re-estimated from all these faces first (infer.adapt);
    FerError when there are too few."""
    files, problems = discover_images(paths)
    images = [ImagePrediction(path=str(path)) for path in files]
    found: list[tuple[int, np.ndarray, tuple]] = []
    if progress:
        progress(items(0, len(files)))
    if files and not landmarks_load_quickly():
        landmark_predictor()  # converted once, here, before the workers fork (see preprocess)
    workers = workers or default_workers()
    work = partial(_align_files, config=model.preprocess)
    parts = batches([str(path) for path in files], workers)
    with closing(run_tasks(work, parts, workers, initializer=single_threaded_opencv)) as results:
        for index, (faces, error) in enumerate(chain.from_iterable(results)):
            images[index].error = error
            found.extend((index, crop, box) for crop, box in faces)
            if progress:
                progress(items(index + 1, len(files)))
    adaptation = None
    if adapt:
        model, adaptation = adapt_model(model, np.array([crop for _, crop, _ in found]))
    if found:
        # One batched forward pass for every face of every image.
        labelled = label_crops(
            model,
            np.stack([crop for _, crop, _ in found]),
            [box for _, _, box in found],
            [images[index].path for index, _, _ in found],
        )
        for (index, crop, _), face in zip(found, labelled, strict=True):
            images[index].faces.append(face)
            images[index].crops.append(crop)
    return PredictReport(
        model=str(model.path),
        classes=model.classes,
        images=images,
        problems=problems,
        inputs=[str(path) for path in paths],
        adaptation=adaptation,
    )


def check_annotate_folder(paths: list[Path], folder: Path, option: str = "--annotate") -> None:
    """Refuse an annotation folder (or --explain's) that holds any of the images to be read:
    pictures written must never take the place of inputs. FerError naming one of them."""
    target = _resolved(Path(folder))
    if target is None:
        return  # cannot be followed, so it holds nothing; writes never replace a file anyway
    files, _ = discover_images(paths)
    for path in files:
        parent = _resolved(path.parent)
        # The entry itself and, for a link, what it points to.
        for place in (parent / path.name if parent else None, _resolved(path)):
            if place and (place == target or target in place.parents):
                raise FerError(
                    f"{option} {folder}: the folder holds images to be read ({path}); "
                    "the pictures it writes go to a folder of their own"
                )


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        return None


def annotated_name(image_path: str, inputs: list[str]) -> Path:
    """Where the annotated copy of an image goes, relative to the annotation folder: its path
    below the input folder it was found in (a named file: its name), as .png."""
    path = Path(image_path)
    for given in map(Path, inputs):
        if given != path and given in path.parents:
            return path.relative_to(given).with_suffix(".png")
    return Path(path.name).with_suffix(".png")


def annotate(report: PredictReport, folder: Path) -> list[Path]:
    """Write a copy of each image with its faces boxed and labelled; returns the files.

    Copies mirror the images' paths below the folders given (photos/a/x.jpg -> a/x.png).
    No file is ever replaced: where the name is taken (an earlier run, or x.jpg and x.png
    side by side) the copy gets the next free name (x-2.png), and report.notes says so."""
    import cv2

    from fercli.core.store import atomic_write
    from fercli.media.drawing import labelled_box, line_thickness
    from fercli.media.images import load_color

    written = []
    for image in report.images:
        if image.error:
            continue
        try:
            picture = load_color(Path(image.path))
        except FerError as error:  # changed since it was read
            report.notes.append(f"no annotated copy of {image.path}: {error}")
            continue
        thickness = line_thickness(picture)
        # Numbered as the faces of fer predict's table.
        for number, face in enumerate(image.faces, start=1):
            text = f"{number} {face.label} {face.probabilities[face.label]:.2f}"
            labelled_box(picture, face.box, text, (0, 200, 0), thickness)
        ok, encoded = cv2.imencode(".png", picture)
        wanted = Path(folder) / annotated_name(image.path, report.inputs)
        try:
            if not ok:
                raise FerError("OpenCV could not encode it as PNG")
            data = encoded.tobytes()
            path = atomic_write(wanted, lambda stream: stream.write(data), keep_existing=True)
        except FerError as error:  # a sub-folder name taken by a file, a full disk
            report.copy_failures.append(f"no annotated copy of {image.path}: {error}")
            continue
        if path != wanted:
            report.notes.append(f"{wanted} exists: the annotated copy of {image.path} is {path}")
        written.append(path)
    return written
