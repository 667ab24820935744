"""fer train, crossval, evaluate and sweep: parse, call the library (fercli.api), hand the
result to render_learn."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
import typer.core
import typer.rich_utils

from fercli.cli.app import (
    AdaptPixels,
    Group,
    adapt_mode,
    emit_json,
    fail,
    progress_bar,
    user_errors,
)
from fercli.cli.options import (
    TRAINING,
    AdaptPixelsOption,
    DatasetArgument,
    FaceCropsOption,
    ModelOption,
    RayOption,
    epoch_reporter,
    training_settings,
    with_training_options,
)
from fercli.cli.render_learn import (
    render_crossval_run,
    render_evaluation,
    render_sweep,
    render_training,
)
from fercli.cli.render_media import plural
from fercli.core.interrupts import Interrupts, ignore_at_exit


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
        None,
        help="Train only on this predefined split of the dataset (default: FER2013's Training, "
        "its test splits left out; all: every image).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Train the network on every image of one preprocessed dataset or several combined, and save a
    model for predict."""
    # The library holds a Ctrl-C back once the networks are trained (learn.training): within
    # this Interrupts it stays held while the result is printed, and is said after it.
    with user_errors(as_json), Interrupts() as interrupts:
        from fercli.api import train as train_network

        recipe, settings = training_settings(training)
        bar, _ = progress_bar("training")
        task = bar.tasks[0].id
        reporter = (
            None if as_json else epoch_reporter(bar, task, ensemble, header="fer train: {recipe}")
        )
        reached: dict = {}  # the plan (the start event) and the last epoch event
        try:
            with bar if not as_json else contextlib.nullcontext():
                result = train_network(
                    datasets,
                    output,
                    recipe,
                    shared_classes=training["shared_classes"],
                    split=split,
                    ensemble=ensemble,
                    progress=_recording(reached, reporter),
                    **settings,
                )
        except KeyboardInterrupt:
            message = interrupted_training(reached, ensemble)
            raise fail(message, 130, as_json=as_json) from None
        ignore_at_exit()  # the model is saved: Python's exit must not make it look failed
        render_training(result, ensemble, as_json)
        if interrupts.received:
            # As crossval after its last fold: the interrupt is said, with what was kept.
            raise fail(
                f"interrupted after training had finished; the model was saved to {result.path}",
                130,
            )


def _recording(reached: dict, reporter):
    """A training's progress callback that keeps in reached the plan ("epochs", from the start
    event, then as --time-limit cuts it) and the last epoch event ("epoch", "network") for a
    Ctrl-C's message
    (interrupted_training), and hands every event on to reporter (if any)."""

    def progress(event) -> None:
        if event.kind == "start":
            reached.update(epochs=event.epochs)
        if event.kind == "epoch":
            reached.update(epoch=event.epoch, network=event.fold, epochs=event.epochs)
        if reporter:
            reporter(event)

    return progress


def sweep_reporter(bar, update):
    """A sweep's progress: finished folds on the bar, and the epoch each running fold is in
    (a fold of 100 epochs takes minutes: the line must not sit still)."""
    running: dict[tuple, str] = {}  # (recipe and seed, fold) -> "fold 3 epoch 12/100"

    def progress(event) -> None:
        if event.kind in ("start", "fold"):
            update(event)
            if event.kind == "fold":
                running.pop((tuple(event.key or ()), event.fold), None)
        elif event.kind == "epoch":
            recipe, seed = event.key
            running[(tuple(event.key), event.fold)] = (
                f"recipe {recipe + 1} seed {seed} fold {event.fold + 1} "
                f"epoch {event.epoch}/{event.epochs}"
            )
        else:
            return
        bar.update(bar.tasks[0].id, description="; ".join(list(running.values())[-2:]) or "sweep")

    return progress


def interrupted_training(reached: dict, networks: int) -> str:
    """What a Ctrl-C during fer train stopped: the epoch it was in, and that nothing was
    saved (the model file is written once, at the end; a Ctrl-C once the networks are
    trained is held back until the model is saved)."""
    if "epoch" not in reached:
        return "interrupted before the first epoch finished; nothing saved"
    done, epochs = reached["epoch"], reached["epochs"]
    network = f" of network {reached['network'] + 1} of {networks}" if networks > 1 else ""
    where = (
        f"after epoch {done} of {epochs}{network}"
        if done >= epochs
        else f"in epoch {done + 1} of {epochs}{network} ({plural(done, 'epoch')} finished)"
    )
    return f"interrupted {where}; nothing saved"


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

        recipe, settings = training_settings(training)
        bar, _ = progress_bar("starting")
        reporter = epoch_reporter(
            bar,
            bar.tasks[0].id,
            header=f"fer crossval: {{folds}} folds ({group.value}), {{recipe}}",
        )
        with bar if not as_json else contextlib.nullcontext():
            report = cross_validate(
                datasets,
                folds,
                group.value,
                recipe,
                shared_classes=training["shared_classes"],
                workers=workers,
                ray=ray,
                output=output,
                save_model=not no_save_model,
                progress=None if as_json else reporter,
                **settings,
            )
    if report.interrupted and not report.folds:
        raise fail("interrupted before any fold finished; nothing saved", 130, as_json=as_json)
    failure, code = crossval_failure(report)
    render_crossval_run(report, failure, as_json)
    if failure:
        raise fail(failure, code)


def crossval_failure(report) -> tuple[str | None, int]:
    """The error line and exit code of a crossval that did not end well (None, 0 if it did):
    interrupted (130: what was saved), or diverged (1)."""
    files = report.files
    output = files["report"].parent
    model = f"the model is {files['model']}" if "model" in files else None
    if report.interrupted:
        return (
            f"interrupted after {len(report.folds)} of {report.planned_folds} folds; the finished "
            f"folds are in {output}; no model saved: {report.no_model}",
            130,
        )
    if report.interrupted_after_folds:
        return (
            f"interrupted after every fold had finished; the report is in {output}; "
            f"{model or f'no model saved: {report.no_model}'}",
            130,
        )
    if report.diverged_folds:
        return (
            f"training diverged in {len(report.diverged_folds)} of {len(report.folds)} folds "
            f"({', '.join(map(str, report.diverged_folds))}), so there is no result (try a smaller "
            f"--lr); the report is in {output}",
            1,
        )
    return None, 0


def evaluate(
    dataset: str = typer.Argument(
        ...,
        metavar="DATASET",
        help="A preprocessed dataset (its name or folder under "
        "FER_HOME) or an original dataset folder, then preprocessed with the model's settings.",
    ),
    model: Path | None = ModelOption,
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
    adapt: bool = typer.Option(
        False,
        "--adapt",
        help="Adapt the model to the dataset's own faces (unlabelled) before scoring: their "
        "per-pixel mean mapped onto the training crops', the normalisation and batch "
        "normalisation statistics re-estimated. For photos from another camera.",
    ),
    adapt_pixels: AdaptPixels | None = AdaptPixelsOption,
    face_crops: bool = FaceCropsOption,
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    """Score a trained model on another dataset: only the classes both have count."""
    with user_errors(as_json):
        from fercli.api import evaluate_model

        adapting = adapt_mode(adapt, adapt_pixels)

        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = evaluate_model(
                dataset,
                model,
                split,
                workers,
                output,
                progress=None if as_json else update,
                adapt=adapting,
                face_crops=face_crops,
            )
    files = report.files
    if as_json:
        emit_json({**report.to_json(), "files": {key: str(path) for key, path in files.items()}})
        return
    render_evaluation(report, split)


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
        progress = sweep_reporter(bar, update)

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
