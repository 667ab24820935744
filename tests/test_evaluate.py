"""fer evaluate (a model scored on another dataset) and ensemble model files (crossval's folds,
train --ensemble), with models trained here on synthetic shapes (tests/synthetic.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.core.errors import DatasetError, ModelError
from fercli.core.store import models_dir, pack_json, unpack_json
from fercli.infer.model import load_model, save_networks
from fercli.learn.crossval import cross_validate
from fercli.learn.crossval_files import save_crossval_model
from fercli.learn.evaluate import RENORMALISED, prepare_for_model, score_model
from fercli.learn.training import train_model
from synthetic import make_dataset, save_synthetic

TRAINED = ("anger", "disgust", "fear", "happiness")
QUICK = TrainConfig(epochs=4, copies=0)
runner = CliRunner()


def fer(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def training_data():
    return make_dataset(labels=TRAINED, subjects=5)


@pytest.fixture(scope="module")
def ensemble_path(training_data, tmp_path_factory) -> Path:
    """Three networks, seeds 0 and two others, trained on the four shapes."""
    output = tmp_path_factory.mktemp("ensemble") / "three.npz"
    train_model(training_data, QUICK, output, ensemble=3)
    return output


@pytest.fixture(scope="module")
def single_path(training_data, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("single") / "one.npz"
    train_model(training_data, QUICK, output)
    return output


def other_people(labels=("anger", "disgust", "fear", "happiness", "sadness"), seed=7):
    """The same shapes drawn for other subjects, and a class the model never saw."""
    dataset = make_dataset(labels=labels, subjects=3, seed=seed)
    dataset.meta["source"] = "/elsewhere"
    return dataset


# --- evaluate ---------------------------------------------------------------------------


def test_shared_classes_are_scored_and_the_rest_named(ensemble_path):
    report = score_model(load_model(ensemble_path), other_people())
    assert report.labels == list(TRAINED)
    assert report.protocol["left_out"] == {
        "model_only": [],
        "dataset_only": ["sadness"],
        "images_dropped": 12,
        "dropped_per_class": {"sadness": 12},
    }
    assert any("sadness" in note and "12 images dropped" in note for note in report.warnings)
    assert report.confusion.sum() == report.dataset["images"] == 48
    assert report.pooled_accuracy >= 0.7  # separable shapes: far above chance (25%)
    assert len(report.folds) == 1 and report.folds[0].accuracy == report.pooled_accuracy
    assert report.macro_f1 == pytest.approx(np.mean([v["f1"] for v in report.per_class.values()]))


def test_probabilities_are_renormalised_over_the_shared_classes(single_path):
    dataset = other_people(labels=("anger", "happiness", "surprise"))
    report = score_model(load_model(single_path), dataset)
    assert report.labels == ["anger", "happiness"]
    assert RENORMALISED in report.warnings
    assert report.protocol["left_out"]["model_only"] == ["disgust", "fear"]
    for row in report.predictions:
        assert row["p_anger"] + row["p_happiness"] == pytest.approx(1, abs=1e-5)
        assert set(row) == {"path", "fold", "true", "predicted", "p_anger", "p_happiness"}


def test_no_shared_class_is_one_clear_error(single_path):
    with pytest.raises(DatasetError, match="share none"):
        score_model(load_model(single_path), other_people(labels=("sadness", "surprise")))


def test_evaluating_on_the_training_data_is_flagged(single_path, training_data):
    report = score_model(load_model(single_path), training_data)
    assert any(
        "80 of 80 evaluated images are crops this model was trained on" in note
        for note in report.warnings
    )
    assert any("trained on this dataset" in note for note in report.warnings)
    fresh = score_model(load_model(single_path), other_people())
    assert not any("trained on" in note for note in fresh.warnings)


def test_a_dataset_made_with_other_settings_is_refused(single_path):
    dataset = other_people()
    settings = PreprocessConfig(equalization="clahe")
    dataset.meta.update(
        preprocess=settings.to_dict(), preprocess_fingerprint=settings.fingerprint()
    )
    save_synthetic(dataset, "clahe")
    with pytest.raises(
        DatasetError, match="other preprocessing settings than the model's.*equalization"
    ):
        prepare_for_model("clahe", load_model(single_path))


def test_an_original_folder_is_preprocessed_with_the_models_settings(single_path, faces, tmp_path):
    from conftest import write_image

    for index in range(2):
        write_image(tmp_path / "photos" / "happiness" / f"face{index}.png", faces(index))
        write_image(tmp_path / "photos" / "sadness" / f"face{index + 2}.png", faces(index + 2))
    model = load_model(single_path)
    dataset, preprocessed = prepare_for_model(tmp_path / "photos", model, workers=1)
    assert preprocessed is not None and preprocessed.aligned == 4
    assert dataset.meta["preprocess_fingerprint"] == model.preprocess.fingerprint()
    again, preprocessed = prepare_for_model(tmp_path / "photos", model, workers=1)
    assert preprocessed is None and len(again.crops) == 4  # the prepared dataset is reused
    report = score_model(model, dataset)
    assert report.labels == ["happiness"] and report.dataset["images"] == 2
    assert any("only one shared class" in note for note in report.warnings)
    result = fer("evaluate", "--model", single_path, tmp_path / "photos")
    assert result.exit_code == 0, result.output
    assert "accuracy not meaningful with one class" in result.stdout
    assert "1 shared class (happiness)" in result.stdout
    listing = fer("list").stdout
    assert "(one class: not meaningful)" in listing


def test_evaluating_a_folder_does_not_change_the_default_dataset(single_path, faces, tmp_path):
    """A user who evaluates and then retrains must not train on the evaluation set."""
    from conftest import write_image
    from fercli.data.prepared import resolve_dataset

    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=2), "mine")
    for index in range(2):
        write_image(tmp_path / "test-set" / "happiness" / f"face{index}.png", faces(index))
    result = fer("evaluate", "--model", single_path, "--workers", 1, tmp_path / "test-set")
    assert result.exit_code == 0, result.output
    assert resolve_dataset(None).name == "mine"  # what fer train and fer crossval would use
    # Named, the evaluation set is still there to use.
    assert len(resolve_dataset(tmp_path / "test-set").crops) == 2


def test_evaluating_a_folder_keeps_the_users_dataset_of_it(single_path, faces, tmp_path):
    """The hostile tester's finding: evaluating a folder the user had preprocessed with other
    settings replaced the user's dataset with evaluate's test set."""
    from conftest import write_image
    from fercli.core.config import ScanConfig
    from fercli.data.inventory import find_entry
    from fercli.data.prepared import dataset_folder, load_dataset
    from fercli.data.preprocess import preprocess_dataset

    for index in range(2):
        write_image(tmp_path / "photos" / "happiness" / f"face{index}.png", faces(index))
    mine = PreprocessConfig(equalization="clahe")
    preprocess_dataset(tmp_path / "photos", ScanConfig(), mine, workers=1)
    users = dataset_folder(tmp_path / "photos") / "dataset.npz"
    before = users.read_bytes()
    model = load_model(single_path)
    dataset, preprocessed = prepare_for_model(tmp_path / "photos", model, workers=1)
    assert preprocessed is not None and dataset.location != users
    assert dataset.meta["preprocess_fingerprint"] == model.preprocess.fingerprint()
    assert users.read_bytes() == before  # the user's dataset, untouched
    assert load_dataset(users).meta["preprocess_fingerprint"] == mine.fingerprint()
    again, preprocessed = prepare_for_model(tmp_path / "photos", model, workers=1)
    assert preprocessed is None and again.location == dataset.location  # the test set reused
    # The folder's name still names the user's dataset only; the test set is named whole.
    assert find_entry("photos")[1] == users.parent
    test_set = dataset.location.parent
    assert find_entry(test_set.name)[1] == test_set
    assert find_entry(test_set.name.rsplit("-", 1)[0])[1] == test_set  # without its key


def test_cli_writes_the_crossval_shaped_report(ensemble_path):
    save_synthetic(other_people(), "others")
    result = fer("evaluate", "--model", ensemble_path, "others")
    assert result.exit_code == 0, result.output
    assert (
        "accuracy" in result.stdout
        and "sadness" in result.stdout
        and "ensemble of 3 networks" in result.stdout
    )
    folder = Path(result.stdout.split("report: ")[1].split("\n")[0].strip())
    assert folder.parent.name.startswith("evaluate-three-others-")
    report = json.loads(folder.read_text())
    assert report["pooled_accuracy"] is not None and report["protocol"]["model"]["networks"] == 3
    assert report["protocol"]["model"]["data_fingerprint"]
    assert (folder.parent / "confusion.png").is_file()
    rows = list(csv.DictReader((folder.parent / "predictions.csv").open()))
    assert len(rows) == 48 and "p_happiness" in rows[0]


def test_cli_no_shared_class_is_one_red_line(single_path):
    save_synthetic(other_people(labels=("sadness", "surprise")), "strangers")
    result = fer("evaluate", "--model", single_path, "strangers")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "share none" in result.stderr


def test_split_on_a_dataset_without_splits_is_refused(single_path):
    save_synthetic(other_people(), "nosplits")
    result = fer("evaluate", "--model", single_path, "--split", "PrivateTest", "nosplits")
    assert result.exit_code == 1 and "no predefined splits" in result.stderr


def test_a_split_keeps_the_source_digests_of_its_images():
    from fercli.core.hashing import digest_rows, source_digest
    from fercli.learn.evaluate import dataset_split

    dataset = make_dataset(labels=TRAINED, subjects=2, per_subject=2)
    dataset.splits = np.array(["Training", "PublicTest"] * (len(dataset.crops) // 2))
    dataset.sources = digest_rows([source_digest(path.encode()) for path in dataset.paths])
    part = dataset_split(dataset, "PublicTest")
    assert len(part.sources) == len(part.crops) == len(dataset.crops) // 2
    np.testing.assert_array_equal(part.sources, dataset.sources[1::2])
    dataset.sources = None
    assert dataset_split(dataset, "PublicTest").sources is None


# --- ensembles --------------------------------------------------------------------------


def test_an_ensemble_averages_its_members(ensemble_path, training_data):
    model = load_model(ensemble_path)
    assert len(model.networks) == 3 and model.meta["ensemble"]["members"] == 3
    crops = training_data.crops[:10]
    each = [member.predict_proba(crops, flip=False) for member in model.networks]
    assert np.allclose(model.predict_proba(crops), np.mean(each, axis=0))
    # Different seeds, different networks.
    assert not np.allclose(each[0], each[1])
    assert not np.array_equal(
        model.networks[0].network.weights["layer0_kernel"],
        model.networks[1].network.weights["member1_layer0_kernel"],
    )


def test_a_single_network_file_still_loads(single_path, tmp_path):
    with np.load(single_path) as archive:
        content = {key: archive[key] for key in archive.files}
    meta = unpack_json(content["meta"])
    meta["format_version"] = 1
    del meta["members"]
    content["meta"] = pack_json(meta)
    np.savez(tmp_path / "v1.npz", **content)
    old = load_model(tmp_path / "v1.npz")
    assert len(old.networks) == 1
    assert np.allclose(
        old.predict_proba(make_dataset(labels=TRAINED, subjects=1).crops),
        load_model(single_path).predict_proba(make_dataset(labels=TRAINED, subjects=1).crops),
    )


def _networks(path: Path):
    from fercli.infer.model import ExportedNetwork

    model = load_model(path)
    return [
        ExportedNetwork(
            m.network.specs,
            {
                k.removeprefix("member1_").removeprefix("member2_"): v
                for k, v in m.network.weights.items()
            },
            m.mean,
            m.std,
        )
        for m in model.networks
    ], model


def test_an_ensemble_with_mismatched_members_is_one_clear_error(ensemble_path, tmp_path):
    networks, model = _networks(ensemble_path)
    five = make_dataset(labels=(*TRAINED, "sadness"), subjects=2)
    other = train_model(five, TrainConfig(epochs=1, copies=0), tmp_path / "five.npz")
    stranger, _ = _networks(other.path)
    # Hand-made: save_networks does not check members against each other (training never mixes
    # them).
    path = save_networks(
        tmp_path / "mixed.npz",
        [networks[0], stranger[0]],
        model.classes,
        model.preprocess,
        TrainConfig.from_dict(model.meta["training"]),
    )
    with pytest.raises(
        ModelError,
        match=r"mixed.npz: ensemble member 2 of 2 gives 5 probabilities, and the file has 4 "
        r"classes",
    ):
        load_model(path)


def test_a_version_1_file_with_members_is_refused(ensemble_path, tmp_path):
    with np.load(ensemble_path) as archive:
        content = {key: archive[key] for key in archive.files}
    meta = unpack_json(content["meta"])
    meta["format_version"] = 1
    content["meta"] = pack_json(meta)
    np.savez(tmp_path / "odd.npz", **content)
    with pytest.raises(ModelError, match="a version 1 file holds one network"):
        load_model(tmp_path / "odd.npz")


def test_crossval_folds_become_one_ensemble(training_data, tmp_path):
    run = cross_validate(training_data, QUICK, folds=3, workers=2)
    report = run.report
    exports = [outcome.export for outcome in run.outcomes.values()]
    assert len(exports) == 3 and all(item.difference <= 1e-4 for item in exports)
    assert run.model_worth_saving and run.model_refusal is None
    path = save_crossval_model(run, tmp_path / "cv.npz")
    model = load_model(path)
    assert len(model.networks) == 3 and model.meta["ensemble"]["kind"] == "crossval"
    assert model.meta["data_fingerprint"] == report.dataset["fingerprint"]
    assert model.seen_in_training(training_data.crops) == [True] * len(training_data.crops)
    # The fold networks, in order: fold 1's gives what crossval measured on fold 1's test crops.
    first = [row for row in report.predictions if row["fold"] == 1]
    assert len(first) > 0


def test_crossval_then_predict(training_data, astronaut_path):
    save_synthetic(training_data, "shapes")
    result = fer(
        "crossval", "--folds", "2", "--epochs", "1", "--copies", "0", "--workers", "1", "shapes"
    )
    assert result.exit_code == 0, result.output
    saved = list(models_dir().glob("shapes-crossval-*.npz"))
    assert len(saved) == 1 and f"model: {saved[0]}" in result.stdout
    predicted = fer("predict", "--json", astronaut_path)
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)[0]["faces"][0]["label"] in TRAINED
    skipped = fer(
        "crossval",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--copies",
        "0",
        "--workers",
        "1",
        "--no-save-model",
        "shapes",
    )
    assert skipped.exit_code == 0 and len(list(models_dir().glob("*.npz"))) == 1


def test_train_ensemble_option(training_data):
    save_synthetic(training_data, "shapes")
    result = fer("train", "--epochs", "1", "--copies", "0", "--ensemble", "2", "--json", "shapes")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["networks"] == 2 and len(load_model(Path(summary["model"])).networks) == 2


def test_images_without_a_face_count_as_wrong_over_every_image(
    single_path, faces, no_face_image, tmp_path
):
    # Issue 35.6: the accuracy over the faces found, and over every image of the folder.
    from conftest import write_image

    photos = tmp_path / "photos"
    for index in range(3):
        write_image(photos / "happiness" / f"face{index}.png", faces(index))
    for index in range(2):
        write_image(photos / "anger" / f"face{index}.png", faces(index + 3))
    blank = no_face_image.copy()
    for index, label in enumerate(["happiness", "happiness", "anger"]):
        blank[0, 0] = index  # distinct files
        write_image(photos / label / f"empty{index}.png", blank)
    (photos / "anger" / "broken.png").write_bytes(b"not an image")  # no face found either
    write_image(photos / "surprise" / "empty.png", no_face_image)  # a class the model lacks

    result = fer("evaluate", "--model", single_path, "--workers", 1, photos, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    correct = round(report["pooled_accuracy"] * 5)
    assert report["folds"][0]["test_size"] == 5
    assert report["all_images"] == {
        "images": 9,
        "without_face": 4,
        "without_face_per_class": {"anger": 2, "happiness": 2},
        "accuracy": pytest.approx(correct / 9),
    }
    table = fer("evaluate", "--model", single_path, photos)
    said = " ".join(table.stdout.split())
    assert (
        f"accuracy {correct / 5:.2%} of the 5 faces found, {correct / 9:.2%} of all 9 images "
        "(4 without a face found, counted wrong)"
    ) in said
    assert "without a face found: anger 2, happiness 2" in said
    # The prepared dataset keeps the counts: named, it says the same.
    from fercli.data.prepared import dataset_folder

    prepared = dataset_folder(photos).name
    again = json.loads(fer("evaluate", "--model", single_path, prepared, "--json").stdout)
    assert again["all_images"] == report["all_images"]


def test_a_dataset_that_does_not_know_its_faceless_images_says_so(single_path):
    save_synthetic(other_people(), "older")  # as preprocessed before fercli kept the count
    report = json.loads(fer("evaluate", "--model", single_path, "older", "--json").stdout)
    assert report["all_images"]["accuracy"] is None
    assert "is not known" in report["all_images"]["note"]
    said = " ".join(fer("evaluate", "--model", single_path, "older").stdout.split())
    assert f"accuracy {report['pooled_accuracy']:.2%} of the faces found" in said
    assert "had no face found is not known" in said


def test_evaluate_advises_only_what_was_not_done_and_says_the_model_has_no_neutral(tmp_path):
    from fercli.core.recipes import recipe_config
    from test_predict import collapsing_model

    # A model trained with the robust recipe that calls every face surprise, and knows no
    # neutral; a dataset with neutral faces.
    model = collapsing_model(
        tmp_path / "robust.npz", recipe_config("robust").to_dict(), ("anger", "surprise")
    )
    save_synthetic(make_dataset(labels=("anger", "surprise", "neutral"), subjects=4), "calm")
    plain = fer("evaluate", "--model", model, "calm", "--json")
    adapted = fer("evaluate", "--model", model, "calm", "--json", "--adapt")
    assert plain.exit_code == adapted.exit_code == 0, adapted.output
    plain, adapted = json.loads(plain.stdout)["warnings"], json.loads(adapted.stdout)["warnings"]
    for warnings in (plain, adapted):
        assert sum("has no neutral class" in warning for warning in warnings) == 1
    [collapse] = [warning for warning in plain if "collapsed" in warning]
    assert "try --adapt" in collapse and "recipe for photos from elsewhere" not in collapse
    [collapse] = [warning for warning in adapted if "collapsed" in warning]
    assert "try --adapt" not in collapse and "--recipe robust" not in collapse
    assert "what is left to try is a model trained on more varied data" in collapse

    # fer list tells the adapted run from the plain one.
    listing = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["list"]).stdout
    [plain_row] = [line for line in listing.splitlines() if "evaluate-robust-calm-2" in line]
    [adapted_row] = [
        line for line in listing.splitlines() if "evaluate-robust-calm-adapted" in line
    ]
    assert "one test (fer evaluate)" in plain_row
    assert "one test (fer evaluate --adapt)" in adapted_row
