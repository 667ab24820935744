"""fer list and fer remove: what FER_HOME holds, and taking one entry out of it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import TrainConfig
from fercli.core.errors import StoreError
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
    report = cross_validate(dataset, config, folds=2, workers=1)
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
    assert "not a readable model file" in entry.details["error"]
    result = fer("list")
    assert result.exit_code == 0 and "unreadable" in result.stdout
    assert fer("remove", "broken.npz").exit_code == 0
    assert list_home().models == []
