"""fer predict's library: faces in photos -> labelled probabilities, with a model trained here."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import fercli
from fercli.core.config import TrainConfig
from fercli.core.errors import ModelError
from fercli.core.store import models_dir
from fercli.infer.model import load_model
from fercli.infer.photos import annotate, label_photos
from fercli.learn.training import train_model
from synthetic import make_dataset

CLASSES = ["anger", "happiness", "surprise", "neutral"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny model trained on synthetic shapes (four classes, two epochs)."""
    dataset = make_dataset(labels=tuple(CLASSES), subjects=4)
    output = tmp_path_factory.mktemp("model") / "tiny.npz"
    result = train_model(dataset, TrainConfig(epochs=2), output)
    assert result.path == output and output.is_file()
    return output


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)


@pytest.fixture
def two_faces(astronaut_path, tmp_path) -> Path:
    photo = cv2.imread(str(astronaut_path))
    path = tmp_path / "two.png"
    assert cv2.imwrite(str(path), np.hstack([photo, photo]))
    return path


@pytest.fixture
def blank(tmp_path) -> Path:
    path = tmp_path / "blank.png"
    assert cv2.imwrite(str(path), np.full((300, 400, 3), 200, np.uint8))
    return path


@pytest.fixture
def corrupt(astronaut_path, tmp_path) -> Path:
    """A PNG cut off after its first 3 kB: the header is fine, the pixels are missing."""
    path = tmp_path / "cut.png"
    path.write_bytes(astronaut_path.read_bytes()[:3000])
    return path


def check_face(face, classes: list[str], width: int, height: int) -> None:
    x, y, w, h = face.box
    assert w > 50 and h > 50
    assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
    assert list(face.probabilities) == classes
    assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert all(0 <= p <= 1 for p in face.probabilities.values())
    # Not max(..., key=...) == label: two classes may tie once rounded to 6 decimals, and
    # which comes first then depends on the last bits. Rounding keeps the order, so the
    # label's probability is the largest.
    assert face.probabilities[face.label] == max(face.probabilities.values())


def test_one_face_in_the_test_photo(model, astronaut_path):
    report = label_photos([astronaut_path], model, workers=1)
    assert report.classes == CLASSES
    [image] = report.images
    assert image.path == str(astronaut_path) and image.error is None
    [face] = image.faces
    check_face(face, CLASSES, 512, 512)
    # The box is on the face (eye centres near (203, 101) and (246, 104)).
    x, y, w, h = face.box
    assert x < 203 and 246 < x + w and y < 101 < y + h
    assert report.processed == 1 and report.problems == []


def test_face_prediction_uses_the_models_runtime_on_the_aligned_crop(model, astronaut_path):
    from fercli.api import align_faces
    from fercli.media.images import load_gray

    [aligned] = align_faces(load_gray(astronaut_path), model.preprocess)
    expected = model.predict_proba(aligned.crop[np.newaxis])[0]
    [face] = label_photos([astronaut_path], model, workers=1).images[0].faces
    assert list(face.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)


def test_two_faces_side_by_side(model, two_faces):
    [image] = label_photos([two_faces], model, workers=1).images
    assert len(image.faces) == 2
    for face in image.faces:
        check_face(face, CLASSES, 1024, 512)
    left, right = sorted(image.faces, key=lambda face: face.box[0])
    assert left.box[0] + left.box[2] <= 512 <= right.box[0]
    # Each box is on its copy's eyes (near (203, 101) and (246, 104) in the photo). The two
    # boxes need not be equal: dlib's image pyramid does not see both copies alike.
    for face, offset in ((left, 0), (right, 512)):
        x, y, w, h = face.box
        assert x < 203 + offset and 246 + offset < x + w and y < 101 < y + h


