"""Training and cross-validation on synthetic shapes (tests/synthetic.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fercli.core.config import TrainConfig
from fercli.core.errors import DatasetError, FerError
from fercli.core.labels import BASIC_LABELS
from fercli.core.recipes import recipe_config, recipe_differences
from fercli.learn import folds as fold_module
from fercli.learn.crossval import cross_validate
from fercli.learn.fitting import configure_tensorflow, fit
from fercli.learn.folds import make_folds
from fercli.learn.selection import normalisation, select_classes
from synthetic import make_dataset

FOLDS = 5
EPOCHS = 6


@pytest.fixture(scope="module")
def dataset():
    """7 classes x 10 subjects x 4 crops = 280 images."""
    return make_dataset()


@pytest.fixture(scope="module")
def crossval_run(dataset):
    """One short 5-fold cross-validation with the paper's settings, and its progress events."""
    events: list[dict] = []
    run = cross_validate(
        dataset, TrainConfig(epochs=EPOCHS), folds=FOLDS, group="random", progress=events.append
    )
    return run.report, events


# --- cross-validation results -----------------------------------------------------------


def test_short_crossval_beats_chance_by_a_wide_margin(crossval_run):
    report, _ = crossval_run
    chance = 1 / len(BASIC_LABELS)
    assert len(report.folds) == FOLDS and not report.interrupted
    assert report.mean_accuracy >= 0.9, f"{report.mean_accuracy:.1%} (chance {chance:.1%})"
    assert min(report.accuracies) >= 0.8
    assert report.confusion.sum() == 280  # every image tested exactly once
    assert np.trace(report.confusion) / report.confusion.sum() == pytest.approx(
        report.pooled_accuracy
    )


