"""fer list and fer remove: what FER_HOME holds, and taking one entry out of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import TrainConfig
from fercli.core.errors import DatasetError, StoreError
from fercli.core.store import models_dir, runs_dir
from fercli.data.inventory import list_home, remove_entry
from fercli.data.prepared import resolve_dataset
from fercli.learn.crossval import cross_validate
from fercli.learn.crossval_files import save_crossval
from fercli.learn.training import train_model
from synthetic import make_dataset, save_synthetic

CLASSES = ("anger", "happiness", "surprise")
runner = CliRunner()


def fer(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def filled_home(fer_home):
    """A FER_HOME with a dataset, a model trained on it and a cross-validation of the same
    recipe on the same data."""
    save_synthetic(make_dataset(labels=CLASSES, subjects=4), "shapes")
    dataset = resolve_dataset("shapes")
    config = TrainConfig(epochs=1)
    model = train_model(dataset, config, models_dir() / "shapes-1.npz").path
    report = cross_validate(dataset, config, folds=2, workers=1).report
    save_crossval(report, runs_dir() / "crossval-shapes-1")
    return {"model": model, "report": report}


@pytest.mark.slow
def test_list_and_remove(filled_home, fer_home, tmp_path):
    inventory = list_home()
    assert [entry.name for entry in inventory.datasets] == ["shapes"]
    assert inventory.datasets[0].details["images"] == 48
    assert list(inventory.datasets[0].details["classes"]) == list(CLASSES)
    [model] = inventory.models
    assert model.name == "shapes-1.npz" and model.details["dataset"] == "shapes"
    assert model.details["recipe"] == "paper, epochs 1"
    score = model.details["crossval"]
    assert (
        score["run"] == "crossval-shapes-1" and score["folds"] == 2 and score["group"] == "random"
    )
    assert score["mean_accuracy"] == filled_home["report"].mean_accuracy
    assert [entry.name for entry in inventory.runs] == ["crossval-shapes-1"]
    assert all(entry.size > 0 for entry in inventory.datasets + inventory.models + inventory.runs)

    result = fer("list")
    assert result.exit_code == 0, result.output
    for text in (
        "shapes-1.npz",
        "crossval-shapes-1",
        "paper, epochs 1",
        "random folds",
        "anger, happiness, surprise",
    ):
        assert text in result.stdout, text
    listed = json.loads(fer("list", "--json").stdout)
    assert [entry["name"] for entry in listed["models"]] == ["shapes-1.npz"]

    # Nothing is removed when one of the names is not an entry.
    outside = tmp_path / "mine.npz"
    outside.write_bytes(b"the user's own file")
    for name in (
        outside,
        fer_home,
        fer_home / "models",
        "../mine.npz",
        "no-such-thing",
        fer_home / "crops",
    ):
        result = fer("remove", "shapes-1", name)
        assert result.exit_code == 1 and result.stderr.startswith("error: "), name
        assert filled_home["model"].exists() and outside.exists()

    size = filled_home["model"].stat().st_size
    result = fer("remove", "shapes-1")  # a model by its name without .npz
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"removed model {filled_home['model']} ({size / 1e3:.1f} kB)"
    assert not filled_home["model"].exists()
    result = fer("remove", runs_dir() / "crossval-shapes-1", "shapes", "--json")
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)
    assert [entry["kind"] for entry in removed["removed"]] == ["run", "dataset"]
    assert removed["freed"] == sum(entry["size"] for entry in removed["removed"]) > 0
    assert list_home().datasets == list_home().models == list_home().runs == []
    assert "no datasets, models or runs" in fer("list").stdout


def test_remove_refuses_what_is_not_an_entry(fer_home, tmp_path):
    save_synthetic(make_dataset(labels=CLASSES, subjects=2), "shapes")
    with pytest.raises(StoreError, match="no dataset, model or run of that name"):
        remove_entry("shape")
    with pytest.raises(StoreError, match="not a dataset, model or run in"):
        remove_entry(str(tmp_path))
    assert remove_entry("shapes").kind == "dataset"
    assert not (fer_home / "datasets" / "shapes").exists()


def test_an_unreadable_model_is_listed_so_that_it_can_be_removed(fer_home):
    models_dir().mkdir(parents=True)
    (models_dir() / "broken.npz").write_bytes(b"not a zip")
    [entry] = list_home().models
    assert "not a fercli model file (not an .npz archive)" in entry.details["error"]
    result = fer("list")
    assert result.exit_code == 0 and "unreadable" in result.stdout
    assert fer("remove", "broken.npz").exit_code == 0
    assert list_home().models == []


def test_a_name_may_leave_out_its_hash(fer_home):
    """`fer sweep ck48` and `fer remove ck48` for the dataset ck48-b6489086, when only one
    dataset has that name; else a list of the candidates, or the closest names."""
    for name in ("ck48-b6489086", "jaffe-1a2b3c4d", "jaffe-5e6f7a8b"):
        save_synthetic(make_dataset(labels=CLASSES, subjects=1), name)
    assert resolve_dataset("ck48").name == "ck48-b6489086"
    with pytest.raises(DatasetError, match="could be any of 2 .*jaffe-1a2b3c4d, jaffe-5e6f7a8b"):
        resolve_dataset("jaffe")
    with pytest.raises(DatasetError, match="did you mean ck48-b6489086"):
        resolve_dataset("ck84")
    with pytest.raises(DatasetError, match="no such preprocessed dataset"):
        resolve_dataset("ck")  # only whole parts of a name: ck is not ck48
    result = fer("crossval", "ck84", "--folds", "2", "--epochs", "1")
    assert result.exit_code == 1 and "did you mean ck48-b6489086?" in result.stderr
    result = fer("remove", "ck48")
    assert result.exit_code == 0, result.output
    assert not (fer_home / "datasets" / "ck48-b6489086").exists()
    result = fer("remove", "jaffe")
    assert result.exit_code == 1 and "could be any of 2" in result.stderr


def on_a_terminal(arguments: list[str], columns: int) -> str:
    """What `fer ARGUMENTS` shows on a terminal of that many columns (colours left out)."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    ours, theirs = pty.openpty()
    fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "fercli", *arguments],
        stdin=theirs,
        stdout=theirs,
        stderr=theirs,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    os.close(theirs)
    shown = b""
    while True:
        try:
            chunk = os.read(ours, 65536)
        except OSError:  # the terminal closed: fer has ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(ours)
    assert process.wait(timeout=60) == 0, shown
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", shown.decode()).replace("\r", "")


