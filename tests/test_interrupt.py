"""Ctrl-C (a real SIGINT) at each moment of a cross-validation or a training keeps what has
finished.

While the folds train, Ctrl-C stops them and the finished folds' report is written (no
model: not every fold finished). Once every fold has finished, a Ctrl-C stops nothing that
matters: the report and the ensemble model are written; only where.png is left out when its
maps were being made (the report says so). `fer crossval` still exits 130 and says what was
saved; `fercli.crossval` returns normally, with report.interrupted_after_folds set.

Once fer train's networks are trained, a Ctrl-C is held back: the model is saved, and `fer
train` prints its result, then exits 130 saying the model was saved; `fercli.train` returns
it, with result.interrupted_after_training set. One that comes as the process exits is
ignored.

Each test runs fercli in a process of its own and sends SIGINT at a moment it sees: a
progress event printed by a script's callback (or sent by the callback itself, at the exact
moment), the progress display of `fer crossval` on a pseudo-terminal, or, for fer train, a
function of fercli's wrapped by the script to send it to its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

import fercli
from fercli.infer.model import load_model
from synthetic import make_dataset, save_synthetic

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's pty"),
]

WHERE_SKIPPED = "where.png was not drawn: interrupted (Ctrl-C)"

# fercli.crossval in a script: each "fold" and "where" event printed as it comes; with
# --self, the callback sends SIGINT to its own process as the last fold comes in. The result
# (or the KeyboardInterrupt that escaped) is printed as one JSON line.
SCRIPT = """
import json, os, signal, sys
import fercli

folds, workers, epochs = (int(value) for value in sys.argv[1:4])
self_interrupt = sys.argv[4] == "--self"
seen = []

def progress(event):
    if event.kind in ("fold", "where"):
        seen.append(event.kind)
        print(event.kind, flush=True)
    if self_interrupt and event.kind == "fold" and seen.count("fold") == folds:
        os.kill(os.getpid(), signal.SIGINT)

try:
    report = fercli.crossval(
        "shapes", folds=folds, workers=workers, epochs=epochs, copies=0, progress=progress
    )
except KeyboardInterrupt:
    print(json.dumps({"escaped": "KeyboardInterrupt"}), flush=True)
    raise SystemExit(3)
print(json.dumps({
    "interrupted": report.interrupted,
    "interrupted_after_folds": getattr(report, "interrupted_after_folds", None),
    "folds": len(report.folds),
    "files": {name: str(path) for name, path in report.files.items()},
    "no_model": getattr(report, "no_model", None),
    "warnings": report.warnings,
}), flush=True)
"""


@pytest.fixture
def shapes(fer_home) -> None:
    """280 synthetic crops of 7 classes: where.png's maps of them take seconds."""
    save_synthetic(make_dataset(), "shapes")


def interruptible(command: list[str], **options) -> subprocess.Popen:
    """A process that Ctrl-C reaches as it would a terminal's foreground command (SIGINT
    not inherited as ignored, whatever started pytest), running this fercli."""
    source = str(Path(fercli.__file__).resolve().parent.parent)
    return subprocess.Popen(
        command,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "PYTHONPATH": source},
        **options,
    )