def test_crossval_json_report_has_the_documented_fields(crossval_run):
    report, _ = crossval_run
    # Native JSON types only: a numpy number would need default=str and come out as a string.
    data = json.loads(json.dumps(report.to_json()))
    assert len(data["folds"]) == FOLDS
    assert all(0 <= fold["accuracy"] <= 1 for fold in data["folds"])
    assert sum(fold["test_size"] for fold in data["folds"]) == 280
    assert data["mean_accuracy"] == pytest.approx(
        np.mean([fold["accuracy"] for fold in data["folds"]])
    )
    assert data["std_accuracy"] == pytest.approx(
        np.std([fold["accuracy"] for fold in data["folds"]])
    )
    assert data["labels"] == list(BASIC_LABELS)
    matrix = np.array(data["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum(axis=1).tolist() == [40] * 7
    protocol = data["protocol"]
    assert protocol["folds"] == FOLDS and protocol["group"] == "random"
    assert protocol["classes"] == list(BASIC_LABELS)
    assert protocol["training"]["epochs"] == EPOCHS and protocol["training"]["seed"] == 0
    assert set(data["per_class"]) == set(BASIC_LABELS)
    assert 0 <= data["macro_f1"] <= 1


def test_random_folds_on_data_with_subjects_warn_that_people_are_on_both_sides(crossval_run):
    report, _ = crossval_run
    text = " ".join(report.warnings)
    assert "same people" in text and "10 subjects" in text and "--group subject" in text
    # CK+-style names: frames of one sequence straddle folds.
    assert "sequence" in text


def test_crossval_reports_progress_per_fold(crossval_run):
    report, events = crossval_run
    finished = [event for event in events if event.kind == "fold"]
    assert sorted(event.fold for event in finished) == list(range(FOLDS))
    by_fold = {event.fold + 1: event.accuracy for event in finished}
    assert by_fold == {fold.fold: fold.accuracy for fold in report.folds}
    epochs = [event for event in events if event.kind == "epoch"]
    assert epochs and all(event.epochs == EPOCHS and 1 <= event.epoch <= EPOCHS for event in epochs)


@pytest.fixture(scope="module")
def interrupted_run():
    """A cross-validation stopped by Ctrl-C before its first fold finished (the progress
    callback runs where the KeyboardInterrupt of a Ctrl-C lands)."""

    def stop(event) -> None:
        if event.kind == "epoch":
            raise KeyboardInterrupt

    small = make_dataset(labels=("anger", "happiness"), subjects=4)
    return cross_validate(
        small, TrainConfig(epochs=100_000), folds=3, workers=1, progress=stop
    ).report


def test_interrupted_crossval_returns_what_it_has(interrupted_run):
    report = interrupted_run
    assert report.interrupted and report.folds == [] and report.planned_folds == 3
    data = report.to_json()
    assert (
        data["interrupted"] is True and data["completed_folds"] == 0 and data["planned_folds"] == 3
    )


def test_interrupted_crossval_report_is_standard_json(interrupted_run):
    json.dumps(interrupted_run.to_json(), allow_nan=False)


@pytest.mark.slow
def test_same_seed_gives_the_same_subject_folds_and_numbers_whichever_worker_runs_them(dataset):
    # Two epochs: accuracies well below 100%, so that equal numbers mean something.
    config = TrainConfig(epochs=2, seed=0, augment_mode="online")
    first = cross_validate(dataset, config, folds=3, group="subject", workers=2).report
    second = cross_validate(dataset, config, folds=3, group="subject", workers=1).report
    assert [fold.test_subjects for fold in first.folds] == [
        fold.test_subjects for fold in second.folds
    ]
    assert first.accuracies.tolist() == second.accuracies.tolist()
    assert first.predictions == second.predictions
    assert max(first.accuracies) < 1.0  # not trivially equal
    # Subject folds: every subject tested exactly once, and no same-people warning.
    tested = [subject for fold in first.folds for subject in fold.test_subjects]
    assert sorted(tested) == [f"S{number:03d}" for number in range(1, 11)]
    assert not any("same people" in warning for warning in first.warnings)


def test_training_with_the_same_seed_gives_identical_weights(dataset):
    configure_tensorflow(None)
    selection = select_classes(dataset)
    sample = slice(0, 280, 4)
    config = TrainConfig(epochs=1)

    def weights(seed: int) -> list[np.ndarray]:
        model = fit(selection.crops[sample], selection.targets[sample], 7, config, seed).model
        return model.get_weights()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --- folds -----------------------------------------------------------------------------


def test_subject_folds_never_share_a_subject(dataset):
    selection = select_classes(dataset)
    for seed in range(40):
        for folds in (2, 3, 5, 10):
            splits = make_folds(selection, folds, "subject", seed)
            assert len(splits) == folds
            tested = np.concatenate([test for _, test in splits])
            assert sorted(tested.tolist()) == list(range(len(selection.targets)))
            for train, test in splits:
                shared = set(selection.subjects[train]) & set(selection.subjects[test])
                assert not shared, f"seed {seed}, {folds} folds: {sorted(shared)} on both sides"


def test_subject_folds_with_as_many_folds_as_subjects_leave_one_subject_out(dataset):
    selection = select_classes(dataset)
    splits = make_folds(selection, 10, "subject", 0)
    assert sorted(len(set(selection.subjects[test])) for _, test in splits) == [1] * 10


def test_random_folds_are_stratified_and_cover_every_image_once(dataset):
    selection = select_classes(dataset)
    splits = make_folds(selection, FOLDS, "random", 0)
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(len(selection.targets)))
    for train, test in splits:
        assert not set(train) & set(test)
        assert np.bincount(selection.targets[test], minlength=7).tolist() == [8] * 7


@pytest.mark.parametrize("group", ["random", "subject"])
def test_folds_are_identical_for_a_seed_and_differ_for_another(dataset, group):
    selection = select_classes(dataset)
    first = make_folds(selection, FOLDS, group, 7)
    again = make_folds(selection, FOLDS, group, 7)
    other = make_folds(selection, FOLDS, group, 8)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


# --- what a fold learns from ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["global", "pixel"])
def test_fold_normalisation_comes_from_the_training_part_only(dataset, monkeypatch, mode):
    selection = select_classes(dataset)
    train, test = make_folds(selection, FOLDS, "random", 0)[0]
    crops = selection.crops.copy()
    crops[test] = 250  # the test part is nothing like the training part
    configure_tensorflow(None)
    task = fold_module.FoldTask(0, TrainConfig(epochs=1, normalisation=mode), 0, train, test)
    outcome = fold_module.train_fold(crops, selection.targets, len(selection.labels), task)
    train_mean, train_std = normalisation(crops[train], mode)
    assert outcome.mean == pytest.approx(float(np.mean(train_mean)))
    assert outcome.std == pytest.approx(float(np.mean(train_std)))
    everything_mean, _ = normalisation(crops, mode)
    assert abs(outcome.mean - float(np.mean(everything_mean))) > 10
    assert outcome.probabilities.shape == (len(test), 7)
    assert outcome.epochs == 1 and np.array_equal(outcome.test_index, test)
    assert outcome.accuracy == pytest.approx(
        np.mean(outcome.probabilities.argmax(axis=1) == selection.targets[test])
    )


def test_normalisation_statistics():
    # Known values: half the images all 0, half all 200 -> mean 100, std 100 everywhere; the
    # per-pixel statistics of images 0..3 at pixel (0, 0) and 10 elsewhere.
    crops = np.concatenate([np.zeros((2, 32, 32), np.uint8), np.full((2, 32, 32), 200, np.uint8)])
    mean, std = normalisation(crops, "global")
    assert mean.shape == () and float(mean) == 100.0 and float(std) == 100.0
    varied = np.full((4, 32, 32), 10, np.uint8)
    varied[:, 0, 0] = [0, 1, 2, 3]
    mean, std = normalisation(varied, "pixel")
    assert mean.shape == (32, 32) and std.shape == (32, 32)
    assert mean[0, 0] == 1.5 and std[0, 0] == pytest.approx(np.sqrt(1.25))
    assert mean[5, 5] == 10.0
    # A constant pixel must not divide by zero.
    assert std[5, 5] > 0
    _, std = normalisation(np.full((4, 32, 32), 7, np.uint8), "global")
    assert float(std) > 0


def test_recipes_are_starting_points_that_options_override():
    paper = recipe_config("paper")
    assert paper == TrainConfig() and paper.augment_mode == "copies" and paper.variant == "paper"
    best = recipe_config("best", epochs=7, variant=None)
    assert best.recipe == "best" and best.epochs == 7 and best.variant != "paper"
    assert recipe_differences(best) == {"epochs": 7}
    assert recipe_differences(recipe_config("paper", seed=3, max_rotation=10.0)) == {
        "max_rotation": 10.0
    }
    with pytest.raises(Exception, match="unknown recipe 'fastest'"):
        recipe_config("fastest")
    robust = recipe_config("robust")
    assert robust.max_scale == 0.15 and robust.max_shift == 3.0
    assert robust.variant == best.variant and robust.test_time_flip == best.test_time_flip


# --- refusals ---------------------------------------------------------------------------


def test_classes_option_accepts_aliases_and_keeps_report_order(dataset):
    selection = select_classes(dataset, ("surprised", "happy", "Anger"))
    assert selection.labels == ["anger", "happiness", "surprise"]
    assert len(selection.crops) == 120 and set(selection.targets.tolist()) == {0, 1, 2}


def test_unknown_class_name_is_refused(dataset):
    with pytest.raises(
        DatasetError, match=r"unknown class 'joyful'; this dataset has anger, disgust"
    ):
        cross_validate(dataset, TrainConfig(epochs=1, classes=("anger", "joyful")), folds=FOLDS)


def test_a_single_class_is_refused(dataset):
    with pytest.raises(DatasetError, match="at least two classes; the selection has anger"):
        cross_validate(dataset, TrainConfig(epochs=1, classes=("anger",)), folds=FOLDS)
    only_one = make_dataset(labels=("happiness",), subjects=3)
    with pytest.raises(DatasetError, match="at least two classes"):
        cross_validate(only_one, TrainConfig(epochs=1), folds=2)


def test_a_class_with_fewer_images_than_folds_is_refused():
    small = make_dataset(labels=("anger", "happiness"), subjects=3, per_subject=2)  # 6 each
    with pytest.raises(DatasetError, match=r"class 'anger' has 6 images, fewer than the 10 folds"):
        cross_validate(small, TrainConfig(epochs=1), folds=10)


def test_subject_folds_without_subjects_are_refused():
    anonymous = make_dataset(labels=("anger", "happiness"), with_subjects=False)
    with pytest.raises(DatasetError, match="--group subject needs the subject of every image"):
        cross_validate(anonymous, TrainConfig(epochs=1), folds=3, group="subject")


def test_more_subject_folds_than_subjects_are_refused():
    four_people = make_dataset(labels=("anger", "happiness"), subjects=4)
    with pytest.raises(DatasetError, match="10 folds needs at least 10 subjects; there are 4"):
        cross_validate(four_people, TrainConfig(epochs=1), folds=10, group="subject")


def test_unknown_group_and_too_few_folds_are_refused(dataset):
    with pytest.raises(DatasetError, match="unknown --group 'people'"):
        cross_validate(dataset, TrainConfig(epochs=1), folds=3, group="people")
    with pytest.raises(DatasetError, match="at least 2"):
        cross_validate(dataset, TrainConfig(epochs=1), folds=1)


# --- starting from another model (--init) ------------------------------------------------


@pytest.fixture(scope="module")
def starting_model(tmp_path_factory):
    """A model trained on one synthetic 'dataset' (anger, happiness, neutral)."""
    from fercli.learn.training import train_model

    other = make_dataset(labels=("anger", "happiness", "neutral"), subjects=4, seed=7)
    other.meta["source"] = "/other-lab"
    path = tmp_path_factory.mktemp("start") / "other.npz"
    return train_model(other, TrainConfig(epochs=1, copies=0), path).path


def test_fine_tuning_starts_from_the_given_model_with_classes_matched_by_name(
    starting_model, tmp_path
):
    from fercli.infer.model import load_model
    from fercli.learn.training import train_model

    mine = make_dataset(labels=("anger", "happiness", "surprise"), subjects=4, seed=1)
    # Learning rate 0: the network keeps exactly the weights it started from.
    config = TrainConfig(
        epochs=1, copies=0, learning_rate=0.0, momentum=0.0, init_model=str(starting_model)
    )
    tuned = load_model(train_model(mine, config, tmp_path / "tuned.npz").path)
    start = load_model(starting_model)
    kernels = [spec["weights"] for spec in start.network.specs if spec["weights"]]
    for spec_start, spec_tuned in zip(
        kernels[:-1], [s["weights"] for s in tuned.network.specs if s["weights"]][:-1], strict=True
    ):
        for key_start, key_tuned in zip(spec_start, spec_tuned, strict=True):
            assert np.array_equal(
                start.network.weights[key_start], tuned.network.weights[key_tuned]
            )
    last_start = start.network.weights[kernels[-1][0]]
    last_tuned = tuned.network.weights[
        [s["weights"] for s in tuned.network.specs if s["weights"]][-1][0]
    ]
    assert tuned.classes == ["anger", "happiness", "surprise"]
    assert np.array_equal(last_tuned[:, 0], last_start[:, 0])  # anger
    assert np.array_equal(last_tuned[:, 1], last_start[:, 1])  # happiness
    assert not np.allclose(last_tuned[:, 2], last_start[:, 2])  # surprise: new, not neutral's
    assert tuned.meta["training"]["init_model"] == str(starting_model)


def test_a_starting_model_trained_on_the_same_dataset_is_refused(starting_model, tmp_path):
    same = make_dataset(labels=("anger", "happiness", "neutral"), subjects=4, seed=7)
    same.meta["source"] = "/other-lab"
    with pytest.raises(FerError, match="trained on this dataset"):
        cross_validate(same, TrainConfig(epochs=1, init_model=str(starting_model)), folds=2)
    other = make_dataset(labels=("anger", "happiness"), subjects=4, seed=2)
    with pytest.raises(FerError, match="--variant paper"):
        cross_validate(
            other,
            TrainConfig(epochs=1, variant="batchnorm", init_model=str(starting_model)),
            folds=2,
        )


def test_a_starting_model_that_saw_these_images_under_another_name_is_refused(starting_model):
    copied = make_dataset(labels=("anger", "happiness", "neutral"), subjects=4, seed=7)
    copied.meta["source"] = "/a-copy-elsewhere"  # same crops, another folder
    # Two of its three classes: another data fingerprint, yet every crop was in the training.
    config = TrainConfig(epochs=1, init_model=str(starting_model), classes=("anger", "happiness"))
    with pytest.raises(FerError, match="trained on 32 of these 32 images"):
        cross_validate(copied, config, folds=2)


def test_a_dataset_preprocessed_otherwise_is_refused_with_the_command_that_fits(starting_model):
    from fercli.core.config import PreprocessConfig

    other = make_dataset(labels=("anger", "happiness"), subjects=4, seed=3)
    settings = PreprocessConfig(equalization="midpoint")
    other.meta.update(source="/data/jaffe", preprocess=settings.to_dict())
    with pytest.raises(
        FerError,
        match=r"other preprocessing settings than .*'s \(equalization face against midpoint\); "
        r"run `fer preprocess /data/jaffe --crop-size 32` first",
    ):
        cross_validate(other, TrainConfig(epochs=1, init_model=str(starting_model)), folds=2)


# --- another dataset to choose the epoch on (--validation DATASET) -----------------------


def test_a_validation_dataset_of_another_crop_size_is_refused_before_any_training(tmp_path):
    import cv2

    from fercli.core.config import PreprocessConfig
    from fercli.learn.training import train_model
    from synthetic import save_synthetic

    # It once trained a whole epoch and then failed in Keras with a traceback.
    held = make_dataset(labels=("anger", "happiness"), subjects=2, seed=4)
    settings = PreprocessConfig(crop_size=48)
    held.crops = np.stack([cv2.resize(crop, (48, 48)) for crop in held.crops])
    held.meta.update(
        source="/data/held",
        preprocess=settings.to_dict(),
        preprocess_fingerprint=settings.fingerprint(),
    )
    save_synthetic(held, "held")
    mine = make_dataset(labels=("anger", "happiness"), subjects=4, seed=5)
    with pytest.raises(
        DatasetError,
        match=r"--validation held: its crops were made with other preprocessing settings than "
        r".*'s \(crop_size 48 against 32\); run `fer preprocess /data/held --crop-size 32` first",
    ):
        train_model(mine, TrainConfig(epochs=1, copies=0, validation="held"), tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_validation_dataset_holding_images_trained_on_is_refused(tmp_path):
    from fercli.learn.training import train_model
    from synthetic import save_synthetic

    mine = make_dataset(labels=("anger", "happiness"), subjects=4, seed=5)
    save_synthetic(mine, "mine")
    config = TrainConfig(epochs=1, copies=0, validation="mine")
    message = "--validation mine: 32 of its 32 images are among the images trained on"
    with pytest.raises(DatasetError, match=message):
        train_model(mine, config, tmp_path / "m.npz")
    with pytest.raises(DatasetError, match=message):
        cross_validate(mine, config, folds=2)


def test_train_says_how_many_images_a_validation_share_held_out_of_those_selected(fer_home):
    # 2 classes x 4 subjects x 4 = 32 images; a quarter held out: 4 of each class's 16.
    from typer.testing import CliRunner

    from fercli.cli import app
    from synthetic import save_synthetic

    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=4, seed=5), "mine")
    arguments = ["train", "mine", "--epochs", "1", "--copies", "0", "--validation", "0.25"]
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 32
    assert report["validation"]["images"] == 8 and report["validation"]["share"] is True
    text = CliRunner().invoke(app, arguments).stdout
    assert "trained on 24 of the 32 images of mine" in text
    assert "the best on the 8 images held out of them" in text


