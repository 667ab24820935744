"""The `fer` command: parses options, calls one library function, renders the result.

Heavy libraries (OpenCV, dlib, TensorFlow) are imported inside the commands, so that
`fer --help` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fercli import __version__

app = typer.Typer(
    name="fer",
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
    """Text that any stdout can take: undecodable file-name bytes as \\udcxx escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(path: object) -> str:
    """A path or message as one printable line for rich: control characters, undecodable
    bytes and rich markup ("[bold]" in a file name) escaped."""
    from rich.markup import escape

    text = printable(str(path))
    return escape("".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red line on stderr; return the Exit to raise."""
    err.print(f"[red]error:[/red] {shown(message)}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Turn fercli's typed errors into one red line and exit code 1, Ctrl-C into exit 130."""
    from fercli.errors import FerError

    try:
        yield
    except FerError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def emit_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=True, default=str) + "\n")


def progress_bar(description: str):
    """A rich progress bar on stderr and the callback that drives it: callback(done, total)."""
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

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _version(value: bool) -> None:
    if value:
        out.print(f"fer (fercli) {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Facial expression recognition: align faces, train a small CNN, cross-validate, predict."""


@app.command()
def preprocess(
    dataset_dir: Path = typer.Argument(..., help="The dataset folder (JAFFE, a CK+ tree, or <class>/<image> folders)."),
    layout: str | None = typer.Option(None, help="Force a layout: jaffe, ck+ or folders (default: detected)."),
    ck_frames: int = typer.Option(3, help="CK+ tree: last frames of each labelled sequence to take."),
    ck_neutral: bool = typer.Option(False, help="CK+ tree: also take each labelled sequence's first frame as neutral."),
    min_face_score: float = typer.Option(0.3, help="dlib detection score a face needs (lower finds more, and more false faces)."),
    workers: int | None = typer.Option(None, min=1, help="Processes to align with (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Align every face of a dataset and cache the 32x32 crops for train and crossval."""
    with user_errors():
        from fercli.config import PreprocessConfig, ScanOptions
        from fercli.preprocess import preprocess_dataset

        options = ScanOptions(layout=layout, ck_frames=ck_frames, ck_neutral_first=ck_neutral)
        config = PreprocessConfig(min_face_score=min_face_score)
        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = preprocess_dataset(dataset_dir, options, config, workers, progress=None if as_json else update)
    if as_json:
        emit_json(report.to_json())
    else:
        render_preprocess(report)
    if report.aligned == 0:
        raise fail(f"{dataset_dir}: no image could be aligned ({len(report.skipped)} skipped)")


def render_preprocess(report) -> None:
    table = Table(title=f"fer preprocess {shown(report.source)} ({report.layout})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("images found", str(report.found))
    table.add_row("aligned", str(report.aligned))
    table.add_row("skipped", str(len(report.skipped)))
    table.add_row("from cache", str(report.cache_hits))
    table.add_row("time", f"{report.seconds:.2f} s ({report.workers} workers)")
    out.print(table)
    classes = Table(title="aligned per class")
    classes.add_column("class")
    classes.add_column("images", justify="right")
    for label, count in report.classes.items():
        classes.add_row(shown(label), str(count))
    out.print(classes)
    if report.subjects:
        listing = ", ".join(f"{subject} {count}" for subject, count in report.subjects.items())
        out.print(f"[bold]aligned per subject[/bold] ({len(report.subjects)}): {shown(listing)}")
    for note in report.notes:
        out.print(f"note: {shown(note)}")
    limit = 50
    for item in report.skipped[:limit]:
        out.print(f"[yellow]skipped[/yellow] {shown(item.path)}: {shown(item.reason)}")
    if len(report.skipped) > limit:
        out.print(f"... and {len(report.skipped) - limit} more skipped (all of them: fer preprocess --json)")
    if report.skipped:
        out.print(f"{len(report.skipped)} of {report.found} skipped")
    if report.dataset:
        out.print(f"dataset: {shown(report.dataset)}")
    if report.contact_sheet:
        out.print(f"contact sheet: {shown(report.contact_sheet)}")


# Options shared by train and crossval: one definition each, so they cannot drift apart.
DatasetArgument = typer.Argument(
    None, help="A preprocessed dataset: its name or folder under FER_HOME, or the original folder "
    "(default: the most recently preprocessed)."
)
EpochsOption = typer.Option(100, min=1, help="Training epochs (the paper: 80-100).")
BatchOption = typer.Option(16, "--batch-size", min=1, help="Mini-batch size (the paper: 16).")
LearningRateOption = typer.Option(0.001, "--lr", min=0.0, help="Learning rate (the paper: 0.001).")
MomentumOption = typer.Option(0.9, min=0.0, max=1.0, help="SGD momentum.")
OptimizerOption = typer.Option("sgd", help="sgd (the paper) or adam.")
VariantOption = typer.Option("paper", help="Network: paper, dropout, batchnorm, batchnorm-dropout or wide.")
ClassesOption = typer.Option(None, help="Comma-separated classes to keep, e.g. anger,disgust,fear,happiness,sadness,surprise.")
SeedOption = typer.Option(0, help="Random seed: same seed, same data -> same folds and weights.")
AugmentOption = typer.Option(True, help="Random flips and small rotations of training images.")
RotationOption = typer.Option(10.0, min=0.0, help="Largest augmentation rotation, in degrees.")
ShiftOption = typer.Option(0.0, min=0.0, help="Largest augmentation shift, in pixels (the paper: none).")
NormalisationOption = typer.Option("global", help="z-score statistics: global (one mean/std) or pixel.")
FlipOption = typer.Option(False, "--flip-tta", help="Average each face's prediction with its mirror image.")
RayOption = typer.Option(None, "--ray", metavar="ADDRESS", help="Train the folds on the Ray cluster at HOST:PORT, "
                         "or auto (the one this machine belongs to); needs pip install 'fercli[ray]'.")


def train_config(epochs, batch_size, lr, momentum, optimizer, variant, classes, seed, augment,
                 max_rotation, max_shift, normalisation, flip_tta):
    from fercli.config import MODEL_VARIANTS, NORMALISATIONS, OPTIMIZERS, TrainConfig
    from fercli.errors import FerError

    for name, value, allowed in (("--variant", variant, MODEL_VARIANTS), ("--optimizer", optimizer, OPTIMIZERS),
                                 ("--normalisation", normalisation, NORMALISATIONS)):
        if value not in allowed:
            raise FerError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    chosen = tuple(name.strip() for name in (classes or "").split(",") if name.strip())
    return TrainConfig(variant=variant, epochs=epochs, batch_size=batch_size, learning_rate=lr,
                       momentum=momentum, optimizer=optimizer, augment=augment, max_rotation=max_rotation, max_shift=max_shift,
                       normalisation=normalisation, seed=seed, classes=chosen, test_time_flip=flip_tta)


def epoch_reporter(bar, task, folds: int, epochs: int | None = None):
    """Turn training events into the progress display. With epochs (per fold), a finished
    fold completes its share of the bar even where no epoch events come (folds on Ray)."""
    finished: list[float] = []
    seen: dict[int, int] = {}

    def update(event: dict) -> None:
        if event["kind"] == "epoch":
            if epochs and seen.get(event["fold"]) == -1:
                return  # a late event of a fold already counted in full
            seen[event["fold"]] = seen.get(event["fold"], 0) + 1
            bar.advance(task)
            where = f"fold {event['fold'] + 1}/{folds} " if folds > 1 else ""
            done = f", finished folds {sum(finished) / len(finished):.1%}" if finished else ""
            bar.update(task, description=f"{where}epoch {event['epoch']}/{event['epochs']} "
                       f"loss {event['loss']:.3f} train acc {event['accuracy']:.1%}{done}")
        elif event["kind"] == "fold":
            finished.append(event["accuracy"])
            if epochs:
                bar.advance(task, max(0, epochs - seen.get(event["fold"], 0)))
                seen[event["fold"]] = -1

    return update


@app.command()
def train(
    dataset: str | None = DatasetArgument,
    output: Path | None = typer.Option(None, help="Model file to write (default: FER_HOME/models/<dataset>-<time>.npz)."),
    epochs: int = EpochsOption, batch_size: int = BatchOption, lr: float = LearningRateOption,
    momentum: float = MomentumOption, optimizer: str = OptimizerOption, variant: str = VariantOption,
    classes: str | None = ClassesOption, seed: int = SeedOption, augment: bool = AugmentOption,
    max_rotation: float = RotationOption, max_shift: float = ShiftOption, normalisation: str = NormalisationOption, flip_tta: bool = FlipOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Train the network on every image of a preprocessed dataset and save a model for predict."""
    with user_errors():
        from fercli.store import check_writable, models_dir, resolve_dataset, timestamp
        from fercli.training import train_model

        config = train_config(epochs, batch_size, lr, momentum, optimizer, variant, classes, seed, augment,
                              max_rotation, max_shift, normalisation, flip_tta)
        prepared = resolve_dataset(dataset)
        made_up = output is None  # then another run may make up the same name: never replace
        output = output or models_dir() / f"{prepared.name}-{timestamp()}.npz"
        check_writable(output.parent)
        bar, _ = progress_bar("training")
        task = bar.tasks[0].id
        bar.update(task, total=config.epochs)
        with bar if not as_json else contextlib.nullcontext():
            result = train_model(prepared, config, output, progress=None if as_json else epoch_reporter(bar, task, 1),
                                 keep_existing=made_up)
    summary = {"model": str(result.path), "dataset": prepared.name, "classes": result.classes,
               "images": result.images, "epochs": result.epochs, "final_loss": result.loss,
               "final_train_accuracy": result.accuracy, "seconds": round(result.seconds, 1),
               "runtime_difference": result.runtime_difference}
    if as_json:
        emit_json(summary)
        return
    out.print(f"trained on {result.images} images of {prepared.name} ({shown(', '.join(result.classes))}), "
              f"{result.epochs} epochs in {result.seconds:.1f} s; final training loss {result.loss:.3f}, "
              f"training accuracy {result.accuracy:.1%} (not a test score: use fer crossval)")
    out.print(f"model saved to {shown(result.path)}")


@app.command()
def crossval(
    dataset: str | None = DatasetArgument,
    folds: int = typer.Option(10, min=2, help="Number of folds."),
    group: str = typer.Option("random", help="random (stratified folds) or subject (no person in both train and test)."),
    epochs: int = EpochsOption, batch_size: int = BatchOption, lr: float = LearningRateOption,
    momentum: float = MomentumOption, optimizer: str = OptimizerOption, variant: str = VariantOption,
    classes: str | None = ClassesOption, seed: int = SeedOption, augment: bool = AugmentOption,
    max_rotation: float = RotationOption, max_shift: float = ShiftOption, normalisation: str = NormalisationOption, flip_tta: bool = FlipOption,
    workers: int | None = typer.Option(None, min=1, help="Folds trained at once (default: one per core)."),
    ray: str | None = RayOption,
    output: Path | None = typer.Option(None, help="Report folder (default: FER_HOME/runs/crossval-<dataset>-<time>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    """K-fold cross-validation on a preprocessed dataset, with an honest report."""
    with user_errors():
        from fercli.engines import make_engine
        from fercli.store import check_writable, new_dir, resolve_dataset, runs_dir, timestamp
        from fercli.training import cross_validate, save_crossval

        config = train_config(epochs, batch_size, lr, momentum, optimizer, variant, classes, seed, augment,
                              max_rotation, max_shift, normalisation, flip_tta)
        prepared = resolve_dataset(dataset)
        with make_engine(ray, workers) as engine:
            output = check_writable(output) if output else new_dir(runs_dir() / f"crossval-{prepared.name}-{timestamp()}")
            bar, _ = progress_bar("starting")
            task = bar.tasks[0].id
            bar.update(task, total=folds * config.epochs)
            with bar if not as_json else contextlib.nullcontext():
                report = cross_validate(prepared, config, folds, group, workers,
                                        progress=None if as_json else epoch_reporter(bar, task, folds, config.epochs),
                                        engine=engine)
        files = save_crossval(report, output)
    if as_json:
        emit_json({**report.to_json(), "files": {name: str(path) for name, path in files.items()}})
    else:
        render_crossval(report, files)
    if report.interrupted:
        raise fail(f"interrupted after {len(report.folds)} of {report.planned_folds} folds; "
                   f"the finished folds are in {output}", 130)


def render_crossval(report, files: dict) -> None:
    protocol = report.protocol
    kind = "subject folds (no person in both train and test)" if protocol["group"] == "subject" else "random stratified folds"
    training = protocol["training"]
    out.print(f"[bold]protocol[/bold]: {protocol['folds']}-fold {kind}, seed {training['seed']}; "
              f"{len(report.labels)} classes ({shown(', '.join(report.labels))}); {training['epochs']} epochs, "
              f"batch {training['batch_size']}, {training['optimizer']} lr {training['learning_rate']}, "
              f"variant {training['variant']}, augmentation {'on' if training['augment'] else 'off'}; "
              f"{report.dataset['images']} images of {report.dataset['name']}")
    folds = Table(title="accuracy per fold")
    folds.add_column("fold", justify="right")
    folds.add_column("train", justify="right")
    folds.add_column("test", justify="right")
    folds.add_column("accuracy", justify="right")
    if protocol["group"] == "subject":
        folds.add_column("test subjects")
    for fold in report.folds:
        row = [str(fold.fold), str(fold.train_size), str(fold.test_size), f"{fold.accuracy:.1%}"]
        if protocol["group"] == "subject":
            row.append(shown(", ".join(fold.test_subjects)))
        folds.add_row(*row)
    out.print(folds)
    out.print(f"[bold]mean accuracy {report.mean_accuracy:.2%} +/- {report.std_accuracy:.2%}[/bold] "
              f"over {len(report.folds)} folds (pooled {report.pooled_accuracy:.2%}), macro-F1 {report.macro_f1:.3f}")
    classes = Table(title="per class (summed over folds)")
    for column in ("class", "precision", "recall", "F1", "images"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for label, values in report.per_class.items():
        classes.add_row(shown(label), f"{values['precision']:.3f}", f"{values['recall']:.3f}", f"{values['f1']:.3f}", str(values["support"]))
    out.print(classes)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for label in report.labels:
        matrix.add_column(shown(label[:5]), justify="right")
    for label, row in zip(report.labels, report.confusion):
        matrix.add_row(shown(label), *(str(int(value)) for value in row))
    out.print(matrix)
    for warning in report.warnings:
        out.print(f"[yellow]note:[/yellow] {warning}")
    for name, path in files.items():
        out.print(f"{name}: {shown(path)}")


@app.command()
def sweep(
    dataset: str | None = DatasetArgument,
    grid: Path = typer.Option(..., "--grid", help="The grid file (TOML): [base], [vary], seeds, folds, group."),
    settings: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                              help="Override the grid: a [base] setting (epochs=20), seeds=[0], vary.variant=[...]."),
    ray: str | None = RayOption,
    workers: int | None = typer.Option(None, min=1, help="Folds trained at once on this machine (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print sweep.json instead of the table."),
) -> None:
    """Cross-validate every recipe of a grid with several seeds on identical folds and rank them.

    Each finished fold is stored at once: the same command again resumes where it stopped.
    """
    with user_errors():
        from fercli.engines import make_engine
        from fercli.store import resolve_dataset
        from fercli.sweep import read_grid, run_sweep

        plan = read_grid(grid, settings or [])
        prepared = resolve_dataset(dataset)
        bar, update = progress_bar("sweep")

        def progress(event: dict) -> None:
            if event["kind"] in ("start", "fold"):
                update(event["done"], event["total"])

        with make_engine(ray, workers) as engine, bar if not as_json else contextlib.nullcontext():
            report = run_sweep(prepared, plan, engine, progress=None if as_json else progress)
    if report.interrupted:
        done = report.stored_folds + report.trained_folds
        raise fail(f"interrupted after {done} of {report.planned_folds} folds, stored in {report.folder}: "
                   "run the same command again to go on", 130)
    if as_json:
        emit_json({**report.to_json(), "files": {name: str(path) for name, path in report.files.items()}})
    else:
        render_sweep(report)


def render_sweep(report) -> None:
    grid = report.grid
    out.print(f"[bold]sweep[/bold]: {len(report.recipes)} recipes x {len(grid.seeds)} seeds "
              f"({', '.join(map(str, grid.seeds))}) x {grid.folds} {grid.group} folds on {report.dataset['images']} "
              f"images of {shown(report.dataset['name'])}; {report.trained_folds} folds trained now, "
              f"{report.stored_folds} found stored; {report.seconds:.1f} s on {report.engine['name']}")
    table = Table(title="recipes, best first (accuracy: mean over seeds of the mean fold accuracy)")
    for column in ("#", "recipe", "accuracy", "spread", "F1", "vs base", "95% interval", "time"):
        table.add_column(column, justify="left" if column == "recipe" else "right", no_wrap=column != "recipe",
                         min_width=16 if column == "recipe" else None, overflow="fold" if column == "recipe" else "ellipsis")
    for item in report.recipes:
        d_low, d_high = item.difference_interval
        table.add_row(str(item.rank), shown(item.name), f"{item.accuracy:.2%}", f"{item.spread:.2%}",
                      f"{item.macro_f1:.3f}", "base" if item.is_base else f"{item.difference:+.2%}",
                      "" if item.is_base else f"{d_low:+.1%} .. {d_high:+.1%}", f"{item.seconds:.0f} s")
    out.print(table)
    out.print("spread: standard deviation of the per-seed means; vs base: mean paired difference on the same "
              "(seed, fold) pairs, 95% interval from the corrected resampled t-test for repeated k-fold CV "
              "(Nadeau & Bengio 2003); time: training time of the recipe's folds")
    for name, path in report.files.items():
        out.print(f"{name}: {shown(path)}")


@app.command()
def predict(
    paths: list[Path] = typer.Argument(..., help="Image files and folders."),
    model: Path | None = typer.Option(None, help="Model file (default: the most recently trained)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: a list of {path, faces: [{box, label, probabilities}]}."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per face."),
    annotate_dir: Path | None = typer.Option(None, "--annotate", help="Write copies of the images with boxes and labels here."),
    workers: int | None = typer.Option(None, min=1, help="Processes for many images (default: one per core)."),
) -> None:
    """Label the expression of every face in photos."""
    if as_json and as_csv:
        raise fail("choose one of --json and --csv")
    with user_errors():
        from fercli.predict import annotate, predict_paths, resolve_model
        from fercli.store import check_writable

        loaded = resolve_model(model)
        if annotate_dir:
            check_writable(annotate_dir)
        bar, update = progress_bar("predicting")
        quiet = as_json or as_csv or len(paths) == 1 and not Path(paths[0]).is_dir()
        with bar if not quiet else contextlib.nullcontext():
            report = predict_paths(paths, loaded, workers, progress=None if quiet else update)
        written = annotate(report, annotate_dir) if annotate_dir else []
    if as_json:
        emit_json([image.to_json() for image in report.images])
    elif as_csv:
        render_predict_csv(report)
    elif report.images:
        render_predict(report)
    for problem in report.problems:
        err.print(f"[yellow]skipped[/yellow] {shown(problem.path)}: {problem.reason}")
    for image in report.images:
        if image.error:
            err.print(f"[yellow]skipped[/yellow] {shown(image.path)}: {shown(image.error)}")
    if annotate_dir:
        err.print(f"{len(written)} annotated images in {shown(annotate_dir)}")
    if report.processed == 0:
        raise fail("no image could be processed")


def render_predict(report) -> None:
    table = Table(title=f"model {shown(Path(report.model).name)}")
    for column in ("image", "face", "box (x, y, w, h)", "label", "p"):
        table.add_column(column)
    for image in report.images:
        if image.error:
            continue
        if not image.faces:
            table.add_row(shown(image.path), "-", "no face found", "", "")
        for number, face in enumerate(image.faces, start=1):
            table.add_row(shown(image.path), str(number), ", ".join(map(str, face.box)), shown(face.label),
                          f"{face.probabilities[face.label]:.2f}")
    out.print(table)


def render_predict_csv(report) -> None:
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "face", "x", "y", "width", "height", "label", *(f"p_{label}" for label in report.classes)])
    for image in report.images:
        for number, face in enumerate(image.faces, start=1):
            writer.writerow([printable(image.path), number, *face.box, printable(face.label),
                             *(f"{face.probabilities[label]:.6f}" for label in report.classes)])


def main() -> None:
    app()
