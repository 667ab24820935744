"""fercli as a library: the functions the commands use, for programs that tag photos.

    import fercli

    model = fercli.load_model()                 # the newest in FER_HOME, or load_model("m.npz")
    for face in model.predict("photo.jpg"):     # a path, or a numpy image (BGR or grayscale)
        print(face.box, face.label, face.probabilities[face.label])

The commands are thin over these functions: fer preprocess calls prepare_dataset, fer train
train, fer crossval crossval, fer evaluate evaluate_model, fer sweep sweep_recipes and fer
predict label_media. Predicting and aligning never
import TensorFlow; train and crossval do, when called. (The names label_faces,
prepare_dataset and evaluate_model, not predict, preprocess and evaluate, because those are
the names of fercli's modules.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.config import PreprocessConfig, ScanConfig, TrainConfig
from fercli.core.errors import FerError
from fercli.core.events import Progress
from fercli.core.recipes import DEFAULT_RECIPE, auto_note, recipe_config
from fercli.faces.pipeline import align_faces as align_faces  # re-exported as fercli.align_faces
from fercli.infer.label import FacePrediction
from fercli.infer.model import FerModel
from fercli.infer.tracking import VideoConfig as VideoConfig  # predict's video settings

if TYPE_CHECKING:
    from fercli.data.inventory import Entry, Inventory
    from fercli.data.prepared import PreprocessReport
    from fercli.infer.files import MediaReport
    from fercli.learn.reports import CrossvalReport, CrossvalRun, EvaluationReport
    from fercli.learn.sweep import SweepReport
    from fercli.learn.training import TrainResult


def load_model(path: str | Path | None = None) -> FerModel:
    """A trained model: the file at path, else the most recently trained one in FER_HOME.
    ModelError with the reason when there is none (NoModelError) or the file is unusable."""
    from fercli.infer.model import load_model as load_model_file

    return load_model_file(path)


def label_faces(
    image: str | os.PathLike | np.ndarray, model: FerModel | None = None
) -> list[FacePrediction]:
    """The expression of every face in an image (a path: str, bytes or os.PathLike; or a
    uint8 array): box, label, probabilities, aligned with the model's own preprocessing
    settings; model: default the newest, as fer predict. ImageError naming the file."""
    from fercli.infer.label import label_faces as label_with

    return label_with(image, model or load_model())


def prepare_dataset(
    folder: str | Path,
    options: ScanConfig | None = None,
    config: PreprocessConfig | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    size_by_images: bool | None = None,
    face_crops: bool = False,
) -> PreprocessReport:
    """fer preprocess: align and cache every image of a dataset folder; the PreprocessReport.

    size_by_images: choose the crop size by the number of images (48x48 from 5,000, else
    32x32) instead of config's; by default, when no config is given. face_crops: every image
    is a face crop (FER2013's), so one whose face the face check turns down is aligned from
    its own landmarks all the same, not skipped (fer preprocess --face-crops)."""
    from fercli.data.preprocess import preprocess_dataset

    return preprocess_dataset(
        Path(folder),
        options or ScanConfig(),
        config or PreprocessConfig(),
        workers,
        progress=progress,
        size_by_images=config is None if size_by_images is None else size_by_images,
        face_crops=face_crops,
    )


def _names(dataset: str | Path | list | tuple | None) -> list[str]:
    """Dataset choices as load_combined takes them: none (the newest), one, or several."""
    if dataset is None:
        return []
    if isinstance(dataset, (list, tuple)):
        return [str(item) for item in dataset]
    return [str(dataset)]


def train(
    dataset: str | Path | list | None = None,
    output: str | Path | None = None,
    recipe: str = DEFAULT_RECIPE,
    *,
    config: TrainConfig | None = None,
    shared_classes: bool = False,
    split: str | None = None,
    ensemble: int = 1,
    progress: Progress | None = None,
    **settings,
) -> TrainResult:
    """fer train: train on every image of a dataset (or of several combined) and save a model
    (default: a new file in FER_HOME/models); the TrainResult, whose path load_model takes
    (its notes say when the model is fer predict's default now, and which it replaced).

    config: the TrainConfig to use; else the recipe with settings (TrainConfig fields, e.g.
    epochs=50) overriding it. split: only this predefined split; by default a dataset with
    FER2013's splits trains on "Training" only (learn.evaluate.training_split), "all" on every
    image.
    ensemble: this many networks with different seeds in one file.
    """
    from fercli.core.store import (
        check_writable,
        default_model,
        default_model_change,
        models_dir,
        timestamp,
    )
    from fercli.data.combined import load_combined
    from fercli.learn.evaluate import training_part
    from fercli.learn.training import starting_notes, train_model

    settings = _starting_variant(settings)
    checked = config or recipe_config(recipe, **settings)  # refused before any data is read
    default_before = default_model()
    replacing = output is not None and _replaced_model(Path(output))
    split_notes: list[str] = []  # per dataset, the split it trains on (training_part)
    part = partial(training_part, split=split, notes=split_notes)
    prepared = load_combined(_names(dataset), checked.classes, shared_classes, part)
    config, note = _sized(config, recipe, settings, len(prepared.labels))
    made_up = output is None  # then another run may make up the same name: never replace
    path = (
        Path(output) if output is not None else models_dir() / f"{prepared.name}-{timestamp()}.npz"
    )
    check_writable(path.parent)
    result = train_model(
        prepared, config, path, progress=progress, keep_existing=made_up, ensemble=ensemble
    )
    if replacing:
        result.notes.append(f"{path}: the model file that was there is replaced")
    # First what the recipe "auto" chose, then where the starting model came from.
    result.notes[:0] = split_notes + ([note] if note else []) + starting_notes(config)
    change = default_model_change(default_before, result.path)
    if change is not None:
        result.notes.append(change.describe())
    return result


def _sized(
    config: TrainConfig | None, recipe: str, settings: dict, images: int
) -> tuple[TrainConfig, str | None]:
    """The TrainConfig to train with, the recipe "auto" resolved for a dataset of this many
    images (core.recipes.resolve_recipe), and what to say of that choice; a config given is
    used as it is."""
    if config is not None:
        return config, None
    return recipe_config(recipe, images=images, **settings), auto_note(recipe, images)


def _starting_variant(settings: dict) -> dict:
    """settings with the network variant of the starting model (init_model) where no variant
    is given: a network fine-tuned from a model is of its kind (the general model's vgg-wide,
    say), whatever the recipe's (its epochs: core.recipes.recipe_config). A starting model
    that cannot be read is left to the checks of init_model, which say why."""
    start = settings.get("init_model")
    if not start or settings.get("variant") is not None:
        return settings
    from fercli.core.archives import read_model_archive

    try:
        meta, _ = read_model_archive(Path(start), with_arrays=False)
    except FerError:
        return settings
    training = meta.get("training")
    variant = training.get("variant") if isinstance(training, dict) else None
    return {**settings, "variant": variant} if isinstance(variant, str) else settings


def _replaced_model(output: Path) -> bool:
    """Refuse, before any data is read, an output that fer train must not write (see
    check_output_file) or replace: an existing file that is not a fercli model (notes.txt).
    True if a model file will be replaced."""
    from fercli.core.archives import model_file_problem
    from fercli.core.errors import StoreError
    from fercli.core.store import check_output_file

    check_output_file(output)
    if not os.path.lexists(output):
        return False
    # Read as every model file is read (core.archives): within its limits.
    problem = model_file_problem(output)
    if problem:
        raise StoreError(
            f"{output}: exists and is {problem}; fer train replaces only a model (give a new name)"
        )
    return True


def crossval(
    dataset: str | Path | list | None = None,
    folds: int = 10,
    group: str = "random",
    recipe: str = DEFAULT_RECIPE,
    *,
    config: TrainConfig | None = None,
    shared_classes: bool = False,
    workers: int | None = None,
    ray: str | None = None,
    output: str | Path | None = None,
    save_model: bool = True,
    progress: Progress | None = None,
    **settings,
) -> CrossvalReport:
    """fer crossval: the CrossvalReport of a recipe on a preprocessed dataset (default: the
    newest) or several combined, with its files written (report.files): report.json,
    confusion.png and predictions.csv in output (default: a new folder in FER_HOME/runs), and,
    when every fold finished and save_model, the fold networks as one ensemble model file in
    FER_HOME/models, which predict then uses (report.no_model says why there is none;
    report.default_model, a core.store.DefaultModelChange, that it is the default now).

    Ctrl-C while the folds train stops them: the finished folds' report is written
    (report.interrupted), no model; before any fold finished, nothing is written
    (report.files is empty). A Ctrl-C after the last fold stops nothing but where.png (left
    out if its maps were being made): the report and the model are written, and
    report.interrupted_after_folds is set.

    config: the TrainConfig to use; else the recipe with settings (TrainConfig fields, e.g.
    epochs=50) overriding it. ray: a Ray cluster's address (or "auto") to train the folds on.
    """
    from fercli.core.interrupts import Interrupts
    from fercli.core.store import default_model
    from fercli.data.combined import load_combined
    from fercli.learn.crossval import cross_validate
    from fercli.learn.engines import make_engine

    settings = _starting_variant(settings)
    checked = config or recipe_config(recipe, **settings)  # refused before any data is read
    default_before = default_model()
    prepared = load_combined(_names(dataset), checked.classes, shared_classes)
    config, note = _sized(config, recipe, settings, len(prepared.labels))
    with Interrupts() as interrupts, make_engine(ray, workers) as engine:
        given, named = _crossval_folders(output, prepared.name)
        with _removed_if_empty_on_failure(given):
            run = cross_validate(
                prepared,
                config,
                folds,
                group,
                workers,
                progress=progress,
                engine=engine,
                save_model=save_model,
                interrupts=interrupts,
            )
        # From here on a Ctrl-C is held back (interrupts.hold): the files are written whole.
        report = _finish_crossval(run, note, (given, named), prepared.name, default_before)
    report.interrupted_after_folds = interrupts.received and not report.interrupted
    return report


def _crossval_folders(output: str | Path | None, name: str) -> tuple[Path | None, Path]:
    """Where a crossval writes, checked writable before any work: the folder given, made now,
    and the name of the run's own folder in FER_HOME/runs (for when none is given), made only
    at its first write, so that a run killed before then (kill -9) leaves no empty folder."""
    from fercli.core.store import check_writable, runs_dir, timestamp

    given = check_writable(Path(output)) if output is not None else None
    if given is None:
        check_writable(runs_dir())
    return given, runs_dir() / f"crossval-{name}-{timestamp()}"


def _finish_crossval(
    run: CrossvalRun,
    note: str | None,
    folders: tuple[Path | None, Path],
    name: str,
    default_before: Path | None,
) -> CrossvalReport:
    """A crossval's report (note: the recipe's, first among its warnings), written: its files
    in the folder given or the run's own (folders, from _crossval_folders) and, when its
    networks are worth it, its model file in FER_HOME/models, saying whether that is now the
    default model (default_before: the default model before the run). Stopped before any fold
    finished, nothing is written (a report of zeros would only mislead)."""
    from fercli.core.store import default_model_change, models_dir, new_dir, timestamp
    from fercli.learn.crossval_files import save_crossval, save_crossval_model

    given, named = folders
    report = run.report
    report.no_model = run.model_refusal
    if note:
        report.warnings.insert(0, note)
    if report.interrupted and not report.folds:
        _remove_if_empty(given)
        return report
    folder = given or new_dir(named)
    report.files = save_crossval(report, folder)
    if run.model_worth_saving:
        report.files["model"] = save_crossval_model(
            run, models_dir() / f"{name}-crossval-{timestamp()}.npz", folder
        )
        report.default_model = default_model_change(default_before, report.files["model"])
    return report


@contextlib.contextmanager
def _removed_if_empty_on_failure(folder: Path | None):
    """Around a run: when it raises (an error, a Ctrl-C), the output folder given, made before
    it, is removed if nothing was written to it."""
    try:
        yield
    except BaseException:
        _remove_if_empty(folder)
        raise


def _remove_if_empty(folder: Path | None) -> None:
    """Remove the output folder given when nothing was written to it (one holding files keeps
    them)."""
    try:
        if folder is not None:
            folder.rmdir()
    except OSError:
        pass  # not empty, or gone


def evaluate_model(
    dataset: str | Path,
    model: FerModel | str | Path | None = None,
    split: str | None = None,
    workers: int | None = None,
    output: str | Path | None = None,
    progress: Progress | None = None,
    adapt: bool | str = False,
    face_crops: bool = False,
) -> EvaluationReport:
    """fer evaluate: score a model (default: the newest) on another dataset, a preprocessed one
    or an original folder (then preprocessed with the model's settings; progress follows the
    alignment); only the classes both have count. The EvaluationReport (its JSON shaped as a
    crossval's, with one "fold") with its files written in output (default: a new folder in
    FER_HOME/runs, named evaluate-<model>-<dataset>-adapted-<time> with adapt). adapt: the
    model adapted to the dataset's unlabelled crops first (fer evaluate --adapt): True, or how
    their per-pixel statistics are mapped onto the training crops' ("mean", the default;
    "mean+std"; "none": the global statistics only). face_crops: an original folder's images
    are all face crops (prepare_dataset's)."""
    from fercli.core.store import check_writable, new_dir, runs_dir, slug, timestamp
    from fercli.infer.adapt import adaptation_mode
    from fercli.learn.crossval_files import save_evaluation
    from fercli.learn.evaluate import prepare_for_model, score_model

    adaptation_mode(adapt)  # a bad value refused before any work
    loaded = model if isinstance(model, FerModel) else load_model(model)
    prepared, _ = prepare_for_model(dataset, loaded, workers, progress, face_crops)
    report = score_model(loaded, prepared, split, adapt=adapt)
    name = slug(Path(str(loaded.path)).stem)
    folder = (
        check_writable(Path(output))
        if output is not None
        else new_dir(
            runs_dir()
            / f"evaluate-{name}-{prepared.name}{'-adapted' if adapt else ''}-{timestamp()}"
        )
    )
    report.files = save_evaluation(
        report, folder, title=f"{name} on {prepared.name}: {report.pooled_accuracy:.1%}"
    )
    return report


def label_media(
    paths: Sequence[str | Path],
    model: FerModel | str | Path | None = None,
    *,
    options: VideoConfig | None = None,
    workers: int | None = None,
    annotate: str | Path | None = None,
    explain: str | Path | None = None,
    progress: Progress | None = None,
    video_progress: Callable[[str], Progress | None] | None = None,
    adapt: bool | str = False,
    face_crops: bool = False,
) -> MediaReport:
    """fer predict: the faces and labels of every image and video in paths (files and
    folders) with a model (default: the newest), as an infer.files.MediaReport; with annotate,
    the labelled copies written there too (media.annotated: the files); with explain, a picture
    of where the network looks for every face of the photos and each track of the videos
    (at its most confident frame) written there (media.explained: explain_files records).
    options: a tracking.VideoConfig (sampling, detection, smoothing). video_progress(path)
    gives each video's progress callback. FerError before any work for an annotation or
    explanation folder that holds inputs; the folders are marked as fercli's own, and left out
    when a later search meets them (media.discover). A picture that cannot be written is in
    media.images.write_failures. adapt: the model adapted to the faces being labelled (the
    photos' together, each video's own) before they are labelled (fer predict --adapt), as
    evaluate_model's adapt. face_crops: every photo is a face crop (prepare_dataset's)."""
    from fercli.infer.adapt import adaptation_mode
    from fercli.infer.files import annotate_videos, label_files
    from fercli.infer.photos import annotate as annotate_images
    from fercli.infer.photos import check_annotate_folder
    from fercli.infer.tracking import VideoConfig
    from fercli.media.discover import discover, mark_output_folder

    if adaptation_mode(adapt) and explain is not None:
        # The maps would be those of the model as trained, beside labels of the adapted one.
        raise FerError(
            "--explain and --adapt together are not supported (explain and adapt=True in "
            "Python): the maps would show where the model as trained looks, beside labels the "
            "adapted model gave; choose one"
        )
    loaded = model if isinstance(model, FerModel) else load_model(model)
    found = discover([Path(path) for path in paths])
    outputs = [
        (Path(folder), option)
        for folder, option in ((annotate, "--annotate"), (explain, "--explain"))
        if folder is not None
    ]
    for folder, option in outputs:
        check_annotate_folder(found.files, folder, option)
    for folder, option in outputs:
        mark_output_folder(folder, f"fer predict {option}")
    media = label_files(
        found,
        loaded,
        options or VideoConfig(),
        workers,
        progress=progress,
        video_progress=video_progress,
        adapt=adapt,
        keep_best=explain is not None,
        face_crops=face_crops,
    )
    if annotate is not None:
        media.annotated = annotate_images(media.images, Path(annotate))
        media.annotated_videos = annotate_videos(media, loaded.classes, Path(annotate))
    if explain is not None:
        from fercli.infer.explain_files import explain_media

        media.explained = explain_media(media, loaded, Path(explain))
    return media


def sweep_recipes(
    dataset: str | Path | None,
    grid: str | Path,
    settings: Sequence[str] = (),
    *,
    ray: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> SweepReport:
    """fer sweep: cross-validate every recipe of a grid file (TOML; settings: "key=value"
    overrides) with several seeds on identical folds, rank them and write the sweep's files;
    the SweepReport. Finished folds are stored as they come: the same call again resumes."""
    from fercli.data.prepared import resolve_dataset
    from fercli.learn.engines import make_engine
    from fercli.learn.grid import read_grid
    from fercli.learn.sweep import run_sweep

    plan = read_grid(Path(grid), list(settings))
    prepared = resolve_dataset(dataset)
    with make_engine(ray, workers) as engine:
        return run_sweep(prepared, plan, engine, progress=progress)


def list_home() -> Inventory:
    """fer list: the datasets, models and runs FER_HOME holds, which of them train and predict
    use by default, and the space each takes."""
    from fercli.data.inventory import list_home as inventory

    return inventory()


def remove_entries(names: Sequence[str]) -> list[Entry]:
    """fer remove: delete datasets, models and runs of FER_HOME named as fer list shows them
    (or by their paths; a dataset or run without its date or hash where that names one; a
    pattern such as evaluate-*). Every name is resolved before anything is deleted, and
    StoreError ends the call with nothing deleted if one names nothing; returns what was
    removed, each entry once."""
    from fercli.data.inventory import remove_entries as remove

    return remove(list(names))