def test_a_small_face_next_to_a_large_one_is_found(model, astronaut_path, tmp_path):
    """A group photo: the face further from the camera (44 px, too small for dlib without
    upsampling) is found although the large one is found without."""
    from fercli.core.config import PreprocessConfig
    from fercli.faces.align import detect_faces

    face = cv2.imread(str(astronaut_path))[20:230, 120:330]  # the face, ~130 px of 210
    canvas = np.full((300, 420, 3), 110, np.uint8)
    canvas[30:270, 10:250] = cv2.resize(face, (240, 240), interpolation=cv2.INTER_AREA)
    canvas[100:171, 300:371] = cv2.resize(face, (71, 71), interpolation=cv2.INTER_AREA)
    path = tmp_path / "group.png"
    assert cv2.imwrite(str(path), canvas)
    [image] = label_photos([path], model, workers=1).images
    boxes = sorted(face.box for face in image.faces)
    assert len(boxes) == 2, boxes
    (large_x, _, large_width, _), (small_x, _, small_width, _) = boxes
    assert large_x < 250 and large_width > 90
    assert small_x >= 290 and 30 <= small_width <= 60
    # Preprocessing keeps the largest face only: it still searches one level.
    gray = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
    assert len(detect_faces(gray, PreprocessConfig())) == 1


def test_the_box_of_a_face_cut_by_the_edge_stays_inside_the_image(model, astronaut_path, tmp_path):
    photo = cv2.imread(str(astronaut_path))
    path = tmp_path / "edge.png"
    assert cv2.imwrite(str(path), np.ascontiguousarray(photo[:, 185:]))  # the left eye near x = 18
    [image] = label_photos([path], model, workers=1).images
    [face] = image.faces
    check_face(face, CLASSES, 512 - 185, 512)


def test_an_image_without_a_face_is_no_error(model, blank):
    report = label_photos([blank], model, workers=1)
    [image] = report.images
    assert image.faces == [] and image.error is None
    assert image.to_json() == {"path": str(blank), "faces": []}
    assert report.processed == 1


def test_a_corrupt_file_is_reported_and_the_rest_still_processed(
    model, corrupt, astronaut_path, tmp_path
):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    damaged = tmp_path / "damaged.png"
    pixels = bytearray(astronaut_path.read_bytes())
    pixels[5000:20000] = bytes(15000)  # whole file, zeroed compressed data
    damaged.write_bytes(bytes(pixels))
    missing = tmp_path / "gone.jpg"
    report = label_photos([corrupt, astronaut_path, text, damaged, missing], model, workers=1)
    by_path = {image.path: image for image in report.images}
    assert set(by_path) == {str(corrupt), str(astronaut_path), str(text), str(damaged)}
    assert by_path[str(corrupt)].error == "truncated PNG (no IEND chunk at the end)"
    assert by_path[str(damaged)].error == "corrupt or truncated PNG (the decoder gave up)"
    assert by_path[str(text)].error == "not an image (unrecognised content)"
    assert by_path[str(corrupt)].to_json()["error"] == by_path[str(corrupt)].error
    assert (
        len(by_path[str(astronaut_path)].faces) == 1 and by_path[str(astronaut_path)].error is None
    )
    assert [(problem.path, problem.reason) for problem in report.problems] == [
        (str(missing), "no such file or folder")
    ]
    assert report.processed == 1


