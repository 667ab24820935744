"""The `fer` command: parses options, calls one library function, renders the result.

app.py holds the Typer app, its consoles and error handling; options.py the options that
several commands share; *_commands.py the commands (parsing and one library call each);
render_*.py the tables and lines they print. Heavy libraries (OpenCV, dlib, TensorFlow) are
imported inside the commands, so that `fer --help` answers at once.
"""

from __future__ import annotations

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
    app.command(_name, cls=JsonErrorsCommand)(_command)

__all__ = ["app", "main"]
