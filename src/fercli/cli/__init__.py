"""The `fer` command: parses options, calls one library function, renders the result.

app.py holds the Typer app, its consoles and error handling; options.py the options that
several commands share; *_commands.py the commands (parsing and one library call each);
render_*.py the tables and lines they print. Heavy libraries (OpenCV, dlib, TensorFlow) are
imported inside the commands, so that `fer --help` answers at once.
"""

from __future__ import annotations

import inspect

from rich.markup import escape

from fercli.cli.app import JsonErrorsCommand, app, main
from fercli.cli.data_commands import list_entries, preprocess, remove
from fercli.cli.infer_commands import live, predict
from fercli.cli.learn_commands import crossval, evaluate, sweep, train

# Registered here, in the order `fer --help` lists them.
for _command, _name in (
    (preprocess, None),
    (train, None),
    (crossval, None),
    (evaluate, None),
    (sweep, None),
    (predict, None),
    (live, None),
    (list_entries, "list"),
    (remove, None),
):
    _help = escape(inspect.getdoc(_command) or "")
    # `fer --help` lists each command with the first paragraph of its help, which rich would
    # break where the docstring's source lines break: one line, wrapped to the terminal.
    _short = " ".join(_help.split("\n\n")[0].split())
    app.command(_name, cls=JsonErrorsCommand, help=_help, short_help=_short)(_command)


def _escape_option_help() -> None:
    """Help texts as written: rich markup (the app's help is laid out by rich) would take
    `[ray]` in `pip install 'fercli[ray]'` or `[base]` in a grid's help for a style and drop
    it. Options shared by several commands are one object: escaped once."""
    escaped: set[int] = set()
    for command in app.registered_commands:
        for parameter in inspect.signature(command.callback).parameters.values():
            info = parameter.default
            if id(info) in escaped or not isinstance(getattr(info, "help", None), str):
                continue
            info.help = escape(info.help)
            escaped.add(id(info))


_escape_option_help()

__all__ = ["app", "main"]
