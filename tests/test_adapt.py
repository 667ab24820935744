"""--adapt (fercli.infer.adapt): a model's normalisation and batch normalisation statistics
re-estimated from the unlabelled faces being labelled, on models trained here on synthetic
shapes (tests/synthetic.py) and shown those shapes through another "camera"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fercli.core.config import TrainConfig
from fercli.core.errors import FerError
from fercli.infer.adapt import MIN_FACES, adapt_model
from fercli.infer.model import load_model
from fercli.learn.training import train_model
from synthetic import make_dataset

LABELS = ("anger", "disgust", "fear", "happiness")


@pytest.fixture(scope="module")
def batchnorm_model(tmp_path_factory):
    training = make_dataset(labels=LABELS, subjects=6)
    output = tmp_path_factory.mktemp("adapt") / "bn.npz"
    train_model(training, TrainConfig(variant="batchnorm", epochs=6, copies=0), output)
    return load_model(output)


def another_camera(crops: np.ndarray) -> np.ndarray:
    """The same faces darker and flatter: a shift of the pixel statistics a camera makes."""
    return np.clip(crops.astype(np.float64) * 0.45 + 20, 0, 255).astype(np.uint8)


def accuracy(model, dataset) -> float:
    predicted = model.predict_proba(dataset.crops).argmax(axis=1)
    truth = np.array([model.classes.index(label) for label in dataset.labels])
    return float(np.mean(predicted == truth))


def test_adapting_to_another_camera_recovers_what_the_shift_cost(batchnorm_model):
    people = make_dataset(labels=LABELS, subjects=4, seed=11)
    clean = accuracy(batchnorm_model, people)
    people.crops = another_camera(people.crops)
    shifted = accuracy(batchnorm_model, people)
    adapted, adaptation = adapt_model(batchnorm_model, people.crops)

    assert clean >= 0.9
    assert shifted < clean - 0.2  # the shift hurts the model as trained
    assert accuracy(adapted, people) >= clean - 0.1  # and adapting gives it back
    assert adaptation.faces == len(people.crops)
    assert adaptation.batchnorm_layers >= 2
    assert adapted.meta["adapted"] is True
    assert "adapted" not in batchnorm_model.meta  # the original is left as it was


def test_adapting_to_the_training_camera_changes_little(batchnorm_model):
    people = make_dataset(labels=LABELS, subjects=4, seed=12)
    adapted, _ = adapt_model(batchnorm_model, people.crops)

    assert abs(accuracy(adapted, people) - accuracy(batchnorm_model, people)) <= 0.1


def test_too_few_faces_is_a_refusal_not_a_silent_fallback(batchnorm_model):
    people = make_dataset(labels=LABELS, subjects=1, per_subject=1)
    assert len(people.crops) < MIN_FACES
    with pytest.raises(FerError, match=f"at least {MIN_FACES} faces"):
        adapt_model(batchnorm_model, people.crops)


def test_a_collapse_is_named_only_where_the_truth_does_not_hold_it():
    from fercli.core.labels import answer_shares, collapse_note

    answers = ["surprise"] * 16 + ["anger", "fear", "happiness", "sadness"]
    shares = answer_shares(answers)
    assert list(shares)[0] == "surprise" and shares["surprise"] == pytest.approx(0.8)
    balanced = answer_shares(["surprise", "anger", "fear", "happiness", "sadness"] * 4)
    warning = collapse_note(shares, len(answers), balanced)
    assert warning.startswith("surprise takes 80% of the 20 answers (it is 20% of the true")
    assert collapse_note(shares, len(answers), answer_shares(answers)) is None  # it is true
    assert collapse_note(answer_shares(answers[:6]), 6) is None  # too few to say
    assert collapse_note(answer_shares(["anger", "fear"] * 10), 20) is None


def test_fer_evaluate_adapt_reports_what_it_adapted(batchnorm_model, tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app
    from synthetic import save_synthetic

    people = make_dataset(labels=LABELS, subjects=4, seed=13)
    people.crops = another_camera(people.crops)
    people.meta["source"] = "/another/camera"
    save_synthetic(people, "camera")
    runner = CliRunner()
    plain = runner.invoke(app, ["evaluate", "--model", str(batchnorm_model.path), "camera"])
    adapted = runner.invoke(
        app, ["evaluate", "--model", str(batchnorm_model.path), "camera", "--adapt", "--json"]
    )

    assert plain.exit_code == 0, plain.output
    assert "answers: " in plain.output
    assert adapted.exit_code == 0, adapted.output
    report = json.loads(adapted.stdout)
    assert report["protocol"]["adapted"]["faces"] == len(people.crops)
    assert sum(report["answer_shares"].values()) == pytest.approx(1)
    assert any("adapted to the" in warning for warning in report["warnings"])


def test_fer_predict_adapt_refuses_too_few_faces(batchnorm_model, astronaut_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    result = CliRunner().invoke(
        app, ["predict", str(astronaut_path), "--model", str(batchnorm_model.path), "--adapt"]
    )
    assert result.exit_code == 1
    assert f"--adapt needs at least {MIN_FACES} faces" in result.output
    assert "Traceback" not in result.output


def test_an_image_normalised_model_adapts_to_its_standardised_crops(tmp_path):
    # --normalisation image: the network's statistics are of crops each standardised by its
    # own mean and std, so --adapt must estimate them over those, not over the grey levels.
    training = make_dataset(labels=LABELS, subjects=6)
    output = tmp_path / "image.npz"
    config = TrainConfig(variant="batchnorm", epochs=6, copies=0, normalisation="image")
    model = load_model(train_model(training, config, output).path)
    assert model.per_image
    people = make_dataset(labels=LABELS, subjects=4, seed=12)
    crops = (people.crops // 2) * 2  # even grey levels: halving them below is exact
    adapted, _ = adapt_model(model, crops)
    # Standardised crops have mean 0 and deviation 1 whatever the camera (grey levels: ~100).
    assert adapted.per_image and abs(float(adapted.mean)) < 1e-6
    assert abs(float(adapted.std) - 1) < 0.01
    assert accuracy(adapted, people) >= accuracy(model, people) - 0.1
    # So a darker, flatter camera adapts to the very same model.
    darker, _ = adapt_model(model, (crops // 2 + 60).astype(np.uint8))
    np.testing.assert_allclose(darker.predict_proba(crops), adapted.predict_proba(crops), atol=1e-6)


def test_explain_and_adapt_together_are_refused_before_any_work(batchnorm_model, tmp_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    photo = tmp_path / "missing.png"  # never read: the refusal comes first
    result = CliRunner().invoke(
        app,
        ["predict", str(photo), "--model", str(batchnorm_model.path), "--adapt"]
        + ["--explain", str(tmp_path / "maps")],
    )
    assert result.exit_code == 1
    assert "--explain and --adapt together are not supported" in result.output
    assert not (tmp_path / "maps").exists()