def test_train_says_a_validation_dataset_s_images_are_its_own(fer_home):
    from typer.testing import CliRunner

    from fercli.cli import app
    from synthetic import save_synthetic

    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=4, seed=5), "mine")
    other = make_dataset(labels=("anger", "happiness", "fear"), subjects=2, seed=6)
    save_synthetic(other, "other")
    arguments = ["train", "mine", "--epochs", "1", "--copies", "0", "--validation", "other"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    # All 32 trained on; the other dataset's fear images are not of the classes trained.
    assert "trained on 32 images of mine" in result.stdout
    assert "the best on --validation's 16 images of these classes" in result.stdout


def test_a_validation_folder_not_yet_preprocessed_gets_the_command_with_the_training_settings(
    fer_home, tmp_path
):
    # Preprocessed by default, a small folder would get 32x32 crops whatever the training's.
    from fercli.core.config import PreprocessConfig
    from fercli.core.errors import DatasetError
    from fercli.learn.training import train_model

    mine = make_dataset(labels=("anger", "happiness"), subjects=4, seed=5)
    settings = PreprocessConfig(crop_size=48)
    mine.meta.update(preprocess=settings.to_dict())
    folder = tmp_path / "photos"
    (folder / "anger").mkdir(parents=True)
    config = TrainConfig(epochs=1, copies=0, validation=str(folder))
    message = f"--validation {folder}: not preprocessed yet; run `fer preprocess {folder} --crop"
    with pytest.raises(DatasetError, match=message + "-size 48` first"):
        train_model(mine, config, tmp_path / "m.npz")


# --- normalisation by each crop's own statistics (--normalisation image) -----------------


def test_image_normalisation_makes_a_model_blind_to_a_photos_brightness_and_contrast(tmp_path):
    from fercli.infer.model import load_model
    from fercli.learn.training import train_model

    dataset = make_dataset(subjects=4)
    config = TrainConfig(epochs=2, copies=0, normalisation="image")
    result = train_model(dataset, config, tmp_path / "image.npz")
    # train_model refuses a file whose NumPy forward pass disagrees with Keras.
    assert result.runtime_difference <= 1e-4
    model = load_model(result.path)
    assert model.per_image and model.meta["format_version"] == 3
    crops = (dataset.crops[:20] // 2) * 2  # even grey levels: halving them is exact
    dimmer = (crops // 2 + 60).astype(np.uint8)
    np.testing.assert_allclose(model.predict_proba(dimmer), model.predict_proba(crops), atol=1e-6)


def test_image_normalisation_needs_no_statistics_of_the_training_set():
    from fercli.infer.model import standardise_each

    crops = np.full((3, 32, 32), 7, np.uint8)
    crops[1, :16] = 200
    mean, std = normalisation(crops, "image")
    assert float(mean) == 0.0 and float(std) == 1.0
    standardised = standardise_each(crops)
    assert np.allclose(standardised[1].mean(), 0) and np.allclose(standardised[1].std(), 1)
    assert np.all(standardised[0] == 0)  # a flat crop stays flat, with no division by zero


def test_a_crossval_with_image_normalisation_saves_an_ensemble_that_agrees_with_keras(
    dataset, tmp_path
):
    from fercli.infer.model import load_model
    from fercli.learn.crossval_files import save_crossval_model

    config = TrainConfig(epochs=1, copies=0, normalisation="image")
    run = cross_validate(dataset, config, folds=2, group="random")
    # Each fold's NumPy network standardises its test crops as Keras did.
    assert [outcome.export.difference <= 1e-4 for outcome in run.outcomes.values()] == [True] * 2
    model = load_model(save_crossval_model(run, tmp_path / "folds.npz"))
    assert model.per_image and len(model.networks) == 2
    assert all(member.per_image for member in model.networks)


def with_sources(dataset):
    """The dataset with a source digest for each crop, as though each came from a file of its
    own (the digest of the file's path, distinct for each)."""
    from fercli.core.hashing import digest_rows, source_digest

    dataset.sources = digest_rows([source_digest(path.encode()) for path in dataset.paths])
    return dataset


def test_train_and_crossval_models_keep_the_source_digests_of_the_images_they_learned_from(
    tmp_path,
):
    from fercli.infer.model import load_model
    from fercli.learn.crossval_files import save_crossval_model
    from fercli.learn.training import train_model

    dataset = with_sources(make_dataset(subjects=2, per_subject=3))
    classes = ("anger", "happiness")
    learned = np.isin(dataset.labels, classes)
    expected = sorted(row.tobytes() for row in dataset.sources[learned])
    assert len(set(expected)) == len(expected) == 12
    config = TrainConfig(epochs=1, copies=0, classes=classes)

    trained = load_model(train_model(dataset, config, tmp_path / "one.npz").path)
    assert [row.tobytes() for row in trained.training_sources] == expected

    # Each fold network learned from all folds but its own: together, every image selected.
    run = cross_validate(dataset, config, folds=2, group="random", workers=1)
    ensemble = load_model(save_crossval_model(run, tmp_path / "folds.npz"))
    assert [row.tobytes() for row in ensemble.training_sources] == expected
    left_out = dataset.sources[~learned][0].tobytes()
    assert ensemble.seen_source(left_out) is False and ensemble.seen_source(expected[0])

    # A dataset without them (FER2013's CSV, or preprocessed before fercli kept them) gives a
    # model that does not say.
    dataset.sources = None
    older = load_model(train_model(dataset, config, tmp_path / "older.npz").path)
    assert older.training_sources is None and older.seen_source(expected[0]) is None


def test_weight_decay_shrinks_the_kernels_and_leaves_the_rest_to_the_loss(dataset):
    selection = select_classes(dataset)
    configure_tensorflow(None)
    norms = {}
    for decay in (0.0, 0.05):
        config = TrainConfig(
            epochs=3, copies=0, variant="vgg", batch_size=32, learning_rate=0.05, weight_decay=decay
        )
        model = fit(selection.crops, selection.targets, 7, config, 0).model
        dense = next(layer for layer in model.layers if type(layer).__name__ == "Dense")
        scale = next(layer for layer in model.layers if "Normalization" in type(layer).__name__)
        norms[decay] = {
            "kernel": float(np.linalg.norm(dense.kernel.numpy())),
            "gamma": float(np.linalg.norm(scale.gamma.numpy())),
        }
    # The hidden layer's kernel decays; a batch normalisation's scale (gamma) does not.
    assert norms[0.05]["kernel"] < 0.9 * norms[0.0]["kernel"]
    assert norms[0.05]["gamma"] > 0.9 * norms[0.0]["gamma"]


def test_label_smoothing_makes_the_network_less_sure_of_itself(dataset):
    from fercli.core.errors import SettingError
    from fercli.learn.fitting import keras_probabilities

    selection = select_classes(dataset)
    configure_tensorflow(None)
    confidence = {}
    for smoothing in (0.0, 0.3):
        config = TrainConfig(epochs=4, copies=0, label_smoothing=smoothing)
        fitted = fit(selection.crops, selection.targets, 7, config, 0)
        model, mean, std = fitted.model, fitted.mean, fitted.std
        probabilities = keras_probabilities(model, selection.crops, mean, std)
        assert np.mean(probabilities.argmax(1) == selection.targets) > 0.5
        confidence[smoothing] = float(probabilities.max(1).mean())
    assert confidence[0.3] < confidence[0.0] - 0.05
    with pytest.raises(SettingError, match="label_smoothing"):
        TrainConfig(label_smoothing=0.9)


def test_keras_probabilities_in_batches_are_the_networks_own_for_every_image():
    """Scoring runs the network KERAS_BATCH images at a time (the held-out images after every
    epoch): each image gets what the network gives it alone, on both sides of a batch's end,
    with the mirror image averaged in where asked."""
    import keras

    from fercli.learn import fitting
    from fercli.learn.network import build_model

    configure_tensorflow(None)
    keras.utils.set_random_seed(0)
    model = build_model(7, "batchnorm-dropout", 32)
    count = fitting.KERAS_BATCH + 3
    crops = np.random.default_rng(0).integers(0, 256, (count, 32, 32), dtype=np.uint8)
    got = fitting.keras_probabilities(model, crops, 120.0, 60.0, flip=True)
    assert got.shape == (count, 7)
    for index in (0, fitting.KERAS_BATCH - 1, fitting.KERAS_BATCH, count - 1):
        x = ((crops[index : index + 1].astype(np.float32) - 120) / 60)[..., np.newaxis]
        alone = np.asarray(model(x, training=False)) + np.asarray(
            model(x[:, :, ::-1], training=False)
        )
        assert np.abs(got[index] - alone[0] / 2).max() < 1e-5
    assert fitting.keras_probabilities(model, crops[:0], 120.0, 60.0).shape == (0, 7)


def test_epochs_in_time_fits_the_limit_at_the_median_pace_and_grows_back():
    from fercli.learn.fitting import epochs_in_time

    limited = TrainConfig(epochs=40, time_limit=10.0)  # 600 s
    assert epochs_in_time(TrainConfig(epochs=40), [1e6]) == 40  # no limit
    assert epochs_in_time(limited, [30.0]) == 20  # 30 s an epoch: 19 more fit
    assert epochs_in_time(limited, [10.0]) == 40  # 60 would fit: still 40
    # A first epoch slowed by other work cuts deep; quicker epochs after it win them back.
    assert epochs_in_time(limited, [120.0]) == 5
    assert epochs_in_time(limited, [120.0, 20.0, 20.0]) == 3 + 22
    assert epochs_in_time(limited, [59.0] * 10) == 10  # not one more: stop here
    assert epochs_in_time(limited, [70.0] * 10) == 10  # over already: never fewer than done


class _Clock:
    """time.perf_counter for fitting: seconds advance only as epochs are trained."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_time_limit_cuts_the_epochs_and_the_schedule_follows(dataset, monkeypatch, tmp_path):
    """An epoch that takes 25 s under a 1-minute limit: the first says two fit, so two are
    trained, the cosine schedule over two, and fer train says so and keeps it in the model."""
    from fercli.infer.model import load_model
    from fercli.learn import fitting
    from fercli.learn.training import train_model

    clock, rates = _Clock(), []
    monkeypatch.setattr(fitting, "time", clock)
    real_epoch, real_schedule = fitting._train_epoch, fitting._schedule

    def slow_epoch(*args):
        clock.now += 25.0
        return real_epoch(*args)

    def schedule(optimizer, config, epoch, epochs):
        real_schedule(optimizer, config, epoch, epochs)
        rates.append((epoch, epochs, round(float(optimizer.learning_rate.numpy()), 6)))

    monkeypatch.setattr(fitting, "_train_epoch", slow_epoch)
    monkeypatch.setattr(fitting, "_schedule", schedule)
    config = TrainConfig(epochs=10, copies=0, lr_schedule="cosine", learning_rate=0.01)
    selection = select_classes(dataset)
    configure_tensorflow(None)
    seen = []
    fitted = fit(
        selection.crops,
        selection.targets,
        7,
        replace(config, time_limit=1.0),
        0,
        on_epoch=lambda *figures: seen.append((figures[0], figures[-1])),
    )
    assert fitted.epochs_trained == 2 and fitted.seconds == 50.0
    assert seen == [(1, 2), (2, 2)]
    assert rates == [(1, 10, 0.01), (2, 2, 0.005)]  # the first epoch's rate is the same in both

    rates.clear()
    unlimited = fit(selection.crops, selection.targets, 7, replace(config, epochs=3), 0)
    assert unlimited.epochs_trained == 3 and [epochs for _, epochs, _ in rates] == [3] * 3

    result = train_model(dataset, replace(config, time_limit=1.0), tmp_path / "cut.npz")
    assert result.epochs == 2
    assert any("--time-limit 1 minutes: 2 of 10 epochs" in note for note in result.notes)
    assert load_model(result.path).meta["epochs_trained"] == [2]
    whole = train_model(dataset, replace(config, epochs=2), tmp_path / "whole.npz")
    assert not any("time-limit" in note for note in whole.notes)
    assert "epochs_trained" not in load_model(whole.path).meta


def test_crossval_reports_each_folds_epochs_and_what_a_time_limit_cut(crossval_run):
    from fercli.learn.crossval import time_limit_warnings
    from fercli.learn.folds import FoldResult

    report, _ = crossval_run
    assert [fold["epochs"] for fold in report.to_json()["folds"]] == [EPOCHS] * FOLDS
    assert time_limit_warnings(TrainConfig(epochs=EPOCHS), report.folds) == []

    def fold(number: int, epochs: int) -> FoldResult:
        return FoldResult(number, 0.5, 90, 10, [], 60.0, epochs=epochs)

    config = TrainConfig(epochs=40, time_limit=36.0)
    folds = [fold(1, 40), fold(2, 23), fold(3, 25)]
    assert time_limit_warnings(config, folds) == [
        "--time-limit 36 minutes: 2 of 3 folds trained 23-25 of 40 epochs; --time-limit 0 "
        "trains them all"
    ]
