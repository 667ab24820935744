"""Several datasets at once: the combined selection, its refusals, leave-one-dataset-out
cross-validation, per-dataset figures and per-dataset normalisation, through the library and
the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import PreprocessConfig, TrainConfig
from fercli.core.errors import DatasetError
from fercli.core.hashing import digest_rows, source_digest
from fercli.core.store import datasets_dir
from fercli.data.combined import combine, load_combined, resolve_datasets
from fercli.data.prepared import PreparedDataset, dataset_folder, save_dataset
from fercli.infer.model import load_model
from fercli.learn.crossval import cross_validate
from fercli.learn.folds import fold_inputs, make_folds
from fercli.learn.selection import select_classes
from synthetic import make_dataset, save_synthetic

SHARED = ("anger", "happiness", "surprise")
FAST = TrainConfig(epochs=2, copies=0)

runner = CliRunner()


def fer(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    return lines[0]


def synthetic(
    source: str, labels: tuple[str, ...] = SHARED, seed: int = 0, subjects: int = 4
) -> PreparedDataset:
    """A small synthetic dataset that says it came from the folder `source`."""
    dataset = make_dataset(labels=labels, subjects=subjects, per_subject=3, seed=seed)
    dataset.meta["source"] = f"/data/{source}"
    return dataset


@pytest.fixture
def two_saved(fer_home) -> list[str]:
    """Two saved datasets with the same three classes and the same subject names."""
    save_synthetic(synthetic("jaffe", seed=1), "jaffe-1")
    save_synthetic(synthetic("ck48", seed=2, subjects=5), "ck48-2")
    return ["jaffe-1", "ck48-2"]


# --- the combined selection ------------------------------------------------------------


def test_combined_images_keep_their_dataset_and_subjects_are_unique_per_dataset(two_saved):
    combined = load_combined(two_saved)
    assert combined.dataset_names == ["jaffe", "ck48"]
    assert len(combined.crops) == 3 * 3 * 4 + 3 * 3 * 5
    assert (
        list(combined.origins).count("jaffe") == 36 and list(combined.origins).count("ck48") == 45
    )
    # Both datasets have a subject S001: combined, they are two people.
    assert {"jaffe:S001", "ck48:S001"} <= set(combined.subjects.tolist())
    assert all(
        subject.split(":")[0] == origin
        for subject, origin in zip(combined.subjects, combined.origins, strict=True)
    )
    assert [part["images"] for part in combined.parts] == [36, 45]
    assert combined.parts[0]["classes"] == {"anger": 12, "happiness": 12, "surprise": 12}
    assert all(part["fingerprint"] for part in combined.parts)
    selection = select_classes(combined)
    assert selection.origins is not None and len(selection.origins) == len(selection.crops)


def test_classes_of_only_some_datasets_are_refused_naming_them(fer_home):
    first = synthetic("jaffe", SHARED + ("neutral",), seed=1)
    second = synthetic("ck48", SHARED + ("sadness",), seed=2)
    with pytest.raises(
        DatasetError,
        match=r"classes in only some datasets: .*sadness \(ck48 only\).*neutral \(jaffe only\)"
        r".*--shared-classes \(anger, happiness, surprise\) or name them with --classes "
        r"\(--classes anger,happiness,sadness,surprise,neutral: each from the datasets that "
        r"have it\)",
    ):
        combine([first, second])


def test_classes_outside_the_paper_s_seven_get_no_spelt_out_suggestion(fer_home):
    # Only contempt differs: naming the paper's seven would be --shared-classes again.
    first = synthetic("jaffe", SHARED, seed=1)
    second = synthetic("ck48", SHARED + ("contempt",), seed=2)
    with pytest.raises(DatasetError) as refused:
        combine([first, second])
    assert "contempt (ck48 only)" in str(refused.value)
    assert str(refused.value).endswith("or name them with --classes")


def test_shared_classes_keeps_the_classes_every_dataset_has(fer_home):
    first = synthetic("jaffe", SHARED + ("neutral",), seed=1)
    second = synthetic("ck48", SHARED + ("sadness",), seed=2)
    combined = combine([first, second], shared_classes=True)
    assert sorted(set(combined.labels.tolist())) == sorted(SHARED)


def test_named_classes_may_come_from_some_datasets_and_the_report_says_where(fer_home):
    first = synthetic("jaffe", SHARED + ("neutral",), seed=1)
    second = synthetic("ck48", SHARED, seed=2)
    combined = combine([first, second], classes=("anger", "happy", "neutral"))
    assert set(combined.labels.tolist()) == {"anger", "happiness", "neutral"}
    assert "neutral" not in combined.parts[1]["classes"]
    assert any("class neutral comes from jaffe only" in note for note in combined.notes)


def test_datasets_without_a_shared_class_are_refused(fer_home):
    first = synthetic("jaffe", ("anger", "happiness"), seed=1)
    second = synthetic("ck48", ("fear", "sadness"), seed=2)
    with pytest.raises(
        DatasetError,
        match="the datasets share no class: jaffe has anger, happiness; ck48 has fear, sadness",
    ):
        combine([first, second], shared_classes=True)
    with pytest.raises(DatasetError, match="share no class among those chosen"):
        combine([first, second], classes=("anger", "fear"))


def test_the_same_dataset_given_twice_is_refused(two_saved):
    with pytest.raises(DatasetError, match="are the same dataset .*give each dataset once"):
        resolve_datasets(["jaffe-1", str(datasets_dir() / "jaffe-1")])


def test_the_same_data_under_two_names_is_refused(two_saved):
    save_synthetic(synthetic("jaffe", seed=1), "jaffe-copy")
    with pytest.raises(
        DatasetError, match=r"jaffe-1 and jaffe-copy hold the same data \(fingerprint \w+\)"
    ):
        resolve_datasets(["jaffe-1", "jaffe-copy"])


def test_crops_in_an_earlier_dataset_too_are_dropped_and_counted(fer_home):
    first = synthetic("jaffe", seed=1)
    second = synthetic("ck48", seed=2)
    # The second dataset holds 5 of the first's images besides its own.
    overlap = PreparedDataset(
        crops=np.concatenate([second.crops, first.crops[:5]]),
        labels=np.concatenate([second.labels, first.labels[:5]]),
        subjects=np.concatenate([second.subjects, first.subjects[:5]]),
        paths=np.concatenate([second.paths, first.paths[:5]]),
        meta=second.meta,
    )
    combined = combine([first, overlap])
    assert combined.parts[1]["duplicates_dropped"] == 5
    assert combined.parts[1]["images"] == len(second.crops)
    assert any("5 crops of ck48 are also in an earlier dataset" in note for note in combined.notes)
    assert combined.sources is None  # neither dataset has its files' digests


def file_digests(paths) -> np.ndarray:
    """A source digest for each path, as though each named a file of its own."""
    return digest_rows([source_digest(str(path).encode()) for path in paths])


def test_the_source_digests_of_combined_datasets_stay_with_their_crops(fer_home):
    first = synthetic("jaffe", seed=1)
    second = synthetic("ck48", seed=2)
    overlap = PreparedDataset(
        crops=np.concatenate([first.crops[:5], second.crops]),
        labels=np.concatenate([first.labels[:5], second.labels]),
        subjects=np.concatenate([first.subjects[:5], second.subjects]),
        paths=np.concatenate([first.paths[:5], second.paths]),
        meta=second.meta,
    )
    first.sources, overlap.sources = file_digests(first.paths), file_digests(overlap.paths)
    combined = combine([first, overlap])
    assert combined.parts[1]["duplicates_dropped"] == 5
    assert len(combined.sources) == len(combined.crops) == len(first.crops) + len(second.crops)
    np.testing.assert_array_equal(combined.sources, file_digests(combined.paths))
    selection = select_classes(combined, ("anger", "surprise"))
    np.testing.assert_array_equal(selection.sources, file_digests(selection.paths))
    # One dataset without them: the combination has none (no digest for its rows).
    overlap.sources = None
    assert combine([first, overlap]).sources is None


def save_made_with(kind: str, seed: int, name: str, settings: PreprocessConfig) -> None:
    """A synthetic dataset saved as if preprocessed with these settings."""
    dataset = synthetic(kind, seed=seed)
    dataset.meta.update(
        preprocess=settings.to_dict(), preprocess_fingerprint=settings.fingerprint()
    )
    save_synthetic(dataset, name)


def test_datasets_preprocessed_with_different_settings_are_refused_with_the_command(fer_home):
    save_synthetic(synthetic("jaffe", seed=1), "jaffe-1")
    save_made_with("ck48", 2, "ck48-2", PreprocessConfig(equalization="midpoint"))
    with pytest.raises(
        DatasetError,
        match=r"preprocessed with different settings \(equalization face against midpoint\)"
        r".*`fer preprocess /data/ck48 --crop-size 32`",
    ):
        resolve_datasets(["jaffe-1", "ck48-2"])


def test_the_command_that_remakes_a_dataset_of_face_crops_keeps_face_crops(fer_home):
    # Made again without --face-crops, it would lose the faces the face check turns down.
    save_synthetic(synthetic("jaffe", seed=1), "jaffe-1")
    faces = synthetic("fer2013", seed=2)
    other = PreprocessConfig(equalization="midpoint")
    faces.meta.update(
        preprocess=other.to_dict(),
        preprocess_fingerprint=other.fingerprint(),
        every_image_a_face=True,
    )
    save_synthetic(faces, "fer-2")
    with pytest.raises(
        DatasetError,
        match=r"`fer preprocess /data/fer2013 --crop-size 32 --face-crops` to make fer-2's",
    ):
        resolve_datasets(["jaffe-1", "fer-2"])


def test_a_dataset_from_before_framing_combines_with_one_of_the_papers_framing(fer_home):
    """A dataset preprocessed before --framing existed has no framing in its settings: it
    made the paper's crops, so it combines with a new one; a wide one is refused, with the
    command that makes its crops."""
    old = synthetic("jaffe", seed=1)
    before = {key: value for key, value in old.meta["preprocess"].items() if key != "framing"}
    assert before != old.meta["preprocess"]
    old.meta.update(preprocess=before)
    save_synthetic(old, "jaffe-1")
    save_synthetic(synthetic("ck48", seed=2), "ck48-2")
    assert len(resolve_datasets(["jaffe-1", "ck48-2"])) == 2
    save_made_with("fer2013", 3, "fer-3", PreprocessConfig(framing="wide"))
    # Each order names the command that makes the second's crops as the first's.
    refusals = {
        ("jaffe-1", "fer-3"): r"\(framing paper against wide\).*`fer preprocess /data/fer2013 "
        r"--crop-size 32` to make fer-3's crops as jaffe-1's",
        ("fer-3", "jaffe-1"): r"\(framing wide against paper\).*`fer preprocess /data/jaffe "
        r"--framing wide --crop-size 32` to make jaffe-1's",
    }
    for names, refusal in refusals.items():
        with pytest.raises(DatasetError, match=refusal):
            resolve_datasets(list(names))


def test_an_original_folder_not_yet_preprocessed_is_refused_with_the_exact_command(
    fer_home, tmp_path
):
    save_made_with("jaffe", 1, "jaffe-1", PreprocessConfig(equalization="midpoint"))
    original = tmp_path / "ck48"
    original.mkdir()
    with pytest.raises(
        DatasetError,
        match=rf"{original}: not preprocessed yet; run `fer preprocess {original} "
        r"--equalization midpoint --crop-size 32` first with the settings of the others",
    ):
        resolve_datasets(["jaffe-1", str(original)])


def test_an_original_folder_that_was_preprocessed_is_found(fer_home, tmp_path):
    original = tmp_path / "ck48"
    original.mkdir()
    save_dataset(synthetic("ck48", seed=2), dataset_folder(original))
    save_synthetic(synthetic("jaffe", seed=1), "jaffe-1")
    assert load_combined(["jaffe-1", str(original)]).dataset_names == ["jaffe", "ck48"]


# --- folds -------------------------------------------------------------------------------


def test_dataset_folds_leave_one_dataset_out(two_saved):
    selection = select_classes(load_combined(two_saved))
    splits = make_folds(selection, 10, "dataset", 0)
    assert len(splits) == 2
    for (train, test), name in zip(splits, ["jaffe", "ck48"], strict=True):
        assert set(selection.origins[test]) == {name}
        assert name not in set(selection.origins[train])
        assert len(train) + len(test) == len(selection.crops)


def test_subject_folds_on_combined_data_keep_each_person_on_one_side(two_saved):
    selection = select_classes(load_combined(two_saved))
    for train, test in make_folds(selection, 3, "subject", 0):
        assert not set(selection.subjects[train]) & set(selection.subjects[test])


def test_random_folds_on_combined_data_give_each_fold_its_share_of_every_dataset(two_saved):
    selection = select_classes(load_combined(two_saved))
    for _, test in make_folds(selection, 3, "random", 0):
        assert (
            list(selection.origins[test]).count("jaffe") == 12
            and list(selection.origins[test]).count("ck48") == 15
        )


def test_a_starting_model_trained_on_one_of_the_datasets_is_refused(two_saved, tmp_path):
    from fercli.core.errors import FerError
    from fercli.learn.training import train_model

    starting = tmp_path / "jaffe.npz"
    train_model(load_combined(["jaffe-1"]), TrainConfig(epochs=1, copies=0), starting)
    with pytest.raises(FerError, match="the starting model was trained on this dataset"):
        cross_validate(
            load_combined(two_saved),
            TrainConfig(epochs=1, copies=0, init_model=str(starting)),
            folds=2,
        )


def test_leave_one_dataset_out_warns_of_classes_only_the_left_out_dataset_has(fer_home):
    from fercli.learn.crossval import protocol_warnings

    first = synthetic("jaffe", SHARED + ("neutral",), seed=1)
    combined = combine([first, synthetic("ck48", seed=2)], classes=SHARED + ("neutral",))
    notes = protocol_warnings(select_classes(combined), "dataset")
    assert any(note.startswith("jaffe left out: no other dataset has neutral") for note in notes)
    assert not any(note.startswith("ck48 left out") for note in notes)


def test_dataset_folds_on_a_single_dataset_are_refused(fer_home):
    with pytest.raises(DatasetError, match="--group dataset needs several datasets"):
        make_folds(select_classes(synthetic("jaffe")), 10, "dataset", 0)


# --- reports -----------------------------------------------------------------------------


def test_leave_one_dataset_out_report_has_figures_per_dataset(two_saved):
    report = cross_validate(load_combined(two_saved), FAST, group="dataset", workers=1).report
    assert report.protocol["folds"] == 2 and report.planned_folds == 2
    assert [fold.per_dataset.keys() for fold in report.folds] == [
        {"jaffe": 0}.keys(),
        {"ck48": 0}.keys(),
    ]
    assert (
        report.per_dataset["jaffe"]["tested"] == 36 and report.per_dataset["ck48"]["tested"] == 45
    )
    for name, figures in report.per_dataset.items():
        assert 0 <= figures["accuracy"] <= 1
        assert np.array(figures["confusion_matrix"]).sum() == figures["tested"]
    document = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert set(document["per_dataset"]) == {"jaffe", "ck48"}
    assert [part["name"] for part in document["dataset"]["datasets"]] == ["jaffe", "ck48"]
    assert any("leave-one-dataset-out" in warning for warning in report.warnings)


def test_crossval_cli_on_two_datasets_prints_and_saves_per_dataset_figures(two_saved, tmp_path):
    result = fer(
        "crossval",
        *two_saved,
        "--folds",
        "2",
        "--epochs",
        "1",
        "--copies",
        "0",
        "--output",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    assert "images per dataset and class" in result.stdout
    assert "accuracy per dataset" in result.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["per_dataset"]) == {"jaffe", "ck48"}
    assert all(fold["per_dataset"].keys() == {"jaffe", "ck48"} for fold in report["folds"])
    assert (tmp_path / "run" / "confusion-1-jaffe.png").stat().st_size > 0
    assert (tmp_path / "run" / "confusion-2-ck48.png").stat().st_size > 0
    header = (tmp_path / "run" / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("path,fold,dataset,true,predicted")


def test_crossval_cli_group_dataset_json(two_saved):
    result = fer(
        "crossval", *two_saved, "--group", "dataset", "--epochs", "1", "--copies", "0", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["group"] == "dataset" and report["protocol"]["folds"] == 2
    assert report["per_dataset"]["jaffe"]["tested"] == 36


def test_train_cli_on_two_datasets_records_every_dataset_in_the_model(two_saved, tmp_path):
    output = tmp_path / "combined.npz"
    result = fer("train", *two_saved, "--epochs", "1", "--copies", "0", "--output", output)
    assert result.exit_code == 0, result.output
    assert "images per dataset and class" in result.stdout
    meta = load_model(output).meta
    assert meta["dataset"]["name"] == "jaffe+ck48" and meta["dataset"]["images"] == 81
    assert [(part["name"], part["images"]) for part in meta["datasets"]] == [
        ("jaffe", 36),
        ("ck48", 45),
    ]
    assert all(len(part["fingerprint"]) == 16 for part in meta["datasets"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["jaffe-1", "jaffe-1"], "are the same dataset"),
        (["jaffe-1", "nowhere"], "nowhere: no such preprocessed dataset"),
    ],
)
def test_cli_refusals_are_one_line(two_saved, arguments, message):
    result = fer("crossval", *arguments, "--epochs", "1")
    assert message in one_error_line(result)


def test_cli_refuses_classes_of_only_some_datasets_in_one_line(fer_home):
    save_synthetic(synthetic("jaffe", SHARED + ("neutral",), seed=1), "jaffe-1")
    save_synthetic(synthetic("ck48", SHARED, seed=2), "ck48-2")
    line = one_error_line(fer("train", "jaffe-1", "ck48-2", "--epochs", "1"))
    assert "classes in only some datasets: neutral (jaffe only)" in line
    line = one_error_line(
        fer(
            "crossval",
            "jaffe-1",
            "ck48-2",
            "--group",
            "dataset",
            "--shared-classes",
            "--classes",
            "anger,happiness",
            "--epochs",
            "1",
        )
    )
    assert "give --classes or --shared-classes, not both" in line


# --- per-dataset normalisation -------------------------------------------------------------


def test_per_dataset_statistics_come_from_each_datasets_training_part():
    rows = [
        [10, 30],
        [10, 30],
        [200, 200],
        [0, 0],  # dataset a
        [100, 140],
        [100, 140],
        [100, 140],
        [7, 7],
    ]  # dataset b
    crops = np.array(rows, np.uint8)[:, np.newaxis, :]
    origins = np.array(["a"] * 4 + ["b"] * 4)
    train, test = np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])
    train_crops, test_crops = fold_inputs(crops, origins, train, test, "per-dataset")
    # a's training part has mean 20 and std 10, b's mean 120 and std 20: its test images use them.
    assert np.allclose(train_crops[0], [[-1, 1]]) and np.allclose(train_crops[2], [[-1, 1]])
    assert np.allclose(test_crops[0], 18) and np.allclose(test_crops[1], -2)
    assert np.allclose(test_crops[2], [[-1, 1]]) and np.allclose(test_crops[3], (7 - 120) / 20)
    same_train, same_test = fold_inputs(crops, origins, train, test, "global")
    assert same_train.dtype == np.uint8 and np.array_equal(same_test, crops[test])


def test_a_left_out_dataset_uses_its_own_statistics():
    crops = np.array([[[10, 30]], [[10, 30]], [[50, 150]], [[50, 150]]], np.uint8)
    origins = np.array(["a", "a", "b", "b"])
    _, test_crops = fold_inputs(crops, origins, np.array([0, 1]), np.array([2, 3]), "per-dataset")
    assert np.allclose(test_crops, [[[-1, 1]], [[-1, 1]]])


def test_per_dataset_normalisation_in_leave_one_dataset_out_says_it_is_transductive(two_saved):
    result = fer(
        "crossval",
        *two_saved,
        "--group",
        "dataset",
        "--normalisation",
        "per-dataset",
        "--epochs",
        "1",
        "--copies",
        "0",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["training"]["normalisation"] == "per-dataset"
    assert any("transductive" in warning for warning in report["warnings"])
    assert all(0 <= figures["accuracy"] <= 1 for figures in report["per_dataset"].values())


def test_train_refuses_per_dataset_normalisation_on_combined_data(two_saved, tmp_path):
    line = one_error_line(
        fer(
            "train",
            *two_saved,
            "--normalisation",
            "per-dataset",
            "--epochs",
            "1",
            "--output",
            tmp_path / "model.npz",
        )
    )
    assert "--normalisation per-dataset is for fer crossval" in line
    assert not (tmp_path / "model.npz").exists()
