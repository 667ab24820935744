"""The FER2013 CSV layout, with small CSVs written here from the test photo's face at 48x48."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TIGHT_FACE_BOX, crop_box
from fercli.cli import app
from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.core.errors import DatasetError, LayoutError
from fercli.data.fer2013 import is_fer2013, preprocess_fer2013
from fercli.data.prepared import load_dataset
from fercli.data.preprocess import preprocess_dataset
from fercli.infer.model import load_model
from fercli.learn.crossval import cross_validate
from fercli.learn.evaluate import dataset_split

runner = CliRunner()
HEADER = "emotion,pixels,Usage\n"


def fer(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def face48(gray: np.ndarray, index: int) -> np.ndarray:
    """A distinct 48x48 face: the test photo's, mirrored for odd indices, a little brighter or
    darker."""
    face = crop_box(gray, TIGHT_FACE_BOX, 48)
    if index % 2:
        face = face[:, ::-1]
    return np.clip(face.astype(np.int16) + (index // 2) * 2 - 8, 0, 255).astype(np.uint8)


def row(label, image: np.ndarray, usage: str = "Training") -> str:
    return f"{label},{' '.join(map(str, image.ravel().tolist()))},{usage}\n"


@pytest.fixture
def fer_csv(astronaut_gray, tmp_path) -> Path:
    """8 faces (labels 3 and 6, three splits), one blank image, and three bad rows."""
    lines = [HEADER]
    usages = [
        "Training",
        "Training",
        "Training",
        "Training",
        "PublicTest",
        "PrivateTest",
        "PrivateTest",
        "Training",
    ]
    for index, usage in enumerate(usages):
        lines.append(row(3 if index % 2 == 0 else 6, face48(astronaut_gray, index), usage))
    lines.append(row(0, np.full((48, 48), 128, np.uint8)))  # row 10: no face
    lines.append("3,1 2 3,Training\n")  # row 11: wrong pixel count
    lines.append(row(9, face48(astronaut_gray, 0)))  # row 12: label out of range
    lines.append(row(-1, face48(astronaut_gray, 0)))  # row 13: label out of range
    path = tmp_path / "fer2013.csv"
    path.write_text("".join(lines))
    return path


def test_the_layout_is_detected_by_its_header(fer_csv, tmp_path):
    assert is_fer2013(fer_csv)
    other = tmp_path / "other.csv"
    other.write_text("label,image\n1,2\n")
    assert not is_fer2013(other)
    assert not is_fer2013(tmp_path)


def test_rows_are_aligned_and_bad_rows_skipped_with_the_reason(fer_csv):
    report = preprocess_dataset(fer_csv, workers=1)
    assert report.layout == "fer2013"
    assert report.found == 12 and report.aligned == 8
    reasons = {item.path.rsplit("#", 1)[1]: item.reason for item in report.skipped}
    assert reasons["row11"] == "row 11: 3 pixels, not 2304 (48x48)"
    assert reasons["row12"] == "row 12: label '9' is not one of 0-6"
    assert reasons["row13"] == "row 13: label '-1' is not one of 0-6"
    assert "no face found" in reasons["row10"] and "48x48" in reasons["row10"]
    assert "1 of 9 faces not found in their 48x48 image (skipped)" in report.notes
    assert report.face_crops == 0  # the detector found every face it aligned
    dataset = load_dataset(Path(report.dataset))
    assert dataset.crops.shape == (8, 32, 32)
    assert sorted(set(dataset.labels.tolist())) == ["happiness", "neutral"]
    assert dataset.splits.tolist() == ["Training"] * 4 + [
        "PublicTest",
        "PrivateTest",
        "PrivateTest",
        "Training",
    ]
    assert dataset.meta["layout"] == "fer2013" and dataset.meta["splits"] == [
        "PrivateTest",
        "PublicTest",
        "Training",
    ]


def test_face_crops_takes_a_row_the_face_check_turned_down_and_counts_it(fer_csv):
    """--face-crops: every row is a face crop, so the blank one is taken at its word."""
    report = preprocess_dataset(fer_csv, workers=1, face_crops=True)
    assert report.aligned == 9 and report.unchecked_faces == 1 and report.face_crops == 1
    assert not any(item.path.endswith("#row10") for item in report.skipped)
    assert any("--face-crops" in note for note in report.notes)
    dataset = load_dataset(Path(report.dataset))
    assert dataset.meta["every_image_a_face"] is True and len(dataset.crops) == 9


def test_rows_whose_pixels_are_not_whole_numbers_from_0_to_255_are_skipped(
    astronaut_gray, tmp_path
):
    from fercli.data.fer2013 import read_rows

    pixels = face48(astronaut_gray, 0).ravel().tolist()
    tabbed = "\t".join(map(str, pixels))
    lines = [HEADER, row(3, face48(astronaut_gray, 0))]
    for bad in ("1.5", "x", "1e2", "99999999999999999999", "256"):
        lines.append(f"3,{' '.join([bad] + list(map(str, pixels[1:])))},Training\n")
    lines.append(f'3,"{tabbed}",Training\n')  # other white space between the numbers is read too
    path = tmp_path / "fer2013.csv"
    path.write_text("".join(lines))
    skipped = []

    rows = list(read_rows(path, skipped))

    assert [number for number, *_ in rows] == [2, 8]
    assert np.array_equal(rows[0][3], face48(astronaut_gray, 0)) and np.array_equal(
        rows[1][3], rows[0][3]
    )
    assert [item.reason for item in skipped] == [
        "row 3: the pixels are not whole numbers",
        "row 4: the pixels are not whole numbers",
        "row 5: the pixels are not whole numbers",
        "row 6: a pixel value outside 0-255",  # too large for any integer type: no traceback
        "row 7: a pixel value outside 0-255",
    ]


def test_a_large_csv_gets_48x48_crops_when_no_size_is_named(fer_csv, monkeypatch):
    """The rows are counted before any is aligned; 12 rows stand for FER2013's 35,887 here."""
    from fercli.core import recipes

    monkeypatch.setattr(recipes, "GENERAL_FROM_IMAGES", 12)
    report = preprocess_dataset(fer_csv, workers=1, size_by_images=True)
    assert report.crop_size == 48
    assert load_dataset(Path(report.dataset)).crops.shape[1:] == (48, 48)
    assert any(note.startswith("crops of 48x48, chosen for 12 images") for note in report.notes)
    monkeypatch.setattr(recipes, "GENERAL_FROM_IMAGES", 13)
    report = preprocess_dataset(fer_csv, workers=1, size_by_images=True)
    assert report.crop_size == 32
    assert not any(note.startswith("crops of") for note in report.notes)