def crossval_script(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "crossval.py"
    script.write_text(SCRIPT)
    return interruptible(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )


def interrupt_on(process: subprocess.Popen, line: str) -> list[str]:
    """Read process's stdout until it prints line, then send it SIGINT; the lines read."""
    lines = []
    for text in process.stdout:
        lines.append(text.strip())
        if text.strip() == line:
            process.send_signal(signal.SIGINT)
            return lines
    pytest.fail(f"the script ended without printing {line!r}: {lines} {process.stderr.read()}")


def result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def assert_report_and_model_saved(outcome: dict, folds: int) -> None:
    """Everything of a finished cross-validation written, but where.png, which was left out."""
    assert outcome["interrupted"] is False and outcome["interrupted_after_folds"] is True
    assert outcome["folds"] == folds
    files = {name: Path(path) for name, path in outcome["files"].items()}
    assert {"report", "confusion", "predictions", "model"} <= set(files) and "where" not in files
    assert WHERE_SKIPPED in outcome["warnings"]
    saved = json.loads(files["report"].read_text())
    assert saved["completed_folds"] == folds and saved["interrupted"] is False
    assert saved["mean_accuracy"] is not None and WHERE_SKIPPED in saved["warnings"]
    assert not (files["report"].parent / "where.png").exists()
    assert len(load_model(files["model"]).networks) == folds


def test_api_ctrl_c_as_the_last_fold_comes_in_keeps_report_and_model(shapes, tmp_path):
    # The callback of the last fold sends the SIGINT: it is handled right there, before the
    # report is assembled (today's main: interrupted, and no model).
    process = crossval_script(tmp_path, "2", "2", "1", "--self")
    outcome = result(process)
    assert process.returncode == 0, outcome
    assert_report_and_model_saved(outcome, folds=2)


def test_api_ctrl_c_while_where_png_is_made_keeps_report_and_model(shapes, tmp_path):
    process = crossval_script(tmp_path, "2", "2", "1", "--no-self")
    assert interrupt_on(process, "where") == ["fold", "fold", "where"]
    outcome = result(process)
    assert process.returncode == 0, outcome
    assert_report_and_model_saved(outcome, folds=2)


def test_api_ctrl_c_during_training_keeps_the_finished_folds(shapes, tmp_path):
    # One worker: the folds train one after the other; SIGINT once the first has finished.
    process = crossval_script(tmp_path, "3", "1", "15", "--no-self")
    interrupt_on(process, "fold")
    outcome = result(process)
    assert process.returncode == 0, outcome
    assert outcome["interrupted"] is True and outcome["interrupted_after_folds"] is False
    finished = outcome["folds"]
    assert 1 <= finished < 3
    files = {name: Path(path) for name, path in outcome["files"].items()}
    assert set(files) == {"report", "confusion", "predictions"}  # and no model
    assert outcome["no_model"] == f"only {finished} of 3 folds finished"
    saved = json.loads(files["report"].read_text())
    assert saved["interrupted"] is True and saved["completed_folds"] == finished
    assert not (Path(os.environ["FER_HOME"]) / "models").exists()


# --- fer crossval on a terminal ----------------------------------------------------------

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@contextlib.contextmanager
def fer_on_a_terminal(*args: str):
    """`python -m fercli ARGS` with stderr on a pseudo-terminal, where the progress display
    shows as on a user's terminal, and stdout on a pipe. Yields the process and a function
    that returns what the terminal has shown so far, escape sequences removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = interruptible(
        [sys.executable, "-m", "fercli", *args], stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def screen() -> str:
        return ESCAPES.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")

    try:
        yield process, screen
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        reader.join(timeout=10)
        os.close(master)


def interrupt_when_shown(process: subprocess.Popen, screen, text: str) -> None:
    deadline = time.monotonic() + 300
    while text not in screen():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{text!r} never shown: {screen()[-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)


def error_line(screen) -> str:
    return next(line for line in reversed(screen().splitlines()) if line.startswith("error:"))


def test_cli_ctrl_c_while_where_png_is_made_saves_report_and_model_and_says_so(shapes):
    with fer_on_a_terminal("crossval", "--folds", "2", "--epochs", "1", "--copies", "0") as (
        process,
        screen,
    ):
        interrupt_when_shown(process, screen, "where.png: explaining test faces")
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 130
        line = error_line(screen)
    found = re.fullmatch(
        r"error: interrupted after every fold had finished; the report is in (\S+); "
        r"the model is (\S+)",
        line,
    )
    assert found, line
    report, model = Path(found[1]) / "report.json", Path(found[2])
    saved = json.loads(report.read_text())
    assert saved["completed_folds"] == 2 and saved["interrupted"] is False
    assert WHERE_SKIPPED in saved["warnings"] and not (report.parent / "where.png").exists()
    assert len(load_model(model).networks) == 2
    # The report as a finished run's, the note and the model among its files.
    assert "mean accuracy" in stdout and f"note: {WHERE_SKIPPED}" in stdout
    assert f"model: {model}" in stdout
    assert "Traceback" not in screen()


def test_cli_ctrl_c_during_training_saves_the_finished_folds_and_says_so(shapes, fer_home):
    with fer_on_a_terminal(
        "crossval", "--folds", "3", "--workers", "1", "--epochs", "15", "--copies", "0"
    ) as (process, screen):
        interrupt_when_shown(process, screen, "fold 2/3 epoch")  # fold 1 has finished
        process.communicate(timeout=300)
        assert process.returncode == 130
        line = error_line(screen)
    found = re.fullmatch(
        r"error: interrupted after (\d) of 3 folds; the finished folds are in (\S+); "
        r"no model saved: only (\d) of 3 folds finished",
        line,
    )
    assert found and found[1] == found[3] and found[1] in "12", line
    saved = json.loads((Path(found[2]) / "report.json").read_text())
    assert saved["interrupted"] is True and saved["completed_folds"] == int(found[1])
    assert not (fer_home / "models").exists()


# --- fer train and fercli.train ----------------------------------------------------------

# fer train (or fercli.train) in a script that sends SIGINT to its own process at one moment
# (argv: moment, "cli" or "api", the model file, then more options of fer train): a function
# the training calls there wrapped. fercli.train's result (or the KeyboardInterrupt that
# escaped) is printed as one JSON line.
TRAIN_SCRIPT = """
import atexit, json, os, signal, sys

def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)

moment, call, output, options = *sys.argv[1:4], sys.argv[4:]
if moment == "exiting":
    atexit.register(ctrl_c)  # registered first, run last: as late as Python code runs at exit

import fercli
from fercli.cli import learn_commands
from fercli.core import store
from fercli.learn import training