def test_a_folder_is_searched_and_an_empty_folder_reported(model, astronaut_path, blank, tmp_path):
    photos = tmp_path / "photos"
    (photos / "inner").mkdir(parents=True)
    (photos / "inner" / "a.png").write_bytes(astronaut_path.read_bytes())
    (photos / "b.png").write_bytes(blank.read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    report = label_photos([photos, empty], model, workers=1)
    assert [Path(image.path).name for image in report.images] == ["b.png", "a.png"]
    assert [len(image.faces) for image in report.images] == [0, 1]
    assert [(problem.path, problem.reason) for problem in report.problems] == [
        (str(empty), "folder has no files")
    ]
    only_empty = label_photos([empty], model, workers=1)
    assert only_empty.images == [] and only_empty.processed == 0 and len(only_empty.problems) == 1


def test_progress_is_reported_per_image(model, astronaut_path, blank):
    calls = []
    label_photos(
        [astronaut_path, blank],
        model,
        workers=1,
        progress=lambda event: calls.append((event.kind, event.done, event.total)),
    )
    assert calls == [("items", 0, 2), ("items", 1, 2), ("items", 2, 2)]


def test_annotated_copies_have_the_size_of_the_originals(
    model, astronaut_path, two_faces, corrupt, tmp_path
):
    report = label_photos([astronaut_path, two_faces, corrupt], model, workers=1)
    folder = tmp_path / "annotated"
    written = annotate(report, folder)
    assert sorted(path.name for path in written) == ["astronaut.png", "two.png"]
    for path, size in zip(sorted(written), [(512, 512), (512, 1024)], strict=True):
        picture = cv2.imread(str(path))
        assert picture.shape[:2] == size
    original = cv2.imread(str(astronaut_path))
    drawn = cv2.imread(str(folder / "astronaut.png"))
    assert not np.array_equal(original, drawn)  # a box was drawn


def test_without_a_model_the_user_is_told_to_train_one():
    assert not models_dir().exists()
    with pytest.raises(ModelError) as caught:
        load_model(None)
    # Words for the library's users: the command line's (--model) are fer's to say.
    assert str(caught.value) == (
        f"no trained model in {models_dir()}: train one (fer train, or fercli.train in Python) "
        "or give a model file's path"
    )
    with pytest.raises(ModelError) as through_the_api:
        fercli.load_model()
    assert str(through_the_api.value) == str(caught.value)


def test_the_most_recent_model_is_the_default(model_path):
    models_dir().mkdir(parents=True)
    (models_dir() / "old.npz").write_bytes(model_path.read_bytes())
    newest = models_dir() / "new.npz"
    newest.write_bytes(model_path.read_bytes())
    os.utime(models_dir() / "old.npz", (1_000_000_000, 1_000_000_000))
    assert load_model(None).path == newest
    assert load_model().path == fercli.load_model().path == newest


def test_a_model_option_that_is_not_a_model_is_refused(tmp_path, astronaut_path):
    with pytest.raises(ModelError, match="astronaut.png: not a fercli model file"):
        load_model(astronaut_path)
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "missing.npz")


def test_workers_give_what_one_process_gives(
    model, astronaut_path, two_faces, blank, corrupt, tmp_path
):
    # Images of every kind, a large one among them, in workers forked after this process
    # loaded the landmark model.
    photo = cv2.imread(str(astronaut_path))
    large = tmp_path / "large.png"
    assert cv2.imwrite(str(large), cv2.resize(photo, None, fx=2.5, fy=2.5))
    assert cv2.imread(str(large), cv2.IMREAD_GRAYSCALE).size > 1 << 20
    paths = [astronaut_path, two_faces, blank, corrupt, large, astronaut_path, two_faces, large]

    reports = [label_photos(paths, model, workers=workers) for workers in (1, 2)]

    one, two = ([image.to_json() for image in report.images] for report in reports)
    assert two == one
    assert [len(image["faces"]) for image in one] == [1, 2, 0, 0, 1, 1, 2, 1]
    assert "error" in one[3]