def test_workers_give_what_one_process_gives(fer_csv):
    one = load_dataset(Path(preprocess_fer2013(fer_csv, PreprocessConfig(), workers=1).dataset))
    two = load_dataset(Path(preprocess_fer2013(fer_csv, PreprocessConfig(), workers=2).dataset))
    assert np.array_equal(one.crops, two.crops) and one.paths.tolist() == two.paths.tolist()


def test_a_bad_header_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("emotion,image,Usage\n0,1 2,Training\n")
    with pytest.raises(
        LayoutError,
        match=r"not a FER2013 CSV: the header is 'emotion,image,Usage', expected "
        r"emotion,pixels,Usage",
    ):
        preprocess_fer2013(path, PreprocessConfig(), workers=1)
    result = fer("preprocess", "--layout", "fer2013", path)
    assert (
        result.exit_code == 1
        and result.stderr.count("\n") == 1
        and "not a FER2013 CSV" in result.stderr
    )


def test_splits_select_training_and_test_images(fer_csv):
    dataset = load_dataset(Path(preprocess_dataset(fer_csv, workers=1).dataset))
    assert len(dataset_split(dataset, "Training").crops) == 5
    assert len(dataset_split(dataset, "PrivateTest").crops) == 2
    # The blank row (anger, Training) is counted where it belongs, for fer evaluate.
    assert dataset.unaligned() == {"anger": 1}
    assert dataset_split(dataset, "Training").unaligned() == {"anger": 1}
    assert dataset_split(dataset, "PrivateTest").unaligned() == {}
    with pytest.raises(
        DatasetError, match="no split 'Validation'; it has PrivateTest, PublicTest, Training"
    ):
        dataset_split(dataset, "Validation")


def test_train_on_one_split_and_evaluate_on_another(fer_csv):
    result = fer("preprocess", "--json", "--workers", "1", fer_csv)
    assert result.exit_code == 0, result.output
    name = Path(json.loads(result.stdout)["dataset"]).parent.name
    trained = fer("train", "--epochs", "1", "--copies", "0", "--split", "Training", "--json", name)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["images"] == 5
    model = load_model(Path(summary["model"]))
    assert model.meta["dataset"]["split"] == "Training"
    evaluated = fer("evaluate", "--split", "PrivateTest", "--json", name)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["dataset"]["images"] == 2 and report["dataset"]["split"] == "PrivateTest"
    # The PrivateTest faces are not crops the model was trained on.
    assert not any("trained on" in note for note in report["warnings"])


def test_train_takes_the_training_split_unless_told_otherwise(fer_csv):
    """fer preprocess fer2013.csv; fer train: the model is not trained on PrivateTest, which
    fer evaluate --split PrivateTest would then score it on."""
    result = fer("preprocess", "--json", "--workers", "1", fer_csv)
    assert result.exit_code == 0, result.output
    name = Path(json.loads(result.stdout)["dataset"]).parent.name
    trained = fer("train", "--epochs", "1", "--copies", "0", "--json", name)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["images"] == 5
    assert load_model(Path(summary["model"])).meta["dataset"]["split"] == "Training"
    assert summary["notes"][0] == (
        f"{name}: trained on its predefined split Training (5 of 8 images); PrivateTest, "
        "PublicTest left for `fer evaluate --split`; --split all trains on every image"
    )
    every = fer("train", "--epochs", "1", "--copies", "0", "--split", "all", "--json", name)
    assert every.exit_code == 0, every.output
    summary = json.loads(every.stdout)
    assert summary["images"] == 8
    assert not any("predefined split" in note for note in summary["notes"])
    assert load_model(Path(summary["model"])).meta["dataset"]["split"] is None


def test_combined_with_another_dataset_fer2013_still_gives_only_its_training_split(
    fer_csv, make_face_dataset
):
    first = fer("preprocess", "--json", "--workers", "1", fer_csv)
    name = Path(json.loads(first.stdout)["dataset"]).parent.name
    faces = make_face_dataset(4)  # happy, sad, happy, sad
    assert fer("preprocess", "--json", "--workers", "1", faces).exit_code == 0
    trained = fer(
        "train", name, faces, "--classes", "happiness,sadness,neutral", "--epochs", "1",
        "--copies", "0", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    # FER2013's Training rows: 2 happiness, 3 neutral (its test splits hold 3 more faces).
    assert summary["images"] == 5 + 4
    assert summary["notes"][0].startswith(f"{name}: trained on its predefined split Training")


def test_crossval_says_it_ignores_the_splits(fer_csv):
    dataset = load_dataset(Path(preprocess_dataset(fer_csv, workers=1).dataset))
    report = cross_validate(dataset, TrainConfig(epochs=1, copies=0), folds=2, workers=1).report
    assert any(
        "predefined splits (PrivateTest, PublicTest, Training) are ignored" in note
        for note in report.warnings
    )
