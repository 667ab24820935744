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
    with pytest.raises(FerError, match=f"at least {MIN_FACES} distinct faces"):
        adapt_model(batchnorm_model, people.crops)


def test_copies_of_one_face_are_one_face(batchnorm_model):
    # Issue 32.6: 25 copies of one photo passed the 20-face minimum and gave every face the
    # same label (their deviation, 0, zeroed every input).
    people = make_dataset(labels=LABELS, subjects=4, seed=14)
    with pytest.raises(FerError, match=r"20 distinct faces.* there is 1 in the photos \(25 faces"):
        adapt_model(batchnorm_model, np.repeat(people.crops[:1], 25, axis=0), where="the photos")
    # Twelve faces, each given twice, are twelve.
    with pytest.raises(FerError, match="there are 12 in"):
        adapt_model(batchnorm_model, np.concatenate([people.crops[:12]] * 2))
    _, adaptation = adapt_model(batchnorm_model, np.concatenate([people.crops[:20]] * 2))
    assert (adaptation.faces, adaptation.distinct_faces) == (40, 20)


def test_a_set_whose_pixels_hardly_vary_is_refused(batchnorm_model):
    # Distinct by one grey level here and there, but one picture: nothing to estimate.
    face = make_dataset(labels=LABELS, subjects=1, seed=15).crops[0]
    copies = np.repeat(face[np.newaxis], 30, axis=0)
    for number, copy in enumerate(copies):
        copy.flat[number] ^= 1
    with pytest.raises(FerError, match="nearly the same picture"):
        adapt_model(batchnorm_model, copies)


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
    assert f"--adapt needs at least {MIN_FACES} distinct faces" in result.output
    assert "Traceback" not in result.output


