"""The Typer app `fer`: its consoles, one-line errors (and JSON errors), the progress bar
and the version option. Commands are registered in fercli.cli."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from enum import Enum

import typer
import typer.core
import typer.rich_utils
from rich.console import Console

from fercli import __version__
from fercli.core.config import ADAPT_PIXEL_MAPS, EQUALIZATIONS, FRAMINGS, LAYOUTS


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An Enum of an option's fixed values: typer shows them in --help and refuses others,
    naming them."""
    return Enum(name, {value: value for value in values}, type=str)


# The training settings' choices (--variant, --recipe, ...) are made in cli/options.py from
# the settings themselves.
Layout = choices("Layout", LAYOUTS)
Group = choices("Group", ("random", "subject", "dataset"))
Equalization = choices("Equalization", EQUALIZATIONS)
Framing = choices("Framing", FRAMINGS)
AdaptPixels = choices("AdaptPixels", ADAPT_PIXEL_MAPS)


def adapt_mode(adapt: bool, pixels: Enum | None) -> bool | str:
    """fer predict's and fer evaluate's adapt argument from --adapt and --adapt-pixels;
    FerError for --adapt-pixels without --adapt."""
    from fercli.core.errors import FerError

    if pixels is not None and not adapt:
        raise FerError("--adapt-pixels goes with --adapt")
    return pixels.value if adapt and pixels is not None else adapt


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
# emoji=False: a user's text such as "a:b:0" must not become "a🅱0" (rich's emoji codes).
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


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
    from fercli.core.errors import FerError, NoModelError

    try:
        yield
    except NoModelError:
        # Every command that looks for the newest model has --model.
        raise fail(
            "no trained model: run `fer train` first, or pass --model", as_json=as_json
        ) from None
    except FerError as error:
        raise fail(str(error), as_json=as_json) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130, as_json=as_json) from None


# click's UsageError, wherever this typer keeps click (typer 0.28 bundles its own copy).
USAGE_ERROR = sys.modules[typer.BadParameter.__module__].UsageError


class JsonErrorsCommand(typer.core.TyperCommand):
    """A command whose option errors, when --json was asked for, also print {"error": ...}
    on stdout: every outcome of a --json run is one JSON document. Its options' choices are
    named in their help text, which wraps between words, rather than in the type column, which
    at 80 columns cuts `batchnorm-dropout` mid-word."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            named = getattr(param.type, "choices", None)
            if not named or param.param_type_name != "option" or param.metavar:
                continue
            param.metavar = "NAME"
            words = set(re.findall(r"[\w+-]+", param.help or ""))
            if not {str(choice) for choice in named} <= words:
                listed = ", ".join(map(str, named))
                param.help = f"{param.help or ''} One of: {listed}.".lstrip()

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
