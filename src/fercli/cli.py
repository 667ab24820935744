"""The `fer` command: parses options, calls one library function, renders the result.

Heavy libraries (OpenCV, dlib, TensorFlow) are imported inside the commands, so that
`fer --help` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from enum import Enum
from pathlib import Path

import typer
import typer.core
import typer.rich_utils
from rich.console import Console
from rich.table import Table

from fercli import __version__
from fercli.config import (
    AUGMENTATIONS,
    EQUALIZATIONS,
    MODEL_VARIANTS,
    NORMALISATIONS,
    OPTIMIZERS,
    RECIPES,
)
from fercli.datasets import LAYOUTS


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An Enum of an option's fixed values: typer shows them in --help and refuses others,
    naming them."""
    return Enum(name, {value: value for value in values}, type=str)


Layout = choices("Layout", LAYOUTS)
Variant = choices("Variant", MODEL_VARIANTS)
Optimizer = choices("Optimizer", OPTIMIZERS)
Normalisation = choices("Normalisation", NORMALISATIONS)
Group = choices("Group", ("random", "subject", "dataset"))
AugmentMode = choices("AugmentMode", AUGMENTATIONS)
Recipe = choices("Recipe", tuple(RECIPES))
Equalization = choices("Equalization", EQUALIZATIONS)

# Help is laid out at least 80 columns wide: narrower, rich cuts option names and long
# words with "…" (a narrower terminal wraps the longer lines instead, losing nothing).
if typer.rich_utils.MAX_WIDTH is None:
    typer.rich_utils.MAX_WIDTH = max(80, shutil.get_terminal_size().columns)

app = typer.Typer(
    name="fer",
    context_settings={
        "help_option_names": ["-h", "--help"],
        "terminal_width": typer.rich_utils.MAX_WIDTH,
    },
    help="Facial expression recognition: align faces, train a small CNN, cross-validate, predict.",
    no_args_is_help=True,
    add_completion=False,
    # The default pretty traceback prints local variables, which here would be image arrays.
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """Text that any stdout can take: undecodable file-name bytes as \\udcxx escapes, and
    characters that stdout's encoding lacks (ASCII, Latin-1) as \\xe9 or \\U0001f600."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def escaped(text: object) -> str:
    """Text as one printable line: control characters (ESC, newlines, tabs) and undecodable
    bytes as backslash escapes, so that no name can move the cursor or retitle a terminal."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode()
        for ch in printable(str(text))
    )


def shown(path: object) -> str:
    """A path or message as one printable line for rich: control characters, undecodable
    bytes and rich markup ("[bold]" in a file name) escaped."""
    from rich.markup import escape

    return escape(escaped(path))


def fail(message: str, code: int = 1, as_json: bool = False) -> typer.Exit:
    """Print one red line on stderr, and with as_json {"error": message} on stdout as the
    command's one JSON document; return the Exit to raise."""
    if as_json:
        emit_json({"error": message})
    err.print(f"[red]error:[/red] {shown(message)}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(as_json: bool = False):
    """Turn fercli's typed errors into one red line and exit code 1, Ctrl-C into exit 130;
    as_json: {"error": ...} on stdout too."""
    from fercli.errors import FerError

    try:
        yield
    except FerError as error:
        raise fail(str(error), as_json=as_json) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130, as_json=as_json) from None


# click's UsageError, wherever this typer keeps click (typer 0.28 bundles its own copy).
USAGE_ERROR = sys.modules[typer.BadParameter.__module__].UsageError


class JsonErrorsCommand(typer.core.TyperCommand):
    """A command whose option errors, when --json was asked for, also print {"error": ...}
    on stdout: every outcome of a --json run is one JSON document."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        # typer 0.28 writes a required argument as {NAME}; the usual form is NAME.
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        as_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except USAGE_ERROR as error:
            if as_json:
                emit_json({"error": error.format_message()})
            raise


def emit_json(payload: object) -> None:
    # allow_nan=False: NaN is not JSON, and nothing fercli reports may be NaN.
    sys.stdout.write(
        json.dumps(payload, indent=2, ensure_ascii=True, default=str, allow_nan=False) + "\n"
    )


def progress_bar(description: str):
    """A rich progress bar on stderr and the progress callback that drives it with "items"
    events (done of total)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        # Only on a terminal: in a pipe or a log file a progress bar is noise.
        disable=not err.is_terminal,
    )
    task = bar.add_task(description, total=None)

    def update(event) -> None:
        bar.update(task, completed=event.done, total=event.total)

    return bar, update


# Output that is not a terminal (a pipe, a file) has no width to fit: tables are laid out at
# their natural width there, so that paths and class names are never cut. On a terminal,
# columns of names fold onto more lines instead of ending in "…".
UNLIMITED_WIDTH = 10_000


def fit_output_width() -> None:
    """Lay out stdout for a pipe or file at its natural width; a terminal keeps its own."""
    if not out.is_terminal:
        out.width = UNLIMITED_WIDTH