def test_fer_predict_adapt_counts_a_photo_once_however_often_it_is_given(
    batchnorm_model, astronaut_path, tmp_path
):
    from typer.testing import CliRunner

    from fercli.cli import app

    copies = []
    for number in range(25):
        copy = tmp_path / f"copy{number:02d}.png"
        copy.write_bytes(astronaut_path.read_bytes())
        copies.append(str(copy))
    model = ["--model", str(batchnorm_model.path), "--adapt"]
    runner = CliRunner()
    for arguments in ([*copies], [str(astronaut_path)] * 25):
        result = runner.invoke(app, ["predict", *arguments, *model])
        assert result.exit_code == 1, result.output
        assert "needs at least 20 distinct faces" in result.output
        assert "there is 1 in the photos (25 faces" in " ".join(result.output.split())
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
    # So a darker, flatter camera adapts to the very same model, when the per-pixel map keeps
    # the crops' contrast (global statistics only, or mean and deviation per pixel).
    darker = (crops // 2 + 60).astype(np.uint8)
    for pixels in ("none", "mean+std"):
        same, _ = adapt_model(model, crops, pixels=pixels)
        other, _ = adapt_model(model, darker, pixels=pixels)
        np.testing.assert_allclose(
            other.predict_proba(darker), same.predict_proba(crops), atol=1e-6
        )


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


# --- per pixel (issue 35.5) -----------------------------------------------------------------


def with_a_pattern(crops: np.ndarray) -> np.ndarray:
    """The same faces under a fixed pattern of light (one class's shape, brighter), flatter:
    a shift of each pixel's statistics that one mean and deviation cannot undo."""
    from synthetic import SHAPES, draw_shape

    pattern = 90 * draw_shape(SHAPES[1])
    return np.clip(crops.astype(np.float64) * 0.7 + pattern, 0, 255).astype(np.uint8)


def test_the_model_file_keeps_its_training_crops_per_pixel_statistics(batchnorm_model):
    training = make_dataset(labels=LABELS, subjects=6)
    pixels = batchnorm_model.pixel_statistics
    assert pixels.images == len(training.crops)
    assert pixels.mean.shape == pixels.std.shape == training.crops.shape[1:]
    np.testing.assert_allclose(pixels.mean, training.crops.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(pixels.std, training.crops.std(axis=0), atol=1e-3)


def test_adapting_per_pixel_undoes_a_pattern_one_mean_cannot(batchnorm_model):
    people = make_dataset(labels=LABELS, subjects=4, seed=11)
    clean = accuracy(batchnorm_model, people)
    people.crops = with_a_pattern(people.crops)
    globally, _ = adapt_model(batchnorm_model, people.crops, pixels="none")
    adapted, adaptation = adapt_model(batchnorm_model, people.crops)
    scaled, _ = adapt_model(batchnorm_model, people.crops, pixels="mean+std")

    assert accuracy(globally, people) < clean - 0.2  # the global statistics cannot
    assert accuracy(adapted, people) >= clean - 0.1  # the per-pixel mean can
    assert accuracy(scaled, people) >= clean - 0.1
    assert adaptation.pixel_map == "mean" and adaptation.note is None
    assert "per-pixel mean mapped onto the training crops'" in adaptation.describe()
    assert adaptation.to_json()["per_pixel"] == "mean"
    # The mapped crops' mean image is the training crops'.
    mapped = adapted.pixel_map(people.crops)
    np.testing.assert_allclose(mapped.mean(axis=0), batchnorm_model.pixel_statistics.mean)


def test_an_older_model_file_adapts_as_before_and_says_so(batchnorm_model, tmp_path):
    from test_model import rewrite

    with np.load(batchnorm_model.path, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files}
    meta = json.loads(bytes(content["meta"]).decode())
    del meta["pixel_statistics"], content["pixel_mean"], content["pixel_std"]
    content["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "older.npz", **content)
    # A later fercli's statistics in a form this one does not know are left aside the same way.
    newer = rewrite(
        batchnorm_model.path,
        tmp_path / "newer.npz",
        {"pixel_statistics": {"version": 2, "mean": "pixel_mean"}},
    )
    people = make_dataset(labels=LABELS, subjects=4, seed=11)
    people.crops = with_a_pattern(people.crops)
    globally, _ = adapt_model(batchnorm_model, people.crops, pixels="none")
    for path in (tmp_path / "older.npz", newer):
        model = load_model(path)
        assert model.pixel_statistics is None
        # It predicts as the file with them does: they are for --adapt only.
        np.testing.assert_array_equal(
            model.predict_proba(people.crops), batchnorm_model.predict_proba(people.crops)
        )
        adapted, adaptation = adapt_model(model, people.crops)
        assert adaptation.pixel_map is None and adapted.pixel_map is None
        assert "holds no per-pixel statistics" in adaptation.describe()
        assert "holds no per-pixel statistics" in adaptation.to_json()["note"]
        np.testing.assert_allclose(
            adapted.predict_proba(people.crops), globally.predict_proba(people.crops)
        )


@pytest.mark.parametrize(
    ("meta", "arrays"),
    [
        ({"pixel_statistics": {"version": 1, "mean": "pixel_mean"}}, {}),
        ({"pixel_statistics": "yes"}, {}),
        ({"pixel_statistics": {"version": 1, "mean": ["x"], "std": "pixel_std", "images": 9}}, {}),
        ({}, {"pixel_mean": np.zeros((8, 8), np.float32)}),
        ({}, {"pixel_std": np.full((32, 32), np.nan, np.float32)}),
        ({}, {"pixel_mean": np.full((32, 32), 300, np.float32)}),
        ({}, {"pixel_mean": np.zeros((32, 32), np.int64)}),
    ],
)
def test_damaged_per_pixel_statistics_are_refused_in_one_line(
    batchnorm_model, tmp_path, meta, arrays
):
    from fercli.core.errors import ModelError
    from test_model import rewrite

    damaged = rewrite(batchnorm_model.path, tmp_path / "damaged.npz", meta, arrays)
    with pytest.raises(ModelError, match=r"damaged\.npz: damaged model file \(.*pixel"):
        load_model(damaged)


def test_an_adapted_model_explains_with_a_patch_of_its_training_grey(batchnorm_model):
    # Occluding with the grey that the adapted model's map takes to the z-scored 0.
    from fercli.infer.explain import explain_crops, grey_crop

    people = make_dataset(labels=LABELS, subjects=4, seed=11)
    people.crops = with_a_pattern(people.crops)
    adapted, _ = adapt_model(batchnorm_model, people.crops)
    grey = grey_crop([adapted.mean], 32, False, adapted.pixel_map)
    assert np.abs(adapted.normalise(grey[np.newaxis])).max() < 0.05
    [explained] = explain_crops(adapted, people.crops[:1], [(0, 0, 32, 32)])
    assert explained.probability == pytest.approx(adapted.predict_proba(people.crops[:1]).max())


def test_adapt_pixels_chooses_the_map_from_every_door(batchnorm_model, tmp_path):
    from typer.testing import CliRunner

    from fercli.api import evaluate_model
    from fercli.cli import app
    from synthetic import save_synthetic

    people = make_dataset(labels=LABELS, subjects=4, seed=16)
    people.crops = with_a_pattern(people.crops)
    people.meta["source"] = "/a/pattern"
    save_synthetic(people, "pattern")
    model = ["--model", str(batchnorm_model.path)]
    runner = CliRunner()
    reports = {}
    for pixels in ("mean", "mean+std", "none"):
        result = runner.invoke(
            app, ["evaluate", "pattern", *model, "--adapt", "--adapt-pixels", pixels, "--json"]
        )
        assert result.exit_code == 0, result.output
        reports[pixels] = json.loads(result.stdout)["protocol"]["adapted"]
    assert [reports[name]["per_pixel"] for name in ("mean", "mean+std", "none")] == [
        "mean",
        "mean+std",
        None,
    ]
    plain = runner.invoke(app, ["evaluate", "pattern", *model, "--adapt", "--json"])
    assert json.loads(plain.stdout)["protocol"]["adapted"]["per_pixel"] == "mean"  # the default
    alone = runner.invoke(app, ["evaluate", "pattern", *model, "--adapt-pixels", "mean"])
    assert alone.exit_code == 1 and "--adapt-pixels goes with --adapt" in alone.output
    with pytest.raises(FerError, match="adapt must be True, False or one of mean, mean"):
        evaluate_model("pattern", batchnorm_model, adapt="median", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before any work
    report = evaluate_model("pattern", batchnorm_model, adapt="none", output=tmp_path / "y")
    assert report.protocol["adapted"]["per_pixel"] is None