def test_list_shows_evaluations_unfinished_runs_and_the_model_predict_uses(fer_home):
    import fercli

    name = "a-rather-long-dataset-name-b6489086"
    save_synthetic(make_dataset(labels=CLASSES, subjects=2), name)
    older = train_model(resolve_dataset(name), TrainConfig(epochs=1), models_dir() / "old.npz")
    newest = train_model(resolve_dataset(name), TrainConfig(epochs=1), models_dir() / "new.npz")
    os.utime(older.path, (1, 1))  # trained long ago
    evaluation = fercli.evaluate_model(name, newest.path).files["report"].parent
    # A cross-validation stopped before any fold finished, as older versions left them.
    stopped = runs_dir() / "crossval-stopped"
    stopped.mkdir()
    report = json.loads((evaluation / "report.json").read_text())
    report["protocol"]["group"] = "random"
    report.update(completed_folds=0, planned_folds=10, interrupted=True, folds=[])
    report.update(mean_accuracy=None, std_accuracy=None)
    (stopped / "report.json").write_text(json.dumps(report))

    # On an 80-column terminal, names stay whole, to be copied into fer remove.
    assert evaluation.name in on_a_terminal(["list"], columns=80)
    listing = fer("list").stdout  # at its natural width
    lines = listing.splitlines()
    row = next(line for line in lines if evaluation.name in line)
    assert "one test (fer evaluate)" in row and "+/-" not in row and " none" not in row
    assert "none of 10 (interrupted)" in next(line for line in lines if stopped.name in line)
    assert "fer predict uses new.npz" in listing
    assert "fer train uses " + name in listing


@pytest.fixture
def dataset_and_its_model(fer_home):
    """A dataset jaffe-f913120e and a model whose name begins with the dataset's, as fer train
    names its models (jaffe-f913120e-20261206-020306.npz), and a file that is no entry."""
    save_synthetic(make_dataset(labels=CLASSES, subjects=1), "jaffe-f913120e")
    models_dir().mkdir(parents=True)
    model = models_dir() / "jaffe-f913120e-20261206-020306.npz"
    model.write_bytes(b"not read here")
    (models_dir() / "notes.txt").write_text("mine")
    return fer_home / "datasets" / "jaffe-f913120e", model


