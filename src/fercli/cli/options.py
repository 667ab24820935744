"""The options several commands share: dataset, training options (one signature for train
and crossval), video options, and the progress reporters."""

from __future__ import annotations

import math
import time
from pathlib import Path

import typer
import typer.core
import typer.rich_utils

from fercli.cli.app import AugmentMode, Normalisation, Optimizer, Recipe, Variant, err, shown
from fercli.core.config import DEFAULT_RECIPE

# Options shared by train and crossval: one definition each, so they cannot drift apart.
DatasetArgument = typer.Argument(
    None,
    metavar="DATASET...",
    help="Preprocessed datasets: each a name or folder under FER_HOME, or the original folder "
    "(default: the most recently preprocessed). Several are combined into one selection.",
)
SharedClassesOption = typer.Option(
    False, "--shared-classes", help="Several datasets: keep the classes every one of them has."
)
# Training options default to None: unset, the recipe (--recipe, default "robust") decides.
# Their values are checked by TrainConfig itself (core.config.TRAIN_SETTINGS), not here, so
# that the command line, grids and the API refuse the same values with the same message.
RecipeOption = typer.Option(
    Recipe(DEFAULT_RECIPE),
    help="Starting settings: robust (the default: batch normalisation and dropout, mirrored "
    "test faces, the crop jittered in scale and position, for photos from other cameras), best "
    "(the same without the jitter) or paper (the paper's recipe as written). Options given "
    "here override the recipe's.",
)
EpochsOption = typer.Option(None, help="Passes over the (enlarged) training set (paper: 100).")
BatchOption = typer.Option(None, "--batch-size", help="Mini-batch size (paper: 16).")
LearningRateOption = typer.Option(None, "--lr", help="Learning rate (paper: 0.001).")
MomentumOption = typer.Option(None, help="SGD momentum (paper: 0.9).")
OptimizerOption = typer.Option(None, help="Optimizer (paper: sgd).")
VariantOption = typer.Option(
    None,
    help="Network: the paper's, or with dropout, batch normalisation, more filters (paper: paper).",
)
ClassesOption = typer.Option(
    None, help="Classes to keep, comma-separated, e.g. anger,fear,sadness (default: all)."
)
SeedOption = typer.Option(0, help="Random seed: same seed, same data -> same folds and weights.")
AugmentOption = typer.Option(
    None, "--augment/--no-augment", help="Augment training images (paper: on)."
)
AugmentModeOption = typer.Option(
    None,
    "--augment-mode",
    help="copies: the training set enlarged with transformed "
    "copies, originals kept; online: each epoch a new random copy (paper: copies).",
)
CopiesOption = typer.Option(
    None, help="--augment-mode copies: transformed copies per image (paper: 5)."
)
FlipAugmentOption = typer.Option(
    None, "--flip/--no-flip", help="Mirror images among the augmentations (paper: on)."
)
RotationOption = typer.Option(None, help="Largest augmentation rotation, in degrees (paper: 3).")
ShiftOption = typer.Option(None, help="Largest augmentation shift, in pixels (paper: 0).")
ScaleOption = typer.Option(
    None,
    help="Largest augmentation scaling about the crop's centre, 1 +/- this, at most 0.5 "
    "(paper: 0).",
)
PhotometricOption = typer.Option(
    None,
    help="Strength of random gamma, contrast, blur and noise on the training images, 0 to 1 "
    "(paper: 0).",
)
LabelSmoothingOption = typer.Option(
    None, help="Label smoothing of the training targets, 0 to 0.5 (paper: 0)."
)
MixupOption = typer.Option(
    None,
    help="mixup: blend training images and their targets in pairs, proportions from "
    "Beta(X, X), 0 to 4 (paper: 0: off).",
)
NormalisationOption = typer.Option(
    None,
    help="z-score statistics: global (one mean and std), per pixel, "
    "per-dataset (several datasets, crossval only: each dataset's own), or image (each crop by "
    "its own: a photo needs no statistics of its set) (paper: global).",
)
InitOption = typer.Option(
    None,
    "--init",
    help="Start from this model's weights (a model trained on other "
    "people, e.g. another dataset) and fine-tune.",
)
FlipOption = typer.Option(
    None,
    "--flip-tta/--no-flip-tta",
    help="Average each face's prediction with its mirror image (paper: off).",
)
RayOption = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS",
    help="Train the folds on the Ray cluster at HOST:PORT, "
    "or auto (the one this machine belongs to); needs pip install 'fercli[ray]'.",
)

# Command-line names of the training options -> TrainConfig fields.
TRAIN_OPTIONS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "momentum": "momentum",
    "optimizer": "optimizer",
    "variant": "variant",
    "seed": "seed",
    "augment": "augment",
    "augment_mode": "augment_mode",
    "copies": "copies",
    "flip": "flip",
    "max_rotation": "max_rotation",
    "max_shift": "max_shift",
    "max_scale": "max_scale",
    "photometric": "photometric",
    "label_smoothing": "label_smoothing",
    "mixup": "mixup",
    "normalisation": "normalisation",
    "flip_tta": "test_time_flip",
    "init": "init_model",
}


