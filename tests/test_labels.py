"""Class names are data: they come from the folder names of datasets downloaded from
anywhere and travel into model files. train, crossval and predict show them as they are:
rich markup in a name is printed, not applied; a name made of undecodable bytes (a folder
"caf\\xe9" from an archive made elsewhere) is printed escaped, rather than crashing the
output, OpenCV's drawing or the terminal encoding. (preprocess: see test_fuzz.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from synthetic import make_dataset, save_synthetic
from test_model_safety import write_model

# Markup, undecodable bytes, a control character.
LABELS = ("[x]", "caf\udce9", "a\tb")

runner = CliRunner()


def as_shown(label: str) -> str:
    """How the CLI prints a name: undecodable bytes and control characters escaped."""
    return label.encode("utf-8", "backslashreplace").decode().replace("\t", "\\t")


def fer(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_clean_run(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.output


def odd_dataset() -> None:
    """A synthetic dataset with the odd class names, and one source file whose name is not
    UTF-8, saved where train and crossval find it."""
    dataset = make_dataset(labels=LABELS, subjects=2)
    dataset.paths[0] = "/synthetic/caf\udce9.png"
    save_synthetic(dataset)


@pytest.mark.slow
def test_train_names_the_classes_as_they_are(fer_home):
    odd_dataset()

    result = fer("train", "--epochs", "1")

    assert_clean_run(result)
    summary = result.stdout.split("(", 1)[1].split(")", 1)[0]
    assert sorted(summary.split(", ")) == sorted(as_shown(label) for label in LABELS)


@pytest.mark.slow
def test_crossval_names_the_classes_as_they_are(fer_home):
    odd_dataset()

    result = fer(
        "crossval", "--folds", "2", "--epochs", "1", "--workers", "1", "--output", fer_home / "run"
    )

    assert_clean_run(result)
    protocol = result.stdout.split("3 classes (", 1)[1].split(")", 1)[0]
    assert sorted(protocol.split(", ")) == sorted(as_shown(label) for label in LABELS)
    per_class = result.stdout.split("per class")[1].split("confusion matrix")[0]
    matrix = result.stdout.split("confusion matrix")[1]
    for label in LABELS:
        assert as_shown(label) in per_class
        assert as_shown(label) in matrix
    # The files keep the names: JSON escapes read back as the same names.
    report = json.loads((fer_home / "run" / "report.json").read_text())
    assert sorted(report["labels"]) == sorted(LABELS)
    assert "caf\\udce9.png" in (fer_home / "run" / "predictions.csv").read_text()


@pytest.mark.parametrize("winner", range(len(LABELS)))
def test_predict_names_the_label_as_it_is(tmp_path, astronaut_path, winner):
    bias = np.zeros(len(LABELS), np.float32)
    bias[winner] = 20.0  # this class wins on any face
    model = write_model(tmp_path / "odd-names.npz", classes=LABELS, arrays={"layer1_bias": bias})
    annotated = tmp_path / "annotated"

    result = fer("predict", "--model", model, astronaut_path, "--annotate", annotated)

    assert_clean_run(result)
    assert as_shown(LABELS[winner]) in result.stdout
    assert len(list(annotated.glob("*.png"))) == 1  # the label is drawn, without crashing OpenCV