def test_labels_follow_their_face_stay_inside_the_image_and_have_a_background():
    from fercli.media.drawing import labelled_box, line_thickness

    green = (0, 200, 0)
    small, large = np.zeros((512, 512, 3), np.uint8), np.zeros((2048, 2048, 3), np.uint8)
    box = (200, 200, 60, 60)
    # The same face gets the same label however large the picture (not 4x on 4x the pixels).
    on_small = labelled_box(small, box, "1 happiness 0.91", green, line_thickness(small))
    on_large = labelled_box(large, box, "1 happiness 0.91", green, line_thickness(large))
    assert on_small[2:] == on_large[2:]
    # A larger face, a larger label; never wider than needed to be read over the face.
    big_face = labelled_box(large.copy(), (400, 400, 400, 400), "1 happiness 0.91", green, 2)
    assert big_face[3] > on_large[3] and big_face[2] <= 400 + 2 * big_face[3]
    # A filled label: mostly the box's colour behind the text.
    x, y, width, height = on_small
    assert (small[y : y + height, x : x + width] == green).all(axis=2).mean() > 0.5
    assert y + height <= box[1]  # above the face
    # A face at the top right corner: the label stays whole inside the picture.
    corner = np.zeros((300, 300, 3), np.uint8)
    x, y, width, height = labelled_box(corner, (260, 0, 40, 40), "2 surprise 0.50", green, 1)
    assert 0 <= x and x + width <= 300 and 0 <= y and y + height <= 300
    assert line_thickness(small) >= 2 and line_thickness(np.zeros((300, 300))) == 1


def test_predict_searches_the_folders_it_is_given_once(
    model, astronaut_path, tmp_path, monkeypatch
):
    # One discovery a command: the annotation and explanation folders' checks, the photos and
    # the videos all use the files found once.
    from fercli.api import label_media
    from fercli.media import discover as discover_module

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (photos / name).write_bytes(astronaut_path.read_bytes())
    looked_at = []
    real = discover_module._may_be_image

    def counted(path: Path) -> bool:
        looked_at.append(path.name)
        return real(path)

    monkeypatch.setattr(discover_module, "_may_be_image", counted)
    media = label_media(
        [photos], model, workers=1, annotate=tmp_path / "seen", explain=tmp_path / "why"
    )

    assert media.images.processed == 3 and len(media.explained) == 3
    assert sorted(looked_at) == ["a.png", "b.png", "c.png"]


# --- what fer predict says of its answers ------------------------------------------------


def collapsing_model(
    path: Path, training: dict, classes=("anger", "surprise", "neutral"), images: int = 0
) -> Path:
    """A model file that calls every face "surprise" (its bias), trained as training says (on
    a dataset of that many images, where given)."""
    from test_model_safety import write_model

    bias = np.array([5.0 if name == "surprise" else 0.0 for name in classes], np.float32)
    changes: dict = {"training": training}
    if images:
        changes["dataset"] = {"name": "fer2013-train", "images": images}
    return write_model(path, list(classes), meta_changes=changes, arrays={"layer1_bias": bias})


