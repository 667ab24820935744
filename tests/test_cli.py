"""The `fer` command as a user meets it: train, crossval and predict, output and exit codes."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import preprocessed_crop, write_image
from fercli import __version__
from fercli.cli import app
from fercli.core.config import MODEL_VARIANTS, NORMALISATIONS, TrainConfig
from fercli.core.store import models_dir
from fercli.infer.model import load_model
from fercli.learn.training import train_model
from synthetic import make_dataset, save_synthetic

CLASSES = ["anger", "happiness", "surprise", "neutral"]
FER = Path(sys.executable).parent / "fer"

runner = CliRunner()


def fer(*args: str):
    """Run `fer ARGS` in this process; the result has exit_code, stdout and stderr."""
    return runner.invoke(app, [str(arg) for arg in args])


def fer_process(
    *args: str, timeout: float = 120, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run `python -m fercli ARGS` in a fresh process, as a user's shell would."""
    command = [sys.executable, *python_flags, "-m", "fercli", *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def interruptible_fer(*args: str):
    """`python -m fercli ARGS` started as a terminal's foreground command, which Ctrl-C reaches.

    A process started with SIGINT ignored (anything run with `&` from a non-interactive shell,
    as a CI script or `pytest &` may be) keeps ignoring it, as POSIX says; the test must not
    depend on how pytest itself was started. The process is killed if the test fails.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "fercli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for_children(process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    """Wait until a process has started count child processes (however loaded the machine)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if children.exists() and len(children.read_text().split()) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"fer did not start {count} worker processes in {timeout} s")