def _version(value: bool) -> None:
    if value:
        out.print(f"fer (fercli) {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Facial expression recognition: align faces, train a small CNN, cross-validate, predict."""
    if sys.stdout is None:  # started with stdout closed (`fer ... >&-`): results would vanish
        raise fail(
            "standard output is closed: fer prints its results there (redirect it to a file "
            "or /dev/null instead)"
        )
    # A name the terminal's encoding cannot show (PYTHONIOENCODING=ascii, a Latin-1 locale)
    # comes out as a backslash escape rather than as a UnicodeEncodeError.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure:
        reconfigure(errors="backslashreplace")
    fit_output_width()


@app.command(cls=JsonErrorsCommand)
def preprocess(
    dataset_dir: Path = typer.Argument(
        ...,
        metavar="DATASET_DIR",
        help="The dataset folder (JAFFE, a CK+ tree, or <class>/<image> folders).",
    ),
    layout: Layout | None = typer.Option(None, help="Force a layout (default: detected)."),
    ck_frames: int = typer.Option(
        3, help="CK+ tree: last frames of each labelled sequence to take."
    ),
    ck_neutral: bool = typer.Option(
        False, help="CK+ tree: also take each labelled sequence's first frame as neutral."
    ),
    min_face_score: float = typer.Option(
        0.3, help="dlib detection score a face needs (lower finds more, and more false faces)."
    ),
    equalization: Equalization = typer.Option(
        Equalization.face,
        help="Contrast equalization: face (the paper's histogram equalization, "
        "counting only pixels inside the photo), midpoint, clahe, whole or none.",
    ),
    workers: int | None = typer.Option(
        None, min=1, help="Processes to align with (default: one per core)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Align every face of a dataset and cache the 32x32 crops for train and crossval."""
    with user_errors(as_json):
        from fercli.api import prepare_dataset
        from fercli.config import PreprocessConfig, ScanOptions
        from fercli.errors import FerError

        if not math.isfinite(min_face_score):
            raise FerError(f"--min-face-score must be a finite number, not {min_face_score}")
        options = ScanOptions(
            layout=layout and layout.value, ck_frames=ck_frames, ck_neutral_first=ck_neutral
        )
        config = PreprocessConfig(min_face_score=min_face_score, equalization=equalization.value)
        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = prepare_dataset(
                dataset_dir, options, config, workers, progress=None if as_json else update
            )
    failure = (
        f"{dataset_dir}: no image could be aligned ({len(report.skipped)} skipped)"
        if report.aligned == 0
        else None
    )
    if as_json:
        emit_json({**report.to_json(), **({"error": failure} if failure else {})})
    else:
        render_preprocess(report)
    if failure:
        raise fail(failure)


def render_preprocess(report) -> None:
    table = Table(
        title=f"fer preprocess {shown(report.source)} ({report.layout})", show_header=False
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("images found", str(report.found))
    table.add_row("aligned", str(report.aligned))
    table.add_row("skipped", str(len(report.skipped)))
    table.add_row("from cache", str(report.cache_hits))
    table.add_row("time", f"{report.seconds:.2f} s ({plural(report.workers, 'worker')})")
    out.print(table)
    classes = Table(title="aligned per class")
    classes.add_column("class", overflow="fold")
    classes.add_column("images", justify="right")
    for label, count in report.classes.items():
        classes.add_row(shown(label), str(count))
    out.print(classes)
    render_edges(report.edges)
    if report.subjects:
        listing = ", ".join(f"{subject} {count}" for subject, count in report.subjects.items())
        out.print(f"[bold]aligned per subject[/bold] ({len(report.subjects)}): {shown(listing)}")
    for note in report.notes:
        out.print(f"note: {shown(note)}")
    render_skipped(report.skipped, report.found)
    if report.dataset:
        out.print(f"dataset: {shown(report.dataset)}")
    if report.contact_sheet:
        out.print(f"contact sheet: {shown(report.contact_sheet)}")


def render_edges(edges: dict) -> None:
    """Per class: crops that pass the photo's edge (and how much of them was filled in) and
    saturated crops; nothing when there are none."""
    shown_classes = {
        label: values for label, values in edges.items() if values["padded"] or values["saturated"]
    }
    if not shown_classes:
        return
    table = Table(
        title="crops past the photo's edge (filled in) and saturated crops (>10% of pixels >= 250)"
    )
    for column in ("class", "past the edge", "mean share filled", "saturated"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, values in shown_classes.items():
        table.add_row(
            shown(label),
            f"{values['padded']} of {values['crops']}",
            f"{values['mean_padding']:.1%}",
            str(values["saturated"]),
        )
    out.print(table)


def render_skipped(skipped: list, found: int, limit: int = 50) -> None:
    """The first limit skipped files with their reasons, and how many were skipped."""
    for item in skipped[:limit]:
        out.print(f"[yellow]skipped[/yellow] {shown(item.path)}: {shown(item.reason)}")
    if len(skipped) > limit:
        out.print(
            f"... and {len(skipped) - limit} more skipped (all of them: fer preprocess --json)"
        )
    if skipped:
        out.print(f"{len(skipped)} of {found} skipped")


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
# Training options default to None: unset, the recipe (--recipe, default "paper") decides.
RecipeOption = typer.Option(
    Recipe.paper,
    help="Starting settings: paper (the paper's recipe) or best (the best "
    "measured; slower). Options given here override the recipe's.",
)
EpochsOption = typer.Option(
    None, min=1, help="Passes over the (enlarged) training set (paper: 100)."
)
BatchOption = typer.Option(None, "--batch-size", min=1, help="Mini-batch size (paper: 16).")
LearningRateOption = typer.Option(None, "--lr", min=0.0, help="Learning rate (paper: 0.001).")
MomentumOption = typer.Option(None, min=0.0, max=1.0, help="SGD momentum (paper: 0.9).")
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
    None, min=0, help="--augment-mode copies: transformed copies per image (paper: 5)."
)
FlipAugmentOption = typer.Option(
    None, "--flip/--no-flip", help="Mirror images among the augmentations (paper: on)."
)
RotationOption = typer.Option(
    None, min=0.0, help="Largest augmentation rotation, in degrees (paper: 3)."
)
ShiftOption = typer.Option(None, min=0.0, help="Largest augmentation shift, in pixels (paper: 0).")
NormalisationOption = typer.Option(
    None,
    help="z-score statistics: global (one mean and std), per pixel, or "
    "per-dataset (several datasets, crossval only: each dataset's own) (paper: global).",
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
    (options: the values of training_options' parameters; None means not given)."""
    from fercli.config import (
        AUGMENTATIONS,
        CROP_SIZE,
        MODEL_VARIANTS,
        NORMALISATIONS,
        OPTIMIZERS,
        recipe_config,
    )
    from fercli.errors import FerError

    # Enum choices (Variant, Optimizer, ...) as their plain values.
    options = {name: getattr(value, "value", value) for name, value in options.items()}
    for name, allowed in (
        ("variant", MODEL_VARIANTS),
        ("optimizer", OPTIMIZERS),
        ("normalisation", NORMALISATIONS),
        ("augment_mode", AUGMENTATIONS),
    ):
        value = options.get(name)
        if value is not None and value not in allowed:
            raise FerError(
                f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(allowed)}"
            )
    # NaN passes every range check (each comparison is false), and a huge finite shift
    # overflows the random generator: both are refused here, before any work.
    for name, largest in (
        ("lr", math.inf),
        ("momentum", 1.0),
        ("max_rotation", 180.0),
        ("max_shift", float(CROP_SIZE)),
    ):
        value = options.get(name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise FerError(f"--{name.replace('_', '-')} must be a finite number, not {value}")
        if value > largest:
            raise FerError(
                f"--{name.replace('_', '-')} {value:g} is more than {largest:g}, the largest that "
                "makes sense"
            )
    chosen = tuple(
        name.strip() for name in (options.get("classes") or "").split(",") if name.strip()
    )
    given = {field: options.get(name) for name, field in TRAIN_OPTIONS.items()}
    if given["init_model"] is not None:
        given["init_model"] = str(given["init_model"])
    return recipe_config(options["recipe"], classes=chosen, **given)


def recipe_summary(training: dict) -> str:
    """ "recipe paper" and every setting that differs from it, in command-line spelling."""
    from fercli.config import TrainConfig, recipe_differences

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


@app.command(cls=JsonErrorsCommand)
@with_training_options
def train(
    datasets: list[str] | None = DatasetArgument,
    output: Path | None = typer.Option(
        None, help="Model file to write (default: a new file in FER_HOME/models)."
    ),
    training: dict = TRAINING,
    ensemble: int = typer.Option(
        1,
        help="Train this many networks (seeds differ) into one model file; predict averages them.",
    ),
    split: str | None = typer.Option(
        None, help="Train only on this predefined split of the dataset (FER2013: Training)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Train the network on every image of one preprocessed dataset or several combined, and save a
    model for predict."""
    with user_errors(as_json):
        from fercli.api import train as train_network

        config = train_config(training)
        bar, _ = progress_bar("training")
        header(bar, f"fer train: {recipe_summary(config.to_dict())}")
        task = bar.tasks[0].id
        bar.update(task, total=config.epochs * ensemble)
        with bar if not as_json else contextlib.nullcontext():
            result = train_network(
                datasets,
                output,
                config=config,
                shared_classes=training["shared_classes"],
                split=split,
                ensemble=ensemble,
                progress=None if as_json else epoch_reporter(bar, task, ensemble),
            )
    parts = result.parts
    summary = {
        "model": str(result.path),
        "dataset": result.dataset,
        "classes": result.classes,
        **({"datasets": parts} if parts else {}),
        "images": result.images,
        "epochs": result.epochs,
        "final_loss": result.loss,
        "final_train_accuracy": result.accuracy,
        "seconds": round(result.seconds, 1),
        "runtime_difference": result.runtime_difference,
        "networks": ensemble,
    }
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"trained on {result.images} images of {shown(result.dataset)} "
        f"({shown(', '.join(result.classes))}), "
        f"{result.epochs} epochs in {result.seconds:.1f} s; final training loss {result.loss:.3f}, "
        f"training accuracy {result.accuracy:.1%} (not a test score: use fer crossval)"
    )
    if parts:
        render_sources(parts, result.classes)
        for note in result.notes:
            out.print(f"[yellow]note:[/yellow] {shown(note)}")
    out.print(
        f"model saved to {shown(result.path)}"
        + (f" (an ensemble of {ensemble} networks)" if ensemble > 1 else "")
    )


@app.command(cls=JsonErrorsCommand)
@with_training_options
def crossval(
    datasets: list[str] | None = DatasetArgument,
    folds: int = typer.Option(10, min=2, help="Number of folds."),
    group: Group = typer.Option(
        Group.random,
        help="random: stratified folds; subject: no person in both train and test; "
        "dataset: each of several datasets tested in turn by a network trained on the others "
        "(--folds is ignored).",
    ),
    training: dict = TRAINING,
    workers: int | None = typer.Option(
        None, min=1, help="Folds trained at once (default: one per core)."
    ),
    ray: str | None = RayOption,
    output: Path | None = typer.Option(
        None, help="Report folder (default: a new folder in FER_HOME/runs)."
    ),
    no_save_model: bool = typer.Option(
        False,
        "--no-save-model",
        help="Do not save the fold networks as one "
        "ensemble model file in FER_HOME/models (which predict then uses).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    """K-fold cross-validation on one preprocessed dataset or several combined, with an honest
    report."""
    with user_errors(as_json):
        from fercli.api import crossval as cross_validate

        config = train_config(training)
        bar, _ = progress_bar("starting")
        reporter = epoch_reporter(
            bar,
            bar.tasks[0].id,
            header=f"fer crossval: {{folds}} folds ({group.value}), "
            f"{recipe_summary(config.to_dict())}",
        )
        with bar if not as_json else contextlib.nullcontext():
            report = cross_validate(
                datasets,
                folds,
                group.value,
                config=config,
                shared_classes=training["shared_classes"],
                workers=workers,
                ray=ray,
                output=output,
                save_model=not no_save_model,
                progress=None if as_json else reporter,
            )
    files, output = report.files, report.files["report"].parent
    failure, code = None, 1
    if report.interrupted:
        failure, code = (
            (
                f"interrupted after {len(report.folds)} of {report.planned_folds} folds; "
                f"the finished folds are in {output}"
            ),
            130,
        )
    elif report.diverged_folds:
        failure = (
            f"training diverged in {len(report.diverged_folds)} of {len(report.folds)} folds "
            f"({', '.join(map(str, report.diverged_folds))}), so there is no result (try a smaller "
            "--lr); "
            f"the report is in {output}"
        )
    if as_json:
        emit_json(
            {
                **report.to_json(),
                "files": {name: str(path) for name, path in files.items()},
                **({"error": failure} if failure else {}),
            }
        )
    else:
        render_crossval(report, files)
    if failure:
        raise fail(failure, code)


def render_sources(parts: list[dict], labels: list[str]) -> None:
    """Several datasets combined: which classes came from where, and how many images each gave."""
    table = Table(title="images per dataset and class")
    table.add_column("class", overflow="fold")
    for part in parts:
        table.add_column(shown(part["name"]), justify="right", overflow="fold")
    for label in labels:
        table.add_row(shown(label), *(str(part["classes"].get(label, 0)) for part in parts))
    table.add_row("all", *(str(part["images"]) for part in parts), style="bold")
    out.print(table)


def render_per_dataset(report) -> None:
    """Each dataset's accuracy on its own test images: one mean can hide that one carries the
    other."""
    table = Table(title="accuracy per dataset (its own test images, over the folds)")
    for column in ("dataset", "tested", "accuracy", "mean +/- std over folds"):
        table.add_column(
            column, justify="left" if column == "dataset" else "right", overflow="fold"
        )
    for name, figures in report.per_dataset.items():
        if figures["accuracy"] is None:
            table.add_row(shown(name), str(figures["tested"]), "-", "-")
        else:
            spread = (
                f"{figures['mean_accuracy']:.2%} +/- {figures['std_accuracy']:.2%} "
                f"({figures['folds']} folds)"
                if figures["folds"] > 1
                else "one fold"
            )
            table.add_row(shown(name), str(figures["tested"]), f"{figures['accuracy']:.2%}", spread)
    out.print(table)


def render_crossval(report, files: dict) -> None:
    protocol = report.protocol
    kind = {
        "subject": "subject folds (no person in both train and test)",
        "dataset": "leave-one-dataset-out folds (each dataset tested by a network trained on the "
        "others)",
    }.get(protocol["group"], "random stratified folds")
    training = protocol["training"]
    out.print(
        f"[bold]protocol[/bold]: {protocol['folds']}-fold {kind}, seed {training['seed']}; "
        f"{len(report.labels)} classes ({shown(', '.join(report.labels))}); "
        f"{recipe_summary(training)}; "
        f"{report.dataset['images']} images of {shown(report.dataset['name'])}"
    )
    folds = fold_table(report)
    if "datasets" in report.dataset:
        render_sources(report.dataset["datasets"], report.labels)
    out.print(folds)
    if report.diverged_folds:
        out.print(
            f"[bold]no mean accuracy[/bold]: training diverged in {len(report.diverged_folds)} of "
            f"{len(report.folds)} folds; the figures below count only the folds that did not"
        )
    elif report.folds:
        out.print(
            f"[bold]mean accuracy {report.mean_accuracy:.2%} +/- {report.std_accuracy:.2%}[/bold] "
            f"over {len(report.folds)} folds (pooled {report.pooled_accuracy:.2%}), macro-F1 "
            f"{report.macro_f1:.3f}"
        )
    if report.per_dataset:
        render_per_dataset(report)
    render_scores(report, "per class (summed over folds)")
    for warning in report.warnings:
        out.print(f"[yellow]note:[/yellow] {warning}")
    for name, path in files.items():
        out.print(f"{name}: {shown(path)}")


def fold_table(report) -> Table:
    """One row per fold: its sizes and accuracy, with the test subjects (subject folds) and
    each dataset's accuracy (several datasets)."""
    subject_folds = report.protocol["group"] == "subject"
    table = Table(title="accuracy per fold")
    for column in ("fold", "train", "test", "accuracy"):
        table.add_column(column, justify="right")
    names = list(report.per_dataset)
    if subject_folds:
        table.add_column("test subjects", overflow="fold")
    for name in names:
        table.add_column(shown(name), justify="right", overflow="fold")
    for fold in report.folds:
        row = [
            str(fold.fold),
            str(fold.train_size),
            str(fold.test_size),
            "diverged" if fold.accuracy is None else f"{fold.accuracy:.1%}",
        ]
        if subject_folds:
            row.append(shown(", ".join(fold.test_subjects)))
        row.extend(
            f"{fold.per_dataset[name]['accuracy']:.1%}" if name in fold.per_dataset else "-"
            for name in names
        )
        table.add_row(*row)
    return table


def render_scores(report, title: str) -> None:
    """The per-class table and the confusion matrix of a crossval or evaluate report."""
    classes = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "images"):
        classes.add_column(
            column, justify="left" if column == "class" else "right", overflow="fold"
        )
    for label, values in report.per_class.items():
        classes.add_row(
            shown(label),
            f"{values['precision']:.3f}",
            f"{values['recall']:.3f}",
            f"{values['f1']:.3f}",
            str(values["support"]),
        )
    out.print(classes)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("", overflow="fold")
    for label in report.labels:
        matrix.add_column(shown(label), justify="right", overflow="fold")
    for label, row in zip(report.labels, report.confusion, strict=True):
        matrix.add_row(shown(label), *(str(int(value)) for value in row))
    out.print(matrix)


@app.command(cls=JsonErrorsCommand)
def evaluate(
    dataset: str = typer.Argument(
        ...,
        metavar="DATASET",
        help="A preprocessed dataset (its name or folder under "
        "FER_HOME) or an original dataset folder, then preprocessed with the model's settings.",
    ),
    model: Path | None = typer.Option(
        None, help="Model file (default: the most recently trained)."
    ),
    split: str | None = typer.Option(
        None,
        help="Only this predefined split of the dataset (FER2013: Training, "
        "PublicTest, PrivateTest).",
    ),
    workers: int | None = typer.Option(
        None, min=1, help="Processes to align with, if the dataset needs preprocessing."
    ),
    output: Path | None = typer.Option(
        None, help="Report folder (default: a new folder in FER_HOME/runs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    """Score a trained model on another dataset: only the classes both have count."""
    with user_errors(as_json):
        from fercli.api import evaluate_model

        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = evaluate_model(
                dataset, model, split, workers, output, progress=None if as_json else update
            )
    files = report.files
    if as_json:
        emit_json({**report.to_json(), "files": {key: str(path) for key, path in files.items()}})
        return
    model_info = report.protocol["model"]
    trained_on = model_info.get("dataset") or {}
    networks = (
        f", an ensemble of {model_info['networks']} networks" if model_info["networks"] > 1 else ""
    )
    out.print(
        f"[bold]protocol[/bold]: model {shown(Path(model_info['path']).name)} "
        f"({recipe_summary(model_info['training'] or {})}"
        f"{networks}; trained on {trained_on.get('images', '?')} images of "
        f"{shown(trained_on.get('name', '?'))}, "
        f"data fingerprint {model_info.get('data_fingerprint') or '?'}) on "
        f"{report.dataset['images']} images of "
        f"{shown(report.dataset['name'])}{f' (split {shown(split)})' if split else ''}; "
        f"{len(report.labels)} shared classes ({shown(', '.join(report.labels))})"
    )
    out.print(f"[bold]accuracy {report.pooled_accuracy:.2%}[/bold], macro-F1 {report.macro_f1:.3f}")
    render_scores(report, "per class")
    for warning in report.warnings:
        out.print(f"[yellow]note:[/yellow] {shown(warning)}")
    for key, path in files.items():
        out.print(f"{key}: {shown(path)}")


@app.command(cls=JsonErrorsCommand)
def sweep(
    dataset: str | None = DatasetArgument,
    grid: Path = typer.Option(
        ..., "--grid", help="The grid file (TOML): [base], [vary], seeds, folds, group."
    ),
    settings: list[str] | None = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="Override the grid: a [base] setting (epochs=20), seeds=[0], vary.variant=[...].",
    ),
    ray: str | None = RayOption,
    workers: int | None = typer.Option(
        None, min=1, help="Folds trained at once on this machine (default: one per core)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print sweep.json instead of the table."),
) -> None:
    """Cross-validate every recipe of a grid with several seeds on identical folds and rank them.

    Each finished fold is stored at once: the same command again resumes where it stopped.
    """
    with user_errors(as_json):
        from fercli.api import sweep_recipes as run_sweep

        bar, update = progress_bar("sweep")

        def progress(event) -> None:
            if event.kind in ("start", "fold"):
                update(event)

        with bar if not as_json else contextlib.nullcontext():
            report = run_sweep(
                dataset,
                grid,
                settings or [],
                ray=ray,
                workers=workers,
                progress=None if as_json else progress,
            )
    if report.interrupted:
        done = report.stored_folds + report.trained_folds
        raise fail(
            f"interrupted after {done} of {report.planned_folds} folds, stored in {report.folder}: "
            "run the same command again to go on",
            130,
        )
    if as_json:
        emit_json(
            {**report.to_json(), "files": {name: str(path) for name, path in report.files.items()}}
        )
    else:
        render_sweep(report)


def render_sweep(report) -> None:
    grid = report.grid
    out.print(
        f"[bold]sweep[/bold]: {len(report.recipes)} recipes x {len(grid.seeds)} seeds "
        f"({', '.join(map(str, grid.seeds))}) x {grid.folds} {grid.group} folds on "
        f"{report.dataset['images']} "
        f"images of {shown(report.dataset['name'])}; {report.trained_folds} folds trained now, "
        f"{report.stored_folds} found stored; {report.seconds:.1f} s on {report.engine['name']}"
    )
    table = Table(title="recipes, best first (accuracy: mean over seeds of the mean fold accuracy)")
    for column in ("#", "recipe", "accuracy", "spread", "F1", "vs base", "95% interval", "time"):
        table.add_column(
            column,
            justify="left" if column == "recipe" else "right",
            no_wrap=column != "recipe",
            min_width=16 if column == "recipe" else None,
            overflow="fold" if column == "recipe" else "ellipsis",
        )
    for item in report.recipes:
        d_low, d_high = item.difference_interval
        table.add_row(
            str(item.rank),
            shown(item.name),
            f"{item.accuracy:.2%}",
            f"{item.spread:.2%}",
            f"{item.macro_f1:.3f}",
            "base" if item.is_base else f"{item.difference:+.2%}",
            "" if item.is_base else f"{d_low:+.1%} .. {d_high:+.1%}",
            f"{item.seconds:.0f} s",
        )
    out.print(table)
    out.print(
        "spread: standard deviation of the per-seed means; vs base: mean paired difference on the "
        "same "
        "(seed, fold) pairs, 95% interval from the corrected resampled t-test for repeated k-fold "
        "CV "
        "(Nadeau & Bengio 2003); time: training time of the recipe's folds"
    )
    for name, path in report.files.items():
        out.print(f"{name}: {shown(path)}")


@app.command(cls=JsonErrorsCommand)
def predict(
    paths: list[Path] = typer.Argument(
        ..., metavar="PATHS...", help="Image and video files, and folders."
    ),
    model: Path | None = typer.Option(
        None, help="Model file (default: the most recently trained)."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: a list of {path, faces: [{box, label, probabilities}]} "
        "(a video: "
        "{path, fps, frames, tracks: [{id, frames: [{frame, time, box, label, probabilities}]}]}).",
    ),
    as_csv: bool = typer.Option(
        False, "--csv", help="Print CSV, one row per face (videos: per face per analysed frame)."
    ),
    annotate_dir: Path | None = typer.Option(
        None,
        "--annotate",
        help="Write copies of the images with boxes and labels here "
        "(videos: an annotated .avi and a .timeline.png each).",
    ),
    workers: int | None = typer.Option(
        None, min=1, help="Processes for many images (default: one per core)."
    ),
    every: int = typer.Option(1, min=1, help="Videos: analyse one frame in every N."),
    fps: float | None = typer.Option(
        None, help="Videos: analyse this many frames a second instead of --every."
    ),
    detect_every: int = typer.Option(
        5,
        min=1,
        help="Videos: a full face detection every K analysed frames; in "
        "between, faces are followed by their landmarks (1: detect on every frame).",
    ),
    smooth: float = typer.Option(
        0.0,
        min=0.0,
        help="Videos: also give each track's probabilities averaged over "
        "this many seconds (0: off; the raw values stay).",
    ),
) -> None:
    """Label the expression of every face in photos and videos."""
    if as_json and as_csv:
        raise fail("choose one of --json and --csv", as_json=True)
    with user_errors(as_json):
        from fercli.api import label_media

        options = video_options(every, fps, detect_every, smooth)
        bar, update = progress_bar("predicting")
        # The images' bar; a long video still gets its own, except with --json or --csv.
        quiet = as_json or as_csv or len(paths) == 1 and not Path(paths[0]).is_dir()
        if quiet:
            bar.update(bar.tasks[0].id, visible=False)
        with bar if not (as_json or as_csv) else contextlib.nullcontext():
            media = label_media(
                paths,
                model,
                options=options,
                workers=workers,
                annotate=annotate_dir,
                progress=None if quiet else update,
                video_progress=None if as_json or as_csv else video_progress(bar),
            )
    failure = (
        None
        if media.processed
        else f"no image{' or video' if media.videos else ''} could be processed"
    )
    render_media(media, as_json, as_csv, failure)
    render_media_problems(media)
    if annotate_dir:
        render_annotated(media, annotate_dir)
    if not as_json:
        render_training_notes(media, as_csv)
    listed = sum(1 for problem in media.images.problems if problem.listed)
    passed_over = len(media.images.problems) - listed
    others = (
        f"{plural(passed_over, 'other file')} in the folders, not "
        f"{'an image' if passed_over == 1 else 'images'}"
        if passed_over
        else ""
    )
    if failure:
        raise fail(failure + (f" ({others})" if others else ""))
    if not as_json:
        render_media_summary(media, listed, others, as_csv)


def video_options(every: int, fps: float | None, detect_every: int, smooth: float):
    """predict's video settings; FerError for a value no option range catches (NaN, infinity)."""
    from fercli.errors import FerError
    from fercli.video import VideoOptions

    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise FerError(f"--fps must be a number above 0, not {fps}")
    if not math.isfinite(smooth):
        raise FerError(f"--smooth must be a finite number of seconds, not {smooth}")
    return VideoOptions(every=every, fps=fps, detect_every=detect_every, smooth=smooth)


def render_media(media, as_json: bool, as_csv: bool, failure: str | None) -> None:
    """predict's results on stdout: JSON, CSV, or tables."""
    report = media.images
    videos = [video.to_json(report.classes) for video in media.videos]
    if as_json and failure:
        emit_json(
            {
                "error": failure,
                "images": [image.to_json() for image in report.images] + videos,
                "skipped": [
                    {"path": problem.path, "reason": problem.reason} for problem in report.problems
                ],
            }
        )
    elif as_json:
        emit_json([image.to_json() for image in report.images] + videos)
    elif as_csv and media.videos:
        render_media_csv(media)
    elif as_csv:
        render_predict_csv(report)
    else:
        if report.processed:
            render_predict(report)
        render_videos(media)


def render_media_problems(media) -> None:
    """What predict skipped and why, and its notes, on stderr."""
    report = media.images
    for problem in report.problems:
        if problem.listed:
            err.print(f"[yellow]skipped[/yellow] {shown(problem.path)}: {problem.reason}")
    for image in report.images:
        if image.error:
            err.print(f"[yellow]skipped[/yellow] {shown(image.path)}: {shown(image.error)}")
    for video in media.videos:
        if video.error:
            err.print(
                f"[yellow]{'error in' if video.processed else 'skipped'}[/yellow] "
                f"{shown(video.path)}: "
                f"{shown(video.error)}"
            )
    for note in report.notes:
        err.print(f"note: {shown(note)}")


def render_training_notes(media, as_csv: bool) -> None:
    """A note for each image the model was trained on: its label is no test of the model."""
    for image in media.images.images:
        if any(face.in_training_data for face in image.faces):
            (err if as_csv else out).print(
                f"note: {shown(image.path)} was in this model's training data: "
                "its score says nothing about new faces"
            )


def render_annotated(media, annotate_dir: Path) -> None:
    err.print(f"{len(media.annotated)} annotated images in {shown(annotate_dir)}")
    if media.videos:
        videos_written = sum(1 for path in media.annotated_videos if path.suffix == ".avi")
        timelines = len(media.annotated_videos) - videos_written
        err.print(
            f"{plural(videos_written, 'annotated video')} and "
            f"{plural(timelines, 'timeline')} in {shown(annotate_dir)}"
        )


def render_media_summary(media, listed: int, others: str, as_csv: bool) -> None:
    """predict's last line: images and faces, videos and tracks, what was skipped."""
    report = media.images
    skipped = listed + len(report.images) - report.processed
    skipped += sum(1 for video in media.videos if not video.processed)
    faces = sum(len(image.faces) for image in report.images)
    analysed = [video for video in media.videos if video.processed]
    tracks = sum(len(video.tracks) for video in analysed)
    summary = "; ".join(
        filter(
            None,
            [
                f"{plural(report.processed, 'image')}, {plural(faces, 'face')}"
                if report.processed or not media.videos
                else "",
                f"{plural(len(analysed), 'video')}, {plural(tracks, 'track')}"
                if media.videos
                else "",
                f"{skipped} skipped" if skipped else "",
                others,
            ],
        )
    )
    (err if as_csv else out).print(summary)


def plural(count: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def render_predict(report) -> None:
    table = Table(title=f"model {shown(Path(report.model).name)}")
    for column in ("image", "face", "box (x, y, w, h)", "label", "p"):
        table.add_column(column, overflow="fold")
    for image in report.images:
        if image.error:
            continue
        if not image.faces:
            table.add_row(shown(image.path), "-", "no face found", "", "")
        for number, face in enumerate(image.faces, start=1):
            table.add_row(
                shown(image.path),
                str(number),
                ", ".join(map(str, face.box)),
                shown(face.label),
                f"{face.probabilities[face.label]:.2f}",
            )
    out.print(table)


def render_predict_csv(report) -> None:
    """CSV on stdout; names escaped as in tables, so that no control byte reaches a terminal."""
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(
        [
            "path",
            "face",
            "x",
            "y",
            "width",
            "height",
            "label",
            *(f"p_{escaped(label)}" for label in report.classes),
        ]
    )
    for image in report.images:
        for number, face in enumerate(image.faces, start=1):
            writer.writerow(
                [
                    escaped(image.path),
                    number,
                    *face.box,
                    escaped(face.label),
                    *(f"{face.probabilities[label]:.6f}" for label in report.classes),
                ]
            )


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


def render_videos(media) -> None:
    """Per video: one row per track (frames seen, time on screen, share of each expression)."""
    classes = media.images.classes
    for video in media.videos:
        if not video.processed:
            continue
        duration = (
            f", {video.frames / video.fps:.1f} s at {video.fps:g} frames/s" if video.fps else ""
        )
        speed = (
            f" in {video.seconds:.1f} s ({video.analysed / video.seconds:.0f} frames/s)"
            if video.seconds > 0
            else ""
        )
        title = (
            f"{shown(video.path)}: {plural(video.frames, 'frame')}{duration}, {video.analysed} "
            f"analysed{speed}"
            f"{' (labels smoothed)' if video.smoothed else ''}"
        )
        table = Table(title=title)
        for column in ("track", "frames", "on screen", "seen", *classes):
            table.add_column(
                shown(column),
                justify="left" if column in ("track", "seen") else "right",
                overflow="fold",
            )
        if not video.tracks:
            table.add_row("-", "0", "", "no face found", *[""] * len(classes))
        for track in video.tracks:
            summary = track.summary(classes, video.interval)
            table.add_row(
                str(track.id),
                str(summary["frames_seen"]),
                f"{summary['seconds']:.1f} s",
                f"{summary['first']:.1f}-{summary['last']:.1f} s",
                *(f"{summary['shares'][label]:.0%}" for label in classes),
            )
        out.print(table)


def render_media_csv(media) -> None:
    """CSV of a run with videos: one row per face per analysed frame, and one per face of each
    image (its frame, time and track empty; a video's face column empty)."""
    import csv

    from fercli.video import csv_header, csv_row

    classes = media.images.classes
    images = media.images.images
    smoothed = any(video.smoothed for video in media.videos)
    writer = csv.writer(sys.stdout)
    header = csv_header(classes, smoothed, escaped)
    if images:
        header.insert(1, "face")
    writer.writerow(header)
    for image in images:
        for number, face in enumerate(image.faces, start=1):
            writer.writerow(
                [
                    escaped(image.path),
                    number,
                    "",
                    "",
                    "",
                    *face.box,
                    escaped(face.label),
                    *(f"{face.probabilities[label]:.6f}" for label in classes),
                    *([""] * (len(classes) + 1) if smoothed else []),
                ]
            )
    for video in media.videos:
        rows = sorted(
            ((face.frame, track.id, face) for track in video.tracks for face in track.frames),
            key=lambda row: row[:2],
        )
        for _, track, face in rows:
            row = csv_row(video.path, track, face, classes, smoothed, escaped)
            if images:
                row.insert(1, "")
            writer.writerow(row)


@app.command(cls=JsonErrorsCommand)
def live(
    source: str = typer.Argument(
        "0", help="A camera index, a video file or a stream URL OpenCV opens."
    ),
    model: Path | None = typer.Option(
        None, help="Model file (default: the most recently trained)."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to serve the page on (0.0.0.0: every network)."
    ),
    port: int = typer.Option(
        8017, min=0, max=65535, help="Port to serve the page on (0: any free one)."
    ),
    detect_every: int = typer.Option(
        5,
        min=1,
        help="A full face detection every K frames; in between, faces "
        "are followed by their landmarks.",
    ),
    record: Path | None = typer.Option(
        None, help="Also write the per-frame CSV of fer predict --csv here."
    ),
    loop: bool = typer.Option(
        False, help="A video file starts again at its end instead of ending."
    ),
) -> None:
    """Label a camera, video file or stream live, on a local web page (the 'live' extra)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise fail("fer live needs its web server: pip install 'fercli[live]'") from None
    with user_errors():
        from fercli.live import LiveOptions, LiveSession, bind_socket
        from fercli.live.server import serve
        from fercli.predict import resolve_model
        from fercli.store import check_writable

        loaded = resolve_model(model)
        if record:
            check_writable(record.parent if str(record.parent) else Path("."))
        sock = bind_socket(host, port)
        try:
            session = LiveSession(
                source,
                loaded,
                LiveOptions(detect_every=detect_every, loop=loop, record=record),
                escaped,
            )
        except BaseException:
            sock.close()
            raise
        address = sock.getsockname()
        shown_host = f"[{address[0]}]" if ":" in address[0] else address[0]
        try:
            session.start()
            serve(
                session,
                sock,
                on_started=lambda: out.print(
                    f"fer live: {shown(source)} with {shown(Path(str(loaded.path)).name)} on "
                    f"http://{shown_host}:{address[1]}/ (Ctrl-C to stop)"
                ),
            )
        finally:
            session.stop()
            sock.close()
    state = session.state()
    if state["status"] == "failed":
        raise fail(state["error"] or "the source failed")
    out.print(
        f"fer live: {shown(source)} {'ended' if state['status'] == 'ended' else 'stopped'} after "
        f"{plural(state['frame'], 'frame')}" + (f"; recorded in {shown(record)}" if record else "")
    )


@app.command("list", cls=JsonErrorsCommand)
def list_entries(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """What FER_HOME holds: datasets, models (with their cross-validation score) and runs."""
    with user_errors(as_json):
        from fercli.inventory import list_home

        inventory = list_home()
    if as_json:
        emit_json(inventory.to_json())
    else:
        render_inventory(inventory)


def render_inventory(inventory) -> None:
    now = time.time()
    if not (inventory.datasets or inventory.models or inventory.runs):
        out.print(f"no datasets, models or runs in {shown(inventory.home)} yet")
    tables = {
        "datasets": (
            ["name", "images", "classes", "age", "size"],
            inventory.datasets,
            lambda details: [
                str(details.get("images", "")),
                shown(", ".join(details.get("classes") or {})),
            ],
        ),
        "models": (
            ["name", "dataset", "recipe", "crossval", "age", "size"],
            inventory.models,
            lambda details: [
                shown(details.get("dataset") or "?"),
                shown(details.get("recipe", "")),
                crossval_score(details.get("crossval")),
            ],
        ),
        "runs": (
            ["name", "dataset", "folds", "mean accuracy", "age", "size"],
            inventory.runs,
            lambda details: [
                shown(details.get("dataset", "")),
                f"{details.get('folds')} {details.get('group')}",
                percent(details.get("mean_accuracy"), details.get("std_accuracy")),
            ],
        ),
    }
    for title, (columns, entries, cells) in tables.items():
        if not entries:
            continue
        table = Table(title=title)
        for column in columns:
            table.add_column(
                column, overflow="fold", justify="right" if column in ("images", "size") else "left"
            )
        for entry in entries:
            middle = (
                cells(entry.details)
                if "error" not in entry.details
                else [f"unreadable: {shown(entry.details['error'])}", *[""] * (len(columns) - 4)]
            )
            table.add_row(
                shown(entry.name), *middle, age(now - entry.modified), size_text(entry.size)
            )
        out.print(table)
    other = ", ".join(f"{name} {size_text(size)}" for name, size in inventory.other.items())
    out.print(
        f"{shown(inventory.home)}: {size_text(inventory.total)} in all ({other}); "
        "remove an entry with fer remove NAME"
    )


def crossval_score(crossval: dict | None) -> str:
    if not crossval:
        return "-"
    figures = percent(crossval["mean_accuracy"], crossval["std_accuracy"])
    return f"{figures} ({crossval['folds']} {crossval['group']} folds)"


def percent(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.1%} +/- {std or 0:.1%}"


def age(seconds: float) -> str:
    """A duration in the largest whole unit: '40 s', '5 min', '3 h', '12 d'."""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit}"
    return f"{max(0, int(seconds))} s"


def size_text(size: int) -> str:
    """Bytes for people: '812 B', '2.4 kB', '66.1 MB'."""
    for unit, length in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= length:
            return f"{size / length:.1f} {unit}"
    return f"{size} B"


@app.command(cls=JsonErrorsCommand)
def remove(
    names: list[str] = typer.Argument(
        ...,
        metavar="NAMES...",
        help="Datasets, models or runs, as fer list names them (or their paths).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Delete datasets, models or cross-validation runs from FER_HOME, saying how much was freed."""
    with user_errors(as_json):
        from fercli.inventory import find_entry, remove_entry

        for name in names:  # every name checked before anything is removed
            find_entry(name)
        removed = [remove_entry(name) for name in names]
    if as_json:
        emit_json(
            {
                "removed": [entry.to_json() for entry in removed],
                "freed": sum(entry.size for entry in removed),
            }
        )
        return
    for entry in removed:
        out.print(f"removed {entry.kind} {shown(entry.path)} ({size_text(entry.size)})")
    if len(removed) > 1:
        out.print(f"{size_text(sum(entry.size for entry in removed))} freed")


def main() -> None:
    import errno
    import os

    try:
        app()
    except OSError as error:
        # fercli's library turns the errors of the files it reads and writes into one-line
        # FerErrors; an OSError without a file name that gets here is stdout failing (a full
        # disk, a read-only descriptor).
        if error.filename is not None or error.errno not in (
            errno.ENOSPC,
            errno.EIO,
            errno.EBADF,
            errno.EDQUOT,
            errno.EFBIG,
        ):
            raise
        with contextlib.suppress(OSError):  # so that Python's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        err.print(
            "[red]error:[/red] cannot write the results to standard output: "
            f"{shown(error.strerror)}"
        )
        sys.exit(1)
