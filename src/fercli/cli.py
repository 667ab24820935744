"""The `fer` command: parses options, calls one library function, renders the result.

Heavy libraries (OpenCV, dlib, TensorFlow) are imported inside the commands, so that
`fer --help` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

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


def shown(path: object) -> str:
    """A path as one printable line: control characters and undecodable bytes escaped."""
    text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
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
    layout: Optional[str] = typer.Option(None, help="Force a layout: jaffe, ck+ or folders (default: detected)."),
    ck_frames: int = typer.Option(3, help="CK+ tree: last frames of each labelled sequence to take."),
    ck_neutral: bool = typer.Option(False, help="CK+ tree: also take each labelled sequence's first frame as neutral."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes to align with (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Align every face of a dataset and cache the 32x32 crops for train and crossval."""
    with user_errors():
        from fercli.config import ScanOptions
        from fercli.preprocess import preprocess_dataset

        options = ScanOptions(layout=layout, ck_frames=ck_frames, ck_neutral_first=ck_neutral)
        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = preprocess_dataset(dataset_dir, options, workers=workers, progress=None if as_json else update)
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
        classes.add_row(label, str(count))
    out.print(classes)
    if report.subjects:
        listing = ", ".join(f"{subject} {count}" for subject, count in report.subjects.items())
        out.print(f"[bold]aligned per subject[/bold] ({len(report.subjects)}): {listing}")
    for note in report.notes:
        out.print(f"note: {note}")
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


@app.command()
def train() -> None:
    """Train the network on a preprocessed dataset and save a model for predict."""
    raise fail("fer train is not yet available")


@app.command()
def crossval() -> None:
    """K-fold cross-validation on a preprocessed dataset, with an honest report."""
    raise fail("fer crossval is not yet available")


@app.command()
def predict() -> None:
    """Label the expression of every face in photos."""
    raise fail("fer predict is not yet available")


def main() -> None:
    app()