@pytest.fixture
def twenty_faces(astronaut_path, tmp_path) -> Path:
    """A folder of 20 photos of one face, each with its own noise and tilt: enough answers to
    call a collapse, and distinct faces that vary enough to --adapt to."""
    from conftest import write_image

    photo = cv2.imread(str(astronaut_path))
    folder = tmp_path / "twenty"
    for number in range(20):
        rng = np.random.default_rng(number)
        turn = cv2.getRotationMatrix2D((256, 256), float(rng.uniform(-4, 4)), 1.0)
        tilted = cv2.warpAffine(photo, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
        noisy = np.clip(tilted + rng.normal(0, 12, tilted.shape), 0, 255).astype(np.uint8)
        write_image(folder / f"{number:02d}.png", noisy)
    return folder


def predict_output(*args) -> str:
    from typer.testing import CliRunner

    from fercli.cli import app

    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the warning unwrapped


def test_the_collapse_warning_advises_only_what_was_not_done(twenty_faces, tmp_path):
    from fercli.core.config import TrainConfig
    from fercli.core.recipes import recipe_config

    paper = collapsing_model(tmp_path / "paper.npz", TrainConfig().to_dict())
    robust = collapsing_model(tmp_path / "robust.npz", recipe_config("robust").to_dict())

    plain = predict_output(twenty_faces, "--model", paper)
    assert "answers: surprise 100%" in plain
    assert "warning: surprise takes 100% of the 20 answers" in plain
    assert "try --adapt" in plain and "recipe for photos from elsewhere" in plain
    assert "more varied data" in plain

    adapted = predict_output(twenty_faces, "--model", paper, "--adapt")
    assert "warning: surprise takes 100%" in adapted
    assert "--adapt was given; try a model trained with the recipe for photos" in adapted
    assert "try --adapt" not in adapted
    # What was adapted is named as it was given: the photos of that folder.
    assert f"note: the photos in {twenty_faces}: adapted to the 20 faces" in adapted

    jittered = predict_output(twenty_faces, "--model", robust)
    assert "try --adapt" in jittered and "recipe for photos from elsewhere" not in jittered

    # Both done: what is left is more varied data, and nothing already done is advised.
    both = predict_output(twenty_faces, "--model", robust, "--adapt")
    assert "what is left to try is a model trained on more varied data" in both
    assert "try --adapt" not in both and "--recipe robust" not in both


def test_a_model_trained_on_photos_from_anywhere_is_advised_fine_tuning(twenty_faces, tmp_path):
    from fercli.core.recipes import recipe_config

    general = collapsing_model(
        tmp_path / "general.npz", recipe_config("general").to_dict(), images=27_369
    )
    plain = predict_output(twenty_faces, "--model", general)
    assert "try --adapt, or fine-tuning it on some labelled photos like these" in plain
    assert "more varied data" not in plain  # it was trained on such data
    both = predict_output(twenty_faces, "--model", general, "--adapt")
    assert "the model was trained on photos from anywhere" in both
    assert "what is left to try is fine-tuning it" in both and "try --adapt" not in both


def test_a_video_gets_its_answer_shares_and_collapse_warning(tmp_path):
    from clips import write_clip
    from fercli.core.config import TrainConfig

    clip = write_clip(tmp_path / "clip.avi", 12)
    model = collapsing_model(tmp_path / "paper.npz", TrainConfig().to_dict())
    output = predict_output(clip, "--model", model)
    assert "model paper.npz" in output  # which model answered, as for photos
    assert f"answers: {clip}: surprise 100%" in output
    assert (
        f"warning: {clip}: surprise takes 100% of the 12 faces labelled in its frames: unless "
        "its people show surprise throughout, the model has collapsed"
    ) in output


def test_a_model_without_neutral_says_so_once(astronaut_path, tmp_path, model_path):
    from fercli.core.config import TrainConfig

    no_neutral = collapsing_model(
        tmp_path / "ck.npz", TrainConfig().to_dict(), ("anger", "surprise")
    )
    output = predict_output(astronaut_path, astronaut_path, "--model", no_neutral)
    assert output.count("has no neutral class") == 1
    assert (
        "ck.npz: the model has no neutral class, so it gives every face one of its emotions"
        in output
    )
    # A model with a neutral class says nothing of it.
    assert "neutral class" not in predict_output(astronaut_path, "--model", model_path)


def test_all_scores_shows_every_class_in_the_table(two_faces, model_path):
    from typer.testing import CliRunner

    from fercli.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    plain = runner.invoke(app, ["predict", str(two_faces), "--model", str(model_path)])
    every = runner.invoke(
        app, ["predict", str(two_faces), "--model", str(model_path), "--all-scores"]
    )
    assert plain.exit_code == every.exit_code == 0, every.output

    def table(output: str) -> list[list[str]]:
        return [
            [cell.strip() for cell in line.split("┃" if "┃" in line else "│")[1:-1]]
            for line in output.splitlines()
            if line.startswith(("┃", "│"))
        ]

    header, *rows = table(every.stdout)
    assert header == ["image", "face", "box (x, y, w, h)", "label", *CLASSES]
    assert len(rows) == 2
    for row in rows:
        scores = [float(cell) for cell in row[4:]]
        assert sum(scores) == pytest.approx(1, abs=0.03)  # each rounded to 2 decimals
        assert scores[CLASSES.index(row[3])] == max(scores)
    assert table(plain.stdout)[0] == ["image", "face", "box (x, y, w, h)", "label", "p"]