def training_options(
    recipe: Recipe = RecipeOption,
    epochs: int | None = EpochsOption,
    batch_size: int | None = BatchOption,
    lr: float | None = LearningRateOption,
    momentum: float | None = MomentumOption,
    optimizer: Optimizer | None = OptimizerOption,
    variant: Variant | None = VariantOption,
    classes: str | None = ClassesOption,
    shared_classes: bool = SharedClassesOption,
    seed: int = SeedOption,
    augment: bool | None = AugmentOption,
    augment_mode: AugmentMode | None = AugmentModeOption,
    copies: int | None = CopiesOption,
    flip: bool | None = FlipAugmentOption,
    max_rotation: float | None = RotationOption,
    max_shift: float | None = ShiftOption,
    max_scale: float | None = ScaleOption,
    photometric: float | None = PhotometricOption,
    label_smoothing: float | None = LabelSmoothingOption,
    mixup: float | None = MixupOption,
    normalisation: Normalisation | None = NormalisationOption,
    flip_tta: bool | None = FlipOption,
    init: Path | None = InitOption,
) -> None:
    """The options train and crossval share: one signature, spliced into both commands by
    with_training_options."""


# Where a command takes the shared training options: `training: dict = TRAINING`.
TRAINING = None


def with_training_options(command):
    """A command with the shared training options (training_options) in place of its
    `training` parameter; the command receives them as one dict, `training`."""
    import functools
    import inspect

    shared = list(inspect.signature(training_options, eval_str=True).parameters.values())
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    place = [parameter.name for parameter in own].index("training")
    parameters = own[:place] + shared + own[place + 1 :]

    @functools.wraps(command)
    def wrapper(**values):
        training = {parameter.name: values.pop(parameter.name) for parameter in shared}
        return command(training=training, **values)

    wrapper.__signature__ = inspect.signature(command).replace(parameters=parameters)
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper


def train_config(options: dict):
    """The TrainConfig of the recipe with the training options given on the command line
    (options: the values of training_options' parameters; None means not given). The settings
    check themselves (fercli.core.config.TRAIN_SETTINGS), as they do for grids and the API."""
    from fercli.core.config import recipe_config

    # Enum choices (Variant, Optimizer, ...) as their plain values.
    options = {name: getattr(value, "value", value) for name, value in options.items()}
    chosen = tuple(
        name.strip() for name in (options.get("classes") or "").split(",") if name.strip()
    )
    given = {field: options.get(name) for name, field in TRAIN_OPTIONS.items()}
    if given["init_model"] is not None:
        given["init_model"] = str(given["init_model"])
    return recipe_config(options["recipe"], classes=chosen, **given)


def recipe_summary(training: dict) -> str:
    """ "recipe paper" and every setting that differs from it, in command-line spelling."""
    from fercli.core.config import TrainConfig, recipe_differences

    names = {field: name for name, field in TRAIN_OPTIONS.items()}
    differences = recipe_differences(TrainConfig.from_dict(training))
    extra = ", ".join(
        f"--{names.get(key, key).replace('_', '-')} {value}" for key, value in differences.items()
    )
    return f"recipe {training.get('recipe', 'paper')}" + (f" with {extra}" if extra else "")


def header(bar, text: str) -> None:
    """A line above the progress bar, shown where the bar is (on a terminal)."""
    if not bar.disable:
        err.print(shown(text))


def epoch_reporter(bar, task, folds: int = 1, epochs: int | None = None, header: str | None = None):
    """Turn training events into the progress display. With epochs (per fold), a finished
    fold completes its share of the bar even where no epoch events come (folds on Ray). A
    crossval's "start" event gives both, and shows header (its "{folds}" filled in)."""
    finished: list[float] = []
    seen: dict[int, int] = {}
    plan = {"folds": folds, "epochs": epochs}

    def update(event) -> None:
        folds, epochs = plan["folds"], plan["epochs"]
        if event.kind == "start":
            plan.update(folds=event.folds, epochs=event.epochs)
            bar.update(task, total=event.folds * event.epochs)
            if header and not bar.disable:
                err.print(shown(header.format(folds=event.folds)))
        elif event.kind == "epoch":
            if epochs and seen.get(event.fold) == -1:
                return  # a late event of a fold already counted in full
            seen[event.fold] = seen.get(event.fold, 0) + 1
            bar.advance(task)
            where = f"fold {event.fold + 1}/{folds} " if folds > 1 else ""
            done = f", finished folds {sum(finished) / len(finished):.1%}" if finished else ""
            figures = (
                f"loss {event.loss:.3f} train acc {event.accuracy:.1%}"
                if math.isfinite(event.loss)
                else "diverged (loss not finite)"
            )
            bar.update(
                task, description=f"{where}epoch {event.epoch}/{event.epochs} {figures}{done}"
            )
        elif event.kind == "fold" and event.accuracy is not None:  # None: it diverged
            finished.append(event.accuracy)
            if epochs:
                bar.advance(task, max(0, epochs - seen.get(event.fold, 0)))
                seen[event.fold] = -1

    return update


def video_options(every: int, fps: float | None, detect_every: int, smooth: float):
    """predict's video settings; FerError for a value no option range catches (NaN, infinity)."""
    from fercli.core.errors import FerError
    from fercli.infer.tracking import VideoConfig

    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise FerError(f"--fps must be a number above 0, not {fps}")
    if not math.isfinite(smooth):
        raise FerError(f"--smooth must be a finite number of seconds, not {smooth}")
    return VideoConfig(every=every, fps=fps, detect_every=detect_every, smooth=smooth)


def video_progress(bar):
    """video_progress(bar)(path): a progress callback for one video, a line of bar (which
    shows only on a terminal) with frames done, of how many, and frames read a second."""

    def start(path: str):
        for task in bar.tasks:
            bar.update(task.id, visible=False)
        task = bar.add_task(f"{shown(Path(path).name)}", total=None)
        started = time.perf_counter()

        def update(event) -> None:
            elapsed = time.perf_counter() - started
            rate = f" ({event.done / elapsed:.0f} frames/s)" if elapsed > 0 else ""
            bar.update(
                task,
                completed=event.done,
                total=event.total,
                description=f"{shown(Path(path).name)}{rate}",
            )

        return update

    return start