def one_error_line(result) -> str:
    """The single red line a refusal prints; fails on tracebacks or extra lines."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def dataset(fer_home) -> Path:
    """A small synthetic dataset, saved where the CLI looks for the most recent one."""
    return save_synthetic(make_dataset(labels=tuple(CLASSES), subjects=4))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("model") / "tiny.npz"
    train_model(make_dataset(labels=tuple(CLASSES), subjects=4), TrainConfig(epochs=2), output)
    return output


@pytest.fixture
def photos(astronaut_path, tmp_path) -> dict[str, Path]:
    """The test photo, two faces side by side, a blank image, a corrupt PNG."""
    photo = cv2.imread(str(astronaut_path))
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = {"one": folder / "one.png", "two": folder / "two.png", "blank": folder / "blank.png"}
    cv2.imwrite(str(paths["one"]), photo)
    cv2.imwrite(str(paths["two"]), np.hstack([photo, photo]))
    cv2.imwrite(str(paths["blank"]), np.full((200, 300, 3), 128, np.uint8))
    paths["corrupt"] = tmp_path / "corrupt.png"
    paths["corrupt"].write_bytes(astronaut_path.read_bytes()[:3000])
    return paths


# --- fer train ---------------------------------------------------------------------------


def test_train_saves_a_model_and_says_where(dataset, fer_home):
    from test_model_safety import write_model

    (fer_home / "models").mkdir(parents=True)
    earlier = write_model(fer_home / "models" / "earlier.npz")
    os.utime(earlier, (1_000_000_000, 1_000_000_000))
    result = fer("train", "--epochs", "2")
    assert result.exit_code == 0, result.output
    saved = [line for line in result.stdout.splitlines() if line.startswith("model saved to ")]
    assert len(saved) == 1
    path = Path(saved[0].removeprefix("model saved to "))
    assert path.parent == fer_home / "models" and path.suffix == ".npz" and path.is_file()
    assert "trained on 64 images" in result.stdout and "not a test score" in result.stdout
    # The next fer predict answers with another model: said in one line.
    assert (
        f"note: the default model for fer predict is now {path.name} (was earlier.npz)"
        in result.stdout
    )
    model = load_model(path)
    assert model.classes == CLASSES and model.meta["training"]["epochs"] == 2
    # Written to a temporary name, then renamed: nothing else is left in the folder.
    assert sorted(entry.name for entry in path.parent.iterdir()) == sorted(
        [path.name, "earlier.npz"]
    )


def test_train_json_and_output_option(dataset, tmp_path):
    output = tmp_path / "mine.npz"
    result = fer(
        "train", "--epochs", "1", "--classes", "happy,surprise", "--output", output, "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == str(output) and output.is_file()
    assert summary["classes"] == ["happiness", "surprise"] and summary["images"] == 32
    assert summary["runtime_difference"] <= 1e-5
    assert not models_dir().exists()
    # The default model did not change; the one note says which recipe "auto" chose.
    assert not any("default model" in note for note in summary["notes"])
    assert [note.split(",")[0] for note in summary["notes"]] == ["recipe robust"]


def test_init_trains_the_starting_models_network_unless_variant_names_one(dataset, tmp_path):
    from fercli.infer.model import load_model

    # A starting model of the paper's network, trained on other data than the dataset's.
    other = make_dataset(labels=tuple(CLASSES), subjects=4, seed=5)
    other.meta["source"] = "/other-lab"
    start = train_model(other, TrainConfig(epochs=1, copies=0), tmp_path / "start.npz").path
    output = tmp_path / "tuned.npz"
    result = fer("train", "--init", start, "--epochs", "1", "--copies", "0", "--output", output)
    assert result.exit_code == 0, result.output
    # The default recipe's network is batchnorm-dropout; the starting model's is used.
    assert load_model(output).meta["training"]["variant"] == "paper"
    assert "started from start.npz (a paper network)" in " ".join(result.output.split())
    assert "fine-tuned for 1 epoch" in " ".join(result.output.split())
    # A variant named that is not the starting model's is refused, saying which it is.
    refused = fer("train", "--init", start, "--variant", "batchnorm", "--epochs", "1")
    assert refused.exit_code == 1
    assert "the starting model is a 'paper' network" in one_error_line(refused)


def test_train_refuses_an_unwritable_output_before_training(dataset, tmp_path, fer_home):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    # In a fresh process, so that we can see that TensorFlow was never imported: the
    # refusal comes before any training.
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fercli.cli import app\n"
        f"arguments = ['train', '--epochs', '1', '--output', {str(not_a_folder / 'm.npz')!r}]\n"
        "result = CliRunner().invoke(app, arguments)\n"
        "print(result.exit_code)\n"
        "print(result.stderr.strip())\n"
        "print('tensorflow' in sys.modules)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    code, message, imported = process.stdout.strip().splitlines()
    assert code == "1" and imported == "False"
    assert message.startswith("error: cannot write ") and "file.txt" in message
    assert not (fer_home / "models").exists()


def test_train_refuses_an_unwritable_fer_home(tmp_path, monkeypatch, dataset):
    # The dataset is named by its path; FER_HOME, where the model would go, is a file.
    blocked = tmp_path / "home-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("FER_HOME", str(blocked))
    line = one_error_line(fer("train", dataset, "--epochs", "1"))
    assert "cannot write" in line and "FER_HOME" in line


def test_train_without_a_dataset_says_to_preprocess():
    line = one_error_line(fer("train", "--epochs", "1"))
    assert "no preprocessed dataset" in line and "fer preprocess DATASET_DIR" in line


@pytest.mark.slow
def test_ctrl_c_during_train_leaves_no_model_file(dataset, fer_home):
    with interruptible_fer("train", "--epochs", "100000") as process:
        time.sleep(8)  # importing TensorFlow takes ~4 s; after that it trains
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    # How far it got, and that there is nothing to look for.
    assert re.fullmatch(
        r"error: interrupted (in epoch \d+ of 100000 \(\d+ epochs? finished\)"
        r"|before the first epoch finished); nothing saved",
        stderr.strip().splitlines()[-1],
    ), stderr
    assert "model saved" not in stdout
    models = fer_home / "models"
    assert not models.exists() or list(models.iterdir()) == []


# --- fer crossval ------------------------------------------------------------------------


@pytest.mark.slow
def test_crossval_json_report(dataset, fer_home):
    process = fer_process("crossval", "--folds", "3", "--epochs", "2", "--json")
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)  # stdout is the JSON and nothing else
    assert len(report["folds"]) == 3
    assert all(0 <= fold["accuracy"] <= 1 for fold in report["folds"])
    assert report["mean_accuracy"] == pytest.approx(
        np.mean([fold["accuracy"] for fold in report["folds"]])
    )
    assert report["std_accuracy"] == pytest.approx(
        np.std([fold["accuracy"] for fold in report["folds"]])
    )
    assert report["labels"] == CLASSES
    assert np.array(report["confusion_matrix"]).sum() == 64
    assert report["protocol"]["folds"] == 3 and report["protocol"]["group"] == "random"
    assert report["protocol"]["training"]["epochs"] == 2
    # The recipe is named, with every option that differs from it.
    assert report["protocol"]["recipe"] == "robust"  # the default recipe
    assert report["protocol"]["differs_from_recipe"] == {"epochs": 2}
    assert any("same people (4 subjects)" in warning for warning in report["warnings"])
    files = {name: Path(path) for name, path in report["files"].items()}
    # The fold networks, saved as one ensemble where predict finds the newest model, which
    # the output says.
    model = files.pop("model")
    assert model.parent == fer_home / "models"
    assert report["notes"] == [f"the default model for fer predict is now {model.name} (was none)"]
    assert all(path.parent.parent == fer_home / "runs" for path in files.values())
    assert json.loads(files["report"].read_text())["folds"] == report["folds"]
    assert cv2.imread(str(files["confusion"])) is not None
    rows = list(csv.DictReader(io.StringIO(files["predictions"].read_text())))
    assert len(rows) == 64
    assert list(rows[0]) == [
        "path",
        "fold",
        "true",
        "predicted",
        *(f"p_{label}" for label in CLASSES),
    ]
    for row in rows:
        probabilities = [float(row[f"p_{label}"]) for label in CLASSES]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert float(row[f"p_{row['predicted']}"]) == max(probabilities)  # ties allowed (rounded)
    # No TensorFlow log lines or tracebacks from the workers.
    assert "Traceback" not in process.stderr and "I0000" not in process.stderr


@pytest.mark.slow
def test_piped_crossval_tables_show_whole_class_names(dataset, monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")  # a narrow terminal's setting: a pipe ignores it
    process = fer_process("crossval", "--folds", "2", "--epochs", "1", "--workers", "1")
    assert process.returncode == 0, process.stderr
    matrix = process.stdout.split("confusion matrix")[1]
    header = next(line for line in matrix.splitlines() if line.startswith("┃"))
    assert [name.strip() for name in header.split("┃")[2:-1]] == CLASSES
    assert "…" not in process.stdout


def test_crossval_with_an_unknown_class_is_one_line(dataset):
    result = fer("crossval", "--folds", "3", "--epochs", "1", "--classes", "anger,joyful")
    line = one_error_line(result)
    assert (
        line
        == "error: unknown class 'joyful'; this dataset has anger, happiness, surprise, neutral"
    )
    assert result.exit_code == 1 and result.stdout == ""


def test_crossval_without_a_dataset_says_to_preprocess(fer_home):
    line = one_error_line(fer("crossval", "--folds", "3", "--epochs", "1"))
    assert "run `fer preprocess DATASET_DIR` first" in line


def test_crossval_refusals_are_one_line(dataset):
    for args, expected in [
        (["--folds", "20"], "fewer than the 20 folds"),
        (["--folds", "5", "--group", "subject"], "needs at least 5 subjects; there are 4"),
        (["no-such-dataset"], "no-such-dataset: no such preprocessed dataset"),
    ]:
        line = one_error_line(fer("crossval", "--epochs", "1", *args))
        assert expected in line, line


def test_options_with_fixed_values_are_refused_by_the_parser_with_the_list():
    result = fer("crossval", "--variant", "huge")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Invalid value for '--variant': 'huge' is not one of 'paper', 'dropout'," in " ".join(
        result.stderr.split()
    )
    for args, listed in [
        (["preprocess", "x", "--layout", "csv"], "'jaffe', 'ck+', 'folders'"),
        (["train", "--optimizer", "rmsprop"], "'sgd', 'nesterov', 'adam'"),
        (["crossval", "--group", "person"], "'random', 'subject'"),
        (["crossval", "--normalisation", "none"], "'global', 'pixel'"),
    ]:
        result = fer(*args)
        # Typer's error box may wrap the list: its borders are not part of the message.
        message = " ".join(result.stderr.replace("\u2502", " ").split())
        assert result.exit_code == 2 and listed in message, args


@pytest.mark.slow
def test_ctrl_c_during_crossval_before_any_fold_saves_nothing(dataset, fer_home):
    with interruptible_fer("crossval", "--folds", "3", "--epochs", "100000") as process:
        wait_for_children(process, 2)  # the fold workers: the folds have started
        time.sleep(3)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last == "error: interrupted before any fold finished; nothing saved", stderr
    assert "Traceback" not in stderr and "accuracy" not in stdout  # no report of zeros
    runs = fer_home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # no run folder, no confusion.png


# --- fer predict -------------------------------------------------------------------------


def test_predict_json(trained_model, photos):
    result = fer(
        "predict", photos["one"], photos["two"], photos["blank"], "--model", trained_model, "--json"
    )
    assert result.exit_code == 0, result.output
    images = json.loads(result.stdout)
    assert [image["path"] for image in images] == [
        str(photos[name]) for name in ("one", "two", "blank")
    ]
    assert [len(image["faces"]) for image in images] == [1, 2, 0]
    # Each file names the model that labelled it.
    assert [list(image)[:2] for image in images] == [["path", "model"]] * 3
    assert {image["model"] for image in images} == {str(trained_model)}
    for image in images:
        for face in image["faces"]:
            assert set(face) == {"box", "label", "probabilities", "in_training_data"}
            assert face["in_training_data"] is False  # trained on synthetic shapes
            assert len(face["box"]) == 4 and all(isinstance(value, int) for value in face["box"])
            assert list(face["probabilities"]) == CLASSES
            assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert face["label"] in CLASSES
    assert "error" not in images[2]  # no face is no error


def test_predict_csv_has_one_row_per_face(trained_model, photos):
    result = fer(
        "predict", photos["one"], photos["two"], photos["blank"], "--model", trained_model, "--csv"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "path",
        "face",
        "x",
        "y",
        "width",
        "height",
        "label",
        *(f"p_{label}" for label in CLASSES),
        "model",
    ]
    body = rows[1:]
    assert {row[-1] for row in body} == {str(trained_model)}  # which model answered
    body = [row[:-1] for row in body]
    assert [(row[0], row[1]) for row in body] == [
        (str(photos["one"]), "1"),
        (str(photos["two"]), "1"),
        (str(photos["two"]), "2"),
        (str(photos["blank"]), ""),  # no face: one row, its label empty
    ]
    assert body[-1][2:] == [""] * (5 + len(CLASSES))
    for row in body[:-1]:
        assert row[6] in CLASSES
        assert sum(float(value) for value in row[7:]) == pytest.approx(1, abs=1e-5)


def test_predict_table_names_faces_and_images_without_one(trained_model, photos):
    result = fer("predict", photos["one"], photos["blank"], "--model", trained_model)
    assert result.exit_code == 0, result.output
    assert "no face found" in result.stdout
    assert any(label in result.stdout for label in CLASSES)


def test_json_and_csv_together_are_refused(trained_model, photos):
    line = one_error_line(
        fer("predict", photos["one"], "--model", trained_model, "--json", "--csv")
    )
    assert "one of --json and --csv" in line


def test_annotate_writes_a_png_per_image(trained_model, photos, tmp_path):
    folder = tmp_path / "annotated"
    result = fer(
        "predict",
        photos["one"],
        photos["two"],
        photos["blank"],
        photos["corrupt"],
        "--model",
        trained_model,
        "--annotate",
        folder,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in folder.iterdir()) == [
        ".fercli-output",  # the folder is fercli's own: left out when a folder above is read
        "blank.png",
        "one.png",
        "two.png",
    ]
    assert cv2.imread(str(folder / "two.png")).shape == (512, 1024, 3)
    assert "3 annotated images in" in result.stderr


def test_predict_skips_bad_files_and_goes_on(trained_model, photos, tmp_path):
    missing = tmp_path / "missing.jpg"
    result = fer(
        "predict", photos["corrupt"], missing, photos["one"], "--model", trained_model, "--json"
    )
    assert result.exit_code == 0, result.output
    images = json.loads(result.stdout)
    assert [len(image["faces"]) for image in images] == [0, 1]
    assert images[0]["error"] == "truncated PNG (no IEND chunk at the end)"
    assert f"skipped {missing}: no such file or folder" in result.stderr
    assert f"skipped {photos['corrupt']}: truncated PNG" in result.stderr


def test_an_image_without_a_face_alone_is_success(trained_model, photos):
    result = fer("predict", photos["blank"], "--model", trained_model, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [
        {"path": str(photos["blank"]), "model": str(trained_model), "faces": []}
    ]


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty folder", "not an image"])
def test_predict_fails_when_nothing_could_be_processed(trained_model, photos, tmp_path, case):
    target = {
        "missing": tmp_path / "missing.jpg",
        "corrupt": photos["corrupt"],
        "empty folder": tmp_path / "empty",
        "not an image": tmp_path / "notes.txt",
    }[case]
    if case == "empty folder":
        target.mkdir()
    if case == "not an image":
        target.write_text("hello")
    result = fer("predict", target, "--model", trained_model)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: no image could be processed"
    assert lines[0].startswith("skipped ")


@pytest.mark.parametrize("columns", ["30", "200"])
def test_piped_predict_table_shows_whole_paths_and_labels(
    trained_model, photos, tmp_path, monkeypatch, columns
):
    folder = tmp_path / ("a-folder-with-a-name-long-enough-to-be-cut-in-a-table-" * 3) / "happiness"
    folder.mkdir(parents=True)
    photo = folder / "the-photo-of-a-happy-astronaut-with-a-long-name.png"
    photo.write_bytes(photos["one"].read_bytes())
    monkeypatch.setenv("COLUMNS", columns)
    [image] = json.loads(fer_process("predict", photo, "--model", trained_model, "--json").stdout)
    process = fer_process("predict", photo, "--model", trained_model)  # stdout is a pipe
    assert process.returncode == 0, process.stderr
    assert str(photo) in process.stdout and "happiness" in process.stdout
    assert f" {image['faces'][0]['label']} " in process.stdout
    assert "…" not in process.stdout
    # In this process too (CliRunner's output is no terminal either).
    result = fer("predict", photo, "--model", trained_model)
    assert str(photo) in result.stdout and "…" not in result.stdout


def test_predict_without_a_model_says_to_train(photos):
    line = one_error_line(fer("predict", photos["one"]))
    assert line == "error: no trained model: run `fer train` first, or pass --model"


def test_predict_with_a_model_option_that_is_not_a_model(photos, tmp_path):
    fake = tmp_path / "model.npz"
    fake.write_text("definitely not weights")
    line = one_error_line(fer("predict", photos["one"], "--model", fake))
    assert "model.npz: not a fercli model file" in line
    line = one_error_line(fer("predict", photos["one"], "--model", tmp_path / "nope.npz"))
    assert "nope.npz: no such model file" in line


def test_predict_uses_the_most_recently_trained_model(trained_model, photos):
    models_dir().mkdir(parents=True)
    (models_dir() / "tiny.npz").write_bytes(trained_model.read_bytes())
    result = fer("predict", photos["one"], "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["faces"]) == 1


def test_predict_table_shows_file_names_with_brackets_as_they_are(
    trained_model, photos, tmp_path, monkeypatch
):
    (tmp_path / "[bold]me.png").write_bytes(photos["one"].read_bytes())
    monkeypatch.chdir(tmp_path)  # a short relative path: the table cell does not wrap
    result = fer("predict", "[bold]me.png", "--model", trained_model)
    assert result.exit_code == 0, result.output
    assert "[bold]me.png" in result.stdout


def test_a_skipped_file_with_brackets_in_its_path_is_reported_not_a_crash(
    trained_model, photos, tmp_path
):
    folder = tmp_path / "odd["
    folder.mkdir()
    (folder / "x]notes.png").write_text("not a picture")
    (folder / "x]photo.png").write_bytes(photos["one"].read_bytes())
    result = fer(
        "predict",
        folder / "x]notes.png",
        folder / "x]photo.png",
        "--model",
        trained_model,
        "--json",
    )
    assert result.exit_code == 0, repr(result.exception)
    assert f"skipped {folder / 'x]notes.png'}: not an image" in result.stderr


def test_predict_on_a_file_that_is_no_image_prints_no_table(trained_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = fer("predict", notes, "--model", trained_model)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"skipped {notes}: not an image (unrecognised content)",
        "error: no image could be processed",
    ]


def test_predict_says_a_folder_link_loop_apart_from_the_images(trained_model, photos):
    folder = photos["one"].parent
    (folder / "again").symlink_to(".", target_is_directory=True)  # a loop: not followed
    result = fer("predict", folder, "--model", trained_model)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"skipped {folder / 'again'}: a link to a folder it is in (a loop): not followed"
    ]
    assert result.stdout.splitlines()[-1] == "3 images, 3 faces; 1 folder not read"


def test_predict_on_a_folder_counts_its_other_files_and_ends_with_a_summary(trained_model, photos):
    folder = photos["one"].parent
    (folder / "README.md").write_text("# my photos\n")
    (folder / "NOTICE.md").write_text("taken by me\n")
    (folder / "cut.png").write_bytes(photos["one"].read_bytes()[:3000])  # a broken image is named
    result = fer("predict", folder, "--model", trained_model)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"skipped {folder / 'cut.png'}: truncated PNG (no IEND chunk at the end)"
    ]
    assert (
        result.stdout.splitlines()[-1]
        == "3 images, 3 faces; 1 skipped; 2 other files in the folders, not images"
    )
    assert "README" not in result.stdout
    # Named on the command line, a file that is no image is reported as such.
    result = fer("predict", folder / "README.md", photos["one"], "--model", trained_model)
    assert f"skipped {folder / 'README.md'}: not an image" in result.stderr
    assert result.stdout.splitlines()[-1] == "1 image, 1 face; 1 skipped"
    # Only non-images in a folder: the error says what was there.
    (folder / "more").mkdir()
    (folder / "more" / "notes.txt").write_text("hello")
    result = fer("predict", folder / "more", "--model", trained_model)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: no image could be processed (1 other file in the folders, not an image)"
    ]


def test_predict_in_a_fresh_process_never_imports_tensorflow(trained_model, photos):
    process = fer_process(
        "predict",
        photos["one"],
        "--model",
        trained_model,
        "--json",
        python_flags=("-X", "importtime"),
    )
    assert process.returncode == 0, process.stderr
    [image] = json.loads(process.stdout)
    assert len(image["faces"]) == 1
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in process.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "numpy" in imported and "cv2" in imported  # -X importtime did report
    heavy = sorted(name for name in imported if name.split(".")[0] in ("tensorflow", "keras"))
    assert heavy == []


@pytest.mark.parametrize("command", [[], ["preprocess"], ["train"], ["crossval"], ["predict"]])
def test_h_is_help_and_no_help_line_is_cut(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal's setting; help keeps 80 columns
    process = fer_process(*command, "-h")
    assert process.returncode == 0, process.stderr
    assert process.stdout == fer_process(*command, "--help").stdout
    usage = next(line for line in process.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "…" not in process.stdout
    if command == ["predict"]:
        assert "[OPTIONS] PATHS..." in process.stdout
    if command == ["crossval"]:
        # Choices are named in the help text, which wraps between words: at 80 columns none is
        # cut (the type column once showed `batchnorm-d` and `ropout` on two lines).
        words = set(re.findall(r"[\w+-]+", process.stdout.replace("│", " ")))
        for choice in (*MODEL_VARIANTS, *NORMALISATIONS, "random", "subject", "dataset"):
            assert choice in words, choice
    if command == []:
        # Each command's description wraps at the panel's edge, not where its docstring's
        # source lines break ("...and save a" then "model for predict." on a line of its own).
        assert any("and save a model for predict." in line for line in process.stdout.splitlines())


def test_help_lists_the_commands():
    result = fer("--help")

    assert result.exit_code == 0
    for command in ("preprocess", "train", "crossval", "sweep", "evaluate", "predict", "live"):
        assert command in result.stdout


def test_version():
    result = fer("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"fer (fercli) {__version__}"


def test_real_command_and_module_start():
    for command, expected in (
        ([str(FER), "--help"], "preprocess"),
        ([sys.executable, "-m", "fercli", "--version"], __version__),
    ):
        completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0, completed.stderr
        assert expected in completed.stdout


def test_help_imports_no_heavy_library():
    process = fer_process("--help", python_flags=("-X", "importtime"))
    assert process.returncode == 0 and "predict" in process.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in process.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not imported & {"tensorflow", "keras", "cv2", "dlib", "sklearn", "matplotlib", "numpy"}


def test_installed_fer_command_predicts_many_images_alike_with_one_or_two_workers(
    trained_model, photos, tmp_path
):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(6):
        source = photos["one"] if index % 2 == 0 else photos["blank"]
        (folder / f"photo{index}.png").write_bytes(source.read_bytes())
    outputs = []
    for workers in ("1", "2"):
        process = subprocess.run(
            [
                str(FER),
                "predict",
                str(folder),
                "--model",
                str(trained_model),
                "--json",
                "--workers",
                workers,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert process.returncode == 0, process.stderr
        outputs.append(json.loads(process.stdout))
    assert outputs[0] == outputs[1]
    assert [len(image["faces"]) for image in outputs[0]] == [1, 0, 1, 0, 1, 0]


# --- --json on failures ------------------------------------------------------------------


def test_every_failure_with_json_is_one_json_document(trained_model, photos, tmp_path, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    cases = [
        (["preprocess", empty], 1, "empty"),
        (
            ["train", "no-such-dataset", "--epochs", "1"],
            1,
            "no-such-dataset: no such preprocessed dataset",
        ),
        (
            ["crossval", "--folds", "3", "--epochs", "1", "--classes", "anger,joyful"],
            1,
            "unknown class 'joyful'",
        ),
        (
            ["predict", photos["one"], "--model", tmp_path / "nope.npz"],
            1,
            "nope.npz: no such model file",
        ),
        (
            ["predict", photos["one"], "--model", trained_model, "--csv"],
            1,
            "choose one of --json and --csv",
        ),
        (["predict", photos["one"], "--model", trained_model, "--workers", "0"], 2, "--workers"),
        (["crossval", "--folds", "1"], 2, "--folds"),
    ]
    for args, code, expected in cases:
        result = fer(*args, "--json")
        assert result.exit_code == code, (args, result.output)
        document = json.loads(result.stdout)  # all of stdout is one JSON document
        assert list(document) == ["error"] and expected in document["error"], (args, document)
        assert "Traceback" not in result.output
        if code == 1:
            assert result.stderr.strip() == f"error: {document['error']}"


def test_json_failures_that_have_a_report_carry_the_error_in_it(
    trained_model, tmp_path, make_folders, no_face_image
):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = fer("predict", notes, tmp_path / "gone.png", "--model", trained_model, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["error"] == "no image could be processed"
    assert document["model"] == str(trained_model)
    assert document["images"] == [
        {
            "path": str(notes),
            "model": str(trained_model),
            "faces": [],
            "error": "not an image (unrecognised content)",
        }
    ]
    assert document["skipped"] == [
        {"path": str(tmp_path / "gone.png"), "reason": "no such file or folder"}
    ]
    assert result.stderr.splitlines()[-1] == "error: no image could be processed"

    root = tmp_path / "no-faces"
    write_image(root / "happy" / "wall.png", no_face_image)
    result = fer("preprocess", root, "--json", "--workers", "1")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["aligned"] == 0 and document["error"].endswith(
        "no image could be aligned (1 skipped)"
    )
    assert result.stderr.strip() == f"error: {document['error']}"


def test_preprocess_crop_size_makes_crops_of_that_side_and_refuses_a_bad_one(
    make_face_dataset, fer_home
):
    from fercli.data.prepared import load_dataset

    root = make_face_dataset(2)
    result = fer("preprocess", root, "--crop-size", "48", "--json", "--workers", "1")
    assert result.exit_code == 0, result.output
    dataset = load_dataset(Path(json.loads(result.stdout)["dataset"]))
    assert dataset.crops.shape[1:] == (48, 48)
    assert dataset.meta["preprocess"]["crop_size"] == 48
    refused = fer("preprocess", root, "--crop-size", "4")
    assert refused.exit_code == 2 and "--crop-size" in refused.stderr


def test_preprocess_chooses_48x48_crops_for_a_large_dataset_and_says_so(
    make_face_dataset, fer_home, monkeypatch
):
    """Without --crop-size, a dataset of GENERAL_FROM_IMAGES images or more (lowered here to
    4, so that 4 faces stand for FER2013's 28,709) gets 48x48 crops and a note; fewer get the
    paper's 32x32 and no note; --crop-size still decides."""
    from fercli.core import recipes
    from fercli.data.prepared import load_dataset

    monkeypatch.setattr(recipes, "GENERAL_FROM_IMAGES", 4)
    sizes = {}
    for count, options in ((4, ()), (3, ()), (4, ("--crop-size", "32"))):
        root = make_face_dataset(count, folder=f"faces{count}{len(options)}")
        result = fer("preprocess", root, *options, "--json", "--workers", "1")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        dataset = load_dataset(Path(document["dataset"]))
        assert dataset.crops.shape[1:] == (document["crop_size"],) * 2
        assert dataset.meta["preprocess"]["crop_size"] == document["crop_size"]
        chose = [note for note in document["notes"] if note.startswith("crops of ")]
        sizes[(count, options)] = document["crop_size"], chose
    assert sizes[(4, ())] == (
        48,
        [
            "crops of 48x48, chosen for 4 images (the default: 48x48 from 4 images, where "
            "train's recipe auto is general if as many faces align; the paper's 32x32 below; "
            "--crop-size sets it)"
        ],
    )
    assert sizes[(3, ())] == (32, [])
    assert sizes[(4, ("--crop-size", "32"))] == (32, [])


def test_preprocess_says_when_too_few_faces_align_for_the_general_recipe(
    make_face_dataset, fer_home, monkeypatch
):
    """4 images (GENERAL_FROM_IMAGES lowered to 4) get 48x48 crops, but only 3 are faces:
    fer train's recipe auto counts the faces aligned and will choose robust, which preprocess
    says at once; train then does what was said."""
    from fercli.core import recipes

    monkeypatch.setattr(recipes, "GENERAL_FROM_IMAGES", 4)
    monkeypatch.setattr("fercli.data.preprocess.GENERAL_FROM_IMAGES", 4)
    root = make_face_dataset(3, folder="three")
    write_image(root / "happy" / "blank.png", np.full((256, 256), 128, np.uint8))
    result = fer("preprocess", root, "--json", "--workers", "1")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["crop_size"] == 48 and document["aligned"] == 3
    assert (
        "3 of the 4 images aligned: fer train's recipe auto will choose robust (general from 4 "
        "faces) on these 48x48 crops; fer train --recipe general names the other"
    ) in document["notes"]
    trained = fer("train", "--epochs", "1", "--json")
    assert trained.exit_code == 0, trained.output
    assert any(
        note.startswith("recipe robust, chosen for 3 images")
        for note in json.loads(trained.stdout)["notes"]
    )


# --- predict on a model's own training images -------------------------------------------


@pytest.mark.slow
def test_predict_notes_an_image_the_model_was_trained_on(
    make_face_dataset, faces, tmp_path, fer_home
):
    root = make_face_dataset(4)
    assert fer("preprocess", root, "--workers", "1").exit_code == 0
    model = tmp_path / "faces.npz"
    trained = fer("train", "--epochs", "1", "--output", model)
    assert trained.exit_code == 0 and ", 1 epoch in " in trained.stdout, trained.output
    seen = root / "happy" / "face000.png"
    new = write_image(tmp_path / "new.png", faces(9))
    result = fer("predict", seen, new, "--model", model)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: {seen} was in this model's training data: its score says nothing about new faces"
    ]
    images = json.loads(fer("predict", seen, new, "--model", model, "--json").stdout)
    assert [image["faces"][0]["in_training_data"] for image in images] == [True, False]
    # The model keeps the digests of the files it was trained on, as the dataset does.
    training_files = sorted(root.glob("*/*.png"))
    assert len(training_files) == 4
    digests = {hashlib.sha256(path.read_bytes()).digest()[:8] for path in training_files}
    assert {row.tobytes() for row in load_model(model).training_sources} == digests
    with np.load(model, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files}
    # A training photo whose face predict crops otherwise than preprocessing did (no crop
    # hash matches) is still recognised by its file; a new one still is not.
    other_crops = tmp_path / "other-crops.npz"
    np.savez(other_crops, **{**content, "training_hashes": np.zeros((1, 8), np.uint8)})
    crop = preprocessed_crop(seen, load_model(model).preprocess)[np.newaxis]
    assert load_model(model).seen_in_training(crop) == [True]
    assert load_model(other_crops).seen_in_training(crop) == [False]
    images = json.loads(fer("predict", seen, new, "--model", other_crops, "--json").stdout)
    assert [image["faces"][0]["in_training_data"] for image in images] == [True, False]
    # So does model.predict (fercli.label_faces) given the photo's path; an array names no file.
    photos = load_model(other_crops)
    assert [photos.predict(path)[0].in_training_data for path in (seen, new)] == [True, False]
    assert photos.predict(cv2.imread(str(seen)))[0].in_training_data is False
    assert notes == [
        line
        for line in fer("predict", seen, new, "--model", other_crops).stdout.splitlines()
        if line.startswith("note: ")
    ]
    # So it is by a file that only knows the files; and the same pixels in another file are
    # known by their crop alone.
    copy = write_image(tmp_path / "copy.bmp", cv2.imread(str(seen), cv2.IMREAD_GRAYSCALE))
    only_files = tmp_path / "only-files.npz"
    np.savez(
        only_files, **{key: array for key, array in content.items() if key != "training_hashes"}
    )
    images = json.loads(fer("predict", seen, new, copy, "--model", only_files, "--json").stdout)
    assert [image["faces"][0]["in_training_data"] for image in images] == [True, False, False]
    # (predict crops the copy's face as it crops the photo's: as preprocessing did where YuNet
    # is not asked, faces.yunet)
    copied = preprocessed_crop(copy, photos.preprocess)[np.newaxis]
    assert load_model(model).seen_in_training(copied) == [True]
    # A model file from before fercli kept either loads as before, and does not say.
    older = tmp_path / "older.npz"
    np.savez(
        older,
        **{
            key: array
            for key, array in content.items()
            if key not in ("training_hashes", "training_sources")
        },
    )
    result = fer("predict", seen, "--model", older, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["faces"][0]["in_training_data"] is None
    assert "note:" not in fer("predict", seen, "--model", older).stdout


def help_words(*command: str) -> str:
    """A command's --help as one line of words, panels' borders left out."""
    result = fer(*command, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_help_shows_text_in_square_brackets():
    # rich markup would take [ray] or [base] for a style and drop it.
    assert "needs pip install 'fercli[ray]'" in help_words("crossval")
    assert "The grid file (TOML): [base], [vary], seeds, folds, group." in help_words("sweep")
    assert "{path, model, faces: [{box, label, probabilities}]}" in help_words("predict")


def test_live_help_says_a_clip_without_loop_ends_the_command():
    assert "ends when the file ends: open the page before, or use --loop." in help_words("live")


def test_the_progress_bar_and_a_ctrl_c_follow_the_epochs_a_time_limit_cut():
    """fer train's bar is planned from the start event; once --time-limit cuts the epochs, its
    total and the epochs a Ctrl-C's message counts are the new count, and the time left with
    them."""
    from rich.progress import Progress

    from fercli.cli.learn_commands import _recording, interrupted_training
    from fercli.cli.options import epoch_reporter
    from fercli.core.events import Event

    bar = Progress(disable=True)
    task = bar.add_task("starting", total=None)
    reached: dict = {}
    progress = _recording(reached, epoch_reporter(bar, task))
    progress(Event("start", folds=1, epochs=40))
    assert bar.tasks[0].total == 40
    figures = {"loss": 1.0, "accuracy": 0.5, "validation_accuracy": None}
    progress(Event("epoch", fold=0, epoch=1, epochs=40, **figures))
    progress(Event("epoch", fold=0, epoch=2, epochs=23, **figures))
    assert bar.tasks[0].total == 23 and bar.tasks[0].completed == 2
    assert interrupted_training(reached, 1) == (
        "interrupted in epoch 3 of 23 (2 epochs finished); nothing saved"
    )
    # Quicker epochs win some back: the bar's total grows with the plan.
    progress(Event("epoch", fold=0, epoch=3, epochs=30, **figures))
    assert bar.tasks[0].total == 30 and bar.tasks[0].completed == 3
