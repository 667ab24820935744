"""Images that are themselves a face (FER2013's 48x48 crops): where dlib's detector finds
nothing, the face is found from the image's own landmarks, if the face check passes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import crop_box, write_image
from fercli.cli import app
from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.data.cache import CacheEntry, CropCache
from fercli.faces.align import detect_faces, eye_centres
from fercli.faces.face_crops import is_face_crop
from fercli.faces.pipeline import align_faces, align_images, find_faces
from fercli.learn.training import train_model
from synthetic import make_dataset

# The test photo's face, cropped as FER2013 crops its faces; at 32x32 the detector, whose
# smallest window is 80x80 even one upsampling up, misses it.
TIGHT = (170, 70, 280, 180)
CONFIG = PreprocessConfig()
runner = CliRunner()


@pytest.fixture
def newest_model(fer_home):
    dataset = make_dataset(labels=("anger", "happiness", "surprise"), subjects=2)
    return train_model(
        dataset, TrainConfig(epochs=1, copies=0), fer_home / "models" / "shapes.npz"
    ).path


@pytest.fixture
def tight_face(astronaut_gray) -> np.ndarray:
    face = crop_box(astronaut_gray, TIGHT, 32)
    assert detect_faces(face, CONFIG) == []  # what this test is about
    return face


def test_a_face_crop_the_detector_misses_is_found_from_its_own_landmarks(tight_face):
    found = find_faces(tight_face, CONFIG, every_face=False)
    assert found.whole_image and len(found.detections) == 1
    [face] = align_faces(tight_face)
    assert face.whole_image and face.crop.shape == (32, 32)


def test_its_landmarks_agree_with_the_detectors_on_a_larger_copy(astronaut_gray, tight_face):
    """The same face at 128x128, where the detector finds it: the eye centres found both ways
    (scaled back to the crop) differ by little against the eye distance."""
    larger = crop_box(astronaut_gray, TIGHT, 128)
    [reference] = align_faces(larger)
    assert not reference.whole_image
    [face] = align_faces(tight_face)
    scale = 32 / 128
    left, right = (centre * scale for centre in eye_centres(reference.landmarks))
    distance = float(np.linalg.norm(right - left))
    found_left, found_right = eye_centres(face.landmarks)
    error = max(np.linalg.norm(found_left - left), np.linalg.norm(found_right - right))
    assert error < 0.15 * distance, (error, distance)
    # And the crops look alike: the same face, aligned the same way.
    correlation = np.corrcoef(face.crop.ravel(), reference.crop.ravel())[0, 1]
    assert correlation > 0.7, correlation


@pytest.mark.parametrize(
    "picture",
    [
        np.full((48, 48), 128, np.uint8),
        np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (48, 1)),
    ],
    ids=["grey", "gradient"],
)
def test_no_face_is_made_up_where_there_is_none(picture):
    found = find_faces(picture, CONFIG, every_face=False)
    assert found.detections == [] and not found.whole_image


def test_noise_rarely_passes_the_face_check():
    """dlib's landmark model outlines a face on anything; the face check is what refuses
    noise (bench/face_crops.py: 1.5% of 48x48 noise images pass)."""
    rng = np.random.default_rng(0)
    passed = sum(
        bool(find_faces(rng.integers(0, 256, (48, 48), dtype=np.uint8), CONFIG, False).detections)
        for _ in range(40)
    )
    assert passed <= 3, passed


def test_few_patches_of_the_photo_without_its_face_pass_the_face_check(astronaut_gray):
    """48x48 patches of the test photo away from its face: the face check lets few through
    (bench/face_crops.py measures 3% over more pictures)."""
    rng = np.random.default_rng(1)
    passed = tried = 0
    while tried < 40:
        side = int(rng.integers(40, 160))
        x, y = (int(value) for value in rng.integers(0, 512 - side, 2))
        if x < 340 and x + side > 110 and y < 240 and y + side > 10:
            continue  # overlaps the face
        patch = cv2.resize(astronaut_gray[y : y + side, x : x + side], (48, 48))
        tried += 1
        passed += bool(find_faces(patch, CONFIG, every_face=False).detections)
    assert passed <= 4, passed


def test_only_small_square_images_are_taken_for_face_crops():
    assert is_face_crop(np.zeros((48, 48), np.uint8))
    assert is_face_crop(np.zeros((256, 220), np.uint8))
    assert not is_face_crop(np.zeros((512, 512), np.uint8))  # a photo: faces are in it
    assert not is_face_crop(np.zeros((48, 96), np.uint8))  # a strip, not a face


def test_preprocess_counts_and_names_the_face_crops(tmp_path, astronaut_gray):
    folder = tmp_path / "crops"
    boxes = [TIGHT, (150, 50, 300, 200), (160, 60, 290, 190)]
    for label in ("happiness", "surprise"):
        for number, box in enumerate(boxes):
            write_image(folder / label / f"{number}.png", crop_box(astronaut_gray, box, 32))
    result = runner.invoke(app, ["preprocess", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["aligned"] == 6 and report["face_crops"] >= 2
    assert any("face crops in which the detector found no face" in note for note in report["notes"])


def test_predict_labels_a_face_crop_and_says_how_it_was_found(tmp_path, tight_face, newest_model):
    path = write_image(tmp_path / "face.png", tight_face)
    result = runner.invoke(app, ["predict", str(path), "--json"])
    assert result.exit_code == 0, result.output
    [image] = json.loads(result.stdout)
    [face] = image["faces"]
    assert face["whole_image"] is True


def test_the_cache_tries_again_an_image_an_older_search_found_no_face_in(tmp_path, tight_face):
    cache = CropCache(CONFIG, tmp_path / "cache")
    cache.prepare()
    cache.put("k", CacheEntry(crop=None, reason="no face found"))
    assert cache.get("k") is not None  # remembered by this version
    # As an older fercli wrote it, without the search's version: asked again.
    path = next((tmp_path / "cache").rglob("k.json"))
    path.write_text(json.dumps({"reason": "no face found (tried upsampling 0 and 1)"}))
    assert cache.get("k") is None


# --face-crops: the caller's word that every image is a face crop (FER2013's test split), so
# that a face the face check turns down (a hand over it, the head on one side) is labelled
# rather than counted as no face. The gradient stands for such an image: the check turns it
# down (test_no_face_is_made_up_where_there_is_none), and its landmarks still outline a face.
GRADIENT = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (48, 1))


def test_face_crops_takes_the_face_the_check_turned_down_and_says_so():
    found = find_faces(GRADIENT, CONFIG, every_face=False, face_crops=True)
    assert len(found.detections) == 1 and found.whole_image and not found.face_check
    [(_, outcome)] = align_images([(None, GRADIENT)], CONFIG, face_crops=True)
    [face] = outcome.faces
    assert face.whole_image and not face.face_check and face.crop.shape == (32, 32)
    assert "as a face crop" in outcome.reason  # why it would be no face without the word


def test_face_crops_leaves_the_faces_that_pass_the_check_as_they_were(tight_face):
    [(_, plain)] = align_images([(None, tight_face)], CONFIG)
    [(_, taken)] = align_images([(None, tight_face)], CONFIG, face_crops=True)
    assert taken.faces[0].face_check and np.array_equal(taken.faces[0].crop, plain.faces[0].crop)


def _crops_folder(folder, astronaut_gray):
    """Two classes, each with a face crop the detector misses and a gradient."""
    for label, shift in (("happiness", 0), ("surprise", 10)):
        x0, y0, x1, y1 = TIGHT
        write_image(
            folder / label / "face.png",
            crop_box(astronaut_gray, (x0 + shift, y0, x1 + shift, y1), 32),
        )
        write_image(folder / label / "gradient.png", np.roll(GRADIENT, shift, axis=1))
    return folder


def _preprocessed(folder, *options) -> dict:
    result = runner.invoke(app, ["preprocess", str(folder), "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_preprocess_with_face_crops_aligns_every_image_and_the_cache_keeps_both_ways(
    tmp_path, astronaut_gray
):
    folder = _crops_folder(tmp_path / "crops", astronaut_gray)
    plain = _preprocessed(folder)
    assert plain["aligned"] == 2 and plain["unchecked_faces"] == 0
    assert all("gradient" in item["path"] for item in plain["skipped"])
    taken = _preprocessed(folder, "--face-crops")
    assert taken["aligned"] == 4 and taken["unchecked_faces"] == 2 and not taken["skipped"]
    assert taken["every_image_a_face"] is True
    assert any("--face-crops" in note for note in taken["notes"])
    # The same images again without the word: the cache answers, and the gradients are no
    # faces again.
    again = _preprocessed(folder)
    assert again["aligned"] == 2 and again["cache_hits"] == 4 and len(again["skipped"]) == 2


def test_evaluate_with_face_crops_counts_every_image(tmp_path, astronaut_gray, newest_model):
    folder = _crops_folder(tmp_path / "crops", astronaut_gray)
    reports = []
    for options in ([], ["--face-crops"], []):
        result = runner.invoke(app, ["evaluate", str(folder), "--json", *options])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    plain, taken, again = reports
    assert plain["all_images"]["without_face"] == 2
    assert any("--face-crops labels them too" in note for note in plain["warnings"])
    assert taken["all_images"]["without_face"] == 0
    assert not any("--face-crops labels them too" in note for note in taken["warnings"])
    assert any("preprocessed with --face-crops: 2 faces" in note for note in taken["warnings"])
    assert sum(map(sum, taken["confusion_matrix"])) == 4
    # The dataset evaluate prepared with the word is not taken for one without it.
    assert again["all_images"]["without_face"] == 2


def test_evaluate_with_face_crops_refuses_a_dataset_preprocessed_without_it(
    tmp_path, astronaut_gray, newest_model
):
    folder = _crops_folder(tmp_path / "crops", astronaut_gray)
    made = _preprocessed(folder)
    name = Path(made["dataset"]).parent.name
    result = runner.invoke(app, ["evaluate", name, "--face-crops"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "preprocessed without --face-crops" in result.output and str(folder) in result.output
    taken = _preprocessed(folder, "--face-crops")
    result = runner.invoke(app, ["evaluate", Path(taken["dataset"]).parent.name, "--face-crops"])
    assert result.exit_code == 0, result.output


def test_predict_with_face_crops_labels_the_face_and_marks_it(tmp_path, newest_model):
    path = write_image(tmp_path / "gradient.png", GRADIENT)
    plain = runner.invoke(app, ["predict", str(path), "--json"])
    assert json.loads(plain.stdout)[0]["faces"] == []
    result = runner.invoke(app, ["predict", str(path), "--json", "--face-crops"])
    assert result.exit_code == 0, result.output
    [face] = json.loads(result.stdout)[0]["faces"]
    assert face["whole_image"] is True and face["face_check"] is False
    table = runner.invoke(app, ["predict", str(path), "--face-crops"])
    assert "labelled on the word of --face-crops" in table.stdout
