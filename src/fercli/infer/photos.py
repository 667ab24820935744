"""fer predict: faces in photos -> labelled probabilities, without TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.core.errors import FerError, ImageError
from fercli.core.events import Progress, items
from fercli.core.hashing import source_digest
from fercli.core.parallel import batches, default_workers, run_tasks
from fercli.faces.pipeline import align_images, load_models_for_workers
from fercli.infer.adapt import Adaptation, adapt_model, adaptation_mode
from fercli.infer.label import FacePrediction, label_crops
from fercli.infer.model import FerModel
from fercli.media.discover import Discovered, Skipped, discover
from fercli.media.images import read_file, single_threaded_opencv


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
    # Pictures (annotated copies and videos, timelines, explanation pictures) that could not be
    # written (a full disk): the run failed, not just noted.
    write_failures: list[str] = field(default_factory=list)
    adaptation: Adaptation | None = None  # --adapt: what was re-estimated, from how many faces

    @property
    def processed(self) -> int:
        return sum(1 for image in self.images if image.error is None)


def _align_files(
    paths: list[str], config: PreprocessConfig, face_crops: bool
) -> list[tuple[list, str | None, bytes | None]]:
    """The faces of each image, aligned by the face pipeline: (crop, box, (whether the image
    is itself the face crop, whether it passed the face check)) each; why the image could not
    be read (None when it could); and the file's source digest (None when it could not be
    read), from the bytes the pipeline decodes, so that each file is read once."""
    results: list = [None] * len(paths)
    digests: list[bytes | None] = [None] * len(paths)

    def read() -> Iterator[tuple[int, bytes]]:
        for index, path in enumerate(paths):
            try:
                data = read_file(Path(path))
            except ImageError as error:  # the reason the pipeline gives for a path it cannot read
                results[index] = [], str(error), None
                continue
            digests[index] = source_digest(data)
            yield index, data

    for index, found in align_images(read(), config, face_crops=face_crops):
        results[index] = (
            [(face.crop, face.box, (face.whole_image, face.face_check)) for face in found.faces],
            None if found.read else found.reason,
            digests[index],
        )
    return results


def label_photos(
    paths: list[Path] | Discovered,
    model: FerModel,
    workers: int | None = None,
    progress: Progress | None = None,
    adapt: bool | str = False,
    face_crops: bool = False,
) -> PredictReport:
    """Find, align and classify every face in the images named by paths (files or folders),
    or in the images a command discovered already. adapt: the model adapted to all these faces
    first (infer.adapt; a name of infer.adapt.PIXEL_MAPS says how, True the default); FerError
    when there are too few distinct ones. face_crops: every image is a face crop, so one whose
    face the face check turns down is labelled all the same (faces.pipeline.find_faces)."""
    mode = adaptation_mode(adapt)
    discovered = paths if isinstance(paths, Discovered) else discover(paths)
    files = discovered.files
    images = [ImagePrediction(path=str(path)) for path in files]
    found: list[tuple[int, np.ndarray, tuple, tuple[bool, bool]]] = []
    # Per face: its file's source digest where it is the image's largest face (label_crops).
    digests: list[bytes | None] = []
    if progress:
        progress(items(0, len(files)))
    if files:
        load_models_for_workers()
    workers = workers or default_workers()
    work = partial(_align_files, config=model.preprocess, face_crops=face_crops)
    parts = batches([str(path) for path in files], workers)
    with closing(run_tasks(work, parts, workers, initializer=single_threaded_opencv)) as results:
        for index, (faces, error, digest) in enumerate(chain.from_iterable(results)):
            images[index].error = error
            found.extend((index, *face) for face in faces)
            # Preprocessing trains on each image's largest face, the first (largest first).
            digests.extend(digest if number == 0 else None for number in range(len(faces)))
            if progress:
                progress(items(index + 1, len(files)))
    adaptation = None
    if mode:
        model, adaptation = adapt_model(
            model, np.array([crop for _, crop, _, _ in found]), where="the photos", pixels=mode
        )
    if found:
        # One batched forward pass for every face of every image.
        labelled = label_crops(
            model,
            np.stack([crop for _, crop, _, _ in found]),
            [box for _, _, box, _ in found],
            [images[index].path for index, _, _, _ in found],
            digests,
        )
        for (index, crop, _, (whole_image, face_check)), face in zip(found, labelled, strict=True):
            face.whole_image, face.face_check = whole_image, face_check
            images[index].faces.append(face)
            images[index].crops.append(crop)
    return PredictReport(
        model=str(model.path),
        classes=model.classes,
        images=images,
        problems=list(discovered.problems),
        inputs=[str(path) for path in discovered.inputs],
        notes=discovered.notes(),
        adaptation=adaptation,
    )


def check_annotate_folder(files: list[Path], folder: Path, option: str = "--annotate") -> None:
    """Refuse an annotation folder (or --explain's) that holds any of the files to be read
    (as discovered): pictures written must never take the place of inputs. FerError naming
    one of them; FerError too for a folder inside FER_HOME's own (models, datasets, runs),
    where pictures would be taken for entries or removed with one."""
    from fercli.core.store import HOME_VARIABLE, own_folder

    own = own_folder(Path(folder))
    if own:
        raise FerError(
            f"{option} {folder}: is inside {own[0]}, where fercli keeps its {own[1]} "
            f"({HOME_VARIABLE}); the pictures it writes go to a folder of their own"
        )
    target = _resolved(Path(folder))
    if target is None:
        return  # cannot be followed, so it holds nothing; writes never replace a file anyway
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
    from fercli.media.drawing import labelled_box, line_thickness
    from fercli.media.images import load_color, write_png

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
        wanted = Path(folder) / annotated_name(image.path, report.inputs)
        try:
            path = write_png(wanted, picture, keep_existing=True)
        except FerError as error:  # a sub-folder name taken by a file, a full disk
            report.write_failures.append(f"no annotated copy of {image.path}: {error}")
            continue
        if path != wanted:
            report.notes.append(f"{wanted} exists: the annotated copy of {image.path} is {path}")
        written.append(path)
    return written