def wrap(module, name, first):
    original = getattr(module, name)
    def wrapped(*args, **kwargs):
        if first:
            ctrl_c()
        value = original(*args, **kwargs)
        if not first:
            ctrl_c()
        return value
    setattr(module, name, wrapped)

if moment == "epoch":  # the last epoch has ended; its network is not exported yet
    wrap(training, "fit", first=False)
elif moment == "checking":  # the model file written whole under a temporary name, then checked
    make_check = training.export_check
    training.export_check = lambda *args: lambda path: (ctrl_c(), make_check(*args)(path))[1]
elif moment == "saved":  # the model file has its name
    wrap(training, "_save_model", first=False)
elif moment == "noting":  # fercli.train says whether the model is the default now
    wrap(store, "default_model_change", first=False)
elif moment == "printing":  # fer train prints its result
    wrap(learn_commands, "render_training", first=True)

if call == "api":
    try:
        result = fercli.train("tiny", output, epochs=1, copies=0)
    except KeyboardInterrupt:
        print(json.dumps({"escaped": "KeyboardInterrupt"}), flush=True)
        raise SystemExit(3)
    print(json.dumps({
        "path": str(result.path),
        "interrupted_after_training": result.interrupted_after_training,
    }), flush=True)
else:
    from fercli.cli import main
    sys.argv = ["fer", "train", "tiny", "--epochs", "1", "--copies", "0", "--output", output]
    sys.argv += options
    main()
"""


@pytest.fixture
def tiny(fer_home) -> None:
    """28 synthetic crops of 7 classes: one epoch on them takes a second."""
    save_synthetic(make_dataset(subjects=2, per_subject=2), "tiny")


def train_script(
    tmp_path: Path, moment: str, call: str, *options: str
) -> tuple[subprocess.CompletedProcess, Path]:
    """Run TRAIN_SCRIPT to its end: what it did, and the model file it was given."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    model = tmp_path / "out" / "model.npz"
    process = interruptible(
        [sys.executable, str(script), moment, call, str(model), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), model


def assert_saved_whole(model: Path) -> None:
    """The model file loads, and no temporary file of its write was left beside it."""
    assert load_model(model).classes
    assert [path.name for path in model.parent.iterdir()] == [model.name]


@pytest.mark.parametrize("moment", ["checking", "saved", "noting", "printing"])
def test_cli_ctrl_c_once_trained_saves_the_model_and_says_so(tiny, tmp_path, moment):
    process, model = train_script(tmp_path, moment, "cli")
    stdout, stderr = process.stdout, process.stderr
    assert process.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    # The result printed whole, then the interrupt said, naming the file kept.
    assert stdout.strip().splitlines()[-1] == f"model saved to {model}", stdout
    assert stderr.strip().splitlines()[-1] == (
        f"error: interrupted after training had finished; the model was saved to {model}"
    )
    assert_saved_whole(model)


def test_cli_json_ctrl_c_once_trained_prints_the_result_and_says_so(tiny, tmp_path):
    process, model = train_script(tmp_path, "saved", "cli", "--json")
    assert process.returncode == 130, process.stderr
    assert json.loads(process.stdout)["model"] == str(model)  # one document, whole
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: interrupted after training had finished; the model was saved to {model}"
    )
    assert_saved_whole(model)


def test_cli_ctrl_c_as_fer_train_exits_changes_nothing(tiny, tmp_path):
    # Python sets SIGINT back to its default action before it unloads TensorFlow (most of a
    # second), where a Ctrl-C made a saved and printed success exit 130 with nothing said:
    # from the exit functions on, fer train ignores it.
    process, model = train_script(tmp_path, "exiting", "cli")
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    assert process.stdout.strip().splitlines()[-1] == f"model saved to {model}"
    assert_saved_whole(model)


def test_cli_ctrl_c_as_the_last_epoch_ends_saves_nothing(tiny, tmp_path):
    process, model = train_script(tmp_path, "epoch", "cli")
    assert process.returncode == 130
    assert process.stderr.strip().splitlines()[-1] == (
        "error: interrupted after epoch 1 of 1; nothing saved"
    )
    assert "model saved" not in process.stdout
    assert not model.parent.exists() or list(model.parent.iterdir()) == []


def test_api_ctrl_c_once_trained_returns_the_saved_model(tiny, tmp_path):
    process, model = train_script(tmp_path, "saved", "api")
    outcome = json.loads(process.stdout.strip().splitlines()[-1])
    assert process.returncode == 0, outcome
    assert outcome == {"path": str(model), "interrupted_after_training": True}
    assert_saved_whole(model)


def test_api_ctrl_c_as_the_last_epoch_ends_raises_and_saves_nothing(tiny, tmp_path):
    process, model = train_script(tmp_path, "epoch", "api")
    assert process.returncode == 3
    assert json.loads(process.stdout.strip().splitlines()[-1]) == {"escaped": "KeyboardInterrupt"}
    assert not model.parent.exists() or list(model.parent.iterdir()) == []