@pytest.mark.parametrize(
    "arguments",
    [
        ["jaffe-f913120e", "jaffe-f913120e"],
        ["{dataset}", "jaffe-f913120e"],
        ["jaffe-f913120e", "{dataset}"],
    ],
)
def test_a_dataset_named_twice_is_removed_once_and_its_model_kept(dataset_and_its_model, arguments):
    """Issue 32: every name is resolved before anything is removed; the model trained on a
    dataset, whose name begins with the dataset's, is never taken for it."""
    dataset, model = dataset_and_its_model
    result = fer("remove", *(argument.format(dataset=dataset) for argument in arguments), "--json")
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)["removed"]
    assert [(entry["kind"], entry["name"]) for entry in removed] == [("dataset", dataset.name)]
    assert not dataset.exists() and model.exists()


def test_a_datasets_name_never_reaches_its_model_once_the_dataset_is_gone(dataset_and_its_model):
    dataset, model = dataset_and_its_model
    assert fer("remove", "jaffe-f913120e").exit_code == 0
    result = fer("remove", "jaffe-f913120e")
    assert result.exit_code == 1 and "a model is named whole" in result.stderr
    assert "jaffe-f913120e-20261206-020306" in result.stderr  # the closest name, offered
    assert model.exists() and not dataset.exists()
    assert fer("remove", "jaffe-f913120e-20261206-020306").exit_code == 0
    assert not model.exists()


def test_only_what_fer_list_shows_can_be_removed(dataset_and_its_model):
    dataset, model = dataset_and_its_model
    for name in ("notes", "notes.txt", str(models_dir() / "notes.txt")):
        result = fer("remove", name)
        assert result.exit_code == 1, (name, result.output)
    assert (models_dir() / "notes.txt").read_text() == "mine"


def test_one_bad_name_removes_nothing(dataset_and_its_model):
    dataset, model = dataset_and_its_model
    result = fer("remove", "jaffe-f913120e", "nothing-of-that-name")
    assert result.exit_code == 1 and "nothing removed" in result.stderr
    assert dataset.exists() and model.exists()


def test_a_pattern_removes_the_entries_it_matches(fer_home):
    for name in ("evaluate-a-1", "evaluate-b-2", "crossval-a-3"):
        (runs_dir() / name).mkdir(parents=True)
    result = fer("remove", "evaluate-*", "--json")
    assert result.exit_code == 0, result.output
    names = sorted(entry["name"] for entry in json.loads(result.stdout)["removed"])
    assert names == ["evaluate-a-1", "evaluate-b-2"]
    assert [path.name for path in runs_dir().iterdir()] == ["crossval-a-3"]
    result = fer("remove", "sweep-*")
    assert result.exit_code == 1 and "matches no dataset, model or run" in result.stderr


def test_remove_leaves_out_a_hash_or_a_time_and_never_a_word(fer_home):
    """The hostile tester's: `fer remove evaluate` deleted the one evaluation run there was, and
    `fer remove sp` the dataset sp-ace-3c7ef3da. A name may leave out a hash or a time only."""
    save_synthetic(make_dataset(labels=CLASSES, subjects=1), "sp-ace-3c7ef3da")
    runs = [
        "evaluate-m-20261207-011500-sp-ace-3c7ef3da-20261207-011501",
        "crossval-ck48-b6489086-20261207-011500",
    ]
    for name in runs:
        (runs_dir() / name).mkdir(parents=True)
    for name in ("sp", "evaluate", "evaluate-m", "crossval", "crossval-ck48-b6"):
        result = fer("remove", name)
        assert result.exit_code == 1 and "nothing removed" in result.stderr, name
    assert sorted(path.name for path in runs_dir().iterdir()) == sorted(runs)
    assert (fer_home / "datasets" / "sp-ace-3c7ef3da").exists()
    assert fer("remove", "crossval-ck48").exit_code == 0  # hash and time left out
    assert fer("remove", "evaluate-m-20261207-011500-sp-ace").exit_code == 0  # both left out
    assert fer("remove", "sp-ace").exit_code == 0  # the hash left out
    assert list_home().runs == list_home().datasets == []
