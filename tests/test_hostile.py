"""What a hostile tester or a careless user feeds fercli (issue 20): an annotate folder that
holds the photos, a training run that diverges onto a good model, NaN and huge options,
tampered dataset files, crafted model files, a closed or full stdout, an ASCII terminal and
file names that carry terminal escapes. Nothing a user had is lost, nothing non-finite is
reported, and every refusal is one line.

Models for predict are written with numpy (no TensorFlow); the training cases train for real
on tiny synthetic data, where a learning rate of 1e12 or more makes the loss NaN at once.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import ALIGN_VERSION, PreprocessConfig, TrainConfig
from fercli.core.errors import DatasetError, ModelError
from fercli.core.store import datasets_dir, pack_json, unpack_json
from fercli.data.prepared import DATASET_FILE, load_dataset
from fercli.infer.model import MODEL_FORMAT, MODEL_FORMAT_VERSION, load_model
from synthetic import make_dataset, save_synthetic

CLASSES = ("anger", "happiness", "surprise")
runner = CliRunner()


def fer(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def fer_process(
    *args: object, env: dict | None = None, shell_prefix: str = "", stdout=subprocess.PIPE
):
    """`python -m fercli ARGS` in a fresh process; shell_prefix runs it through sh first
    (for redirections such as closing stdout)."""
    command = [sys.executable, "-m", "fercli", *map(str, args)]
    if shell_prefix:
        command = ["sh", "-c", f'{shell_prefix} exec "$@"', "sh", *command]
    return subprocess.run(
        command,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def strict_json(text: str) -> object:
    """Parse JSON as the standard has it: NaN and Infinity are not JSON."""

    def refuse(name: str):
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def numpy_model(
    path: Path,
    classes=CLASSES,
    layers=None,
    arrays=None,
    meta_changes=None,
    mean: float = 128.0,
    std: float = 64.0,
    config: PreprocessConfig | None = None,
) -> Path:
    """A fercli model file written with numpy: by default flatten -> dense softmax with small
    random weights; layers and arrays replace the network; config: its preprocessing settings
    (crop size)."""
    config = config or PreprocessConfig()
    rng = np.random.default_rng(0)
    if layers is None:
        layers = [
            {"type": "flatten", "weights": []},
            {"type": "dense", "activation": "softmax", "weights": ["layer1_kernel", "layer1_bias"]},
        ]
        arrays = {
            "layer1_kernel": rng.normal(0, 0.01, (config.crop_size**2, len(classes))).astype(
                np.float32
            ),
            "layer1_bias": np.zeros(len(classes), np.float32),
            **(arrays or {}),
        }
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "classes": list(classes),
        "layers": layers,
        "input_size": config.crop_size,
        "preprocess": config.to_dict(),
        "preprocess_fingerprint": config.fingerprint(),
        "align_version": ALIGN_VERSION,
        "training": TrainConfig().to_dict(),
        "versions": {},
        **(meta_changes or {}),
    }
    np.savez(
        path, meta=pack_json(meta), norm_mean=np.float64(mean), norm_std=np.float64(std), **arrays
    )
    return path


@pytest.fixture
def model_file(tmp_path) -> Path:
    return numpy_model(tmp_path / "good.npz")


@pytest.fixture
def photo_folder(tmp_path, astronaut_path) -> Path:
    """photos/x.png, photos/x.jpg (the same name as PNG), photos/a/x.jpg, photos/b/x.jpg."""
    import cv2

    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    picture = cv2.imread(str(astronaut_path))
    shutil.copy(astronaut_path, folder / "x.png")
    for path in (folder / "x.jpg", folder / "a" / "x.jpg", folder / "b" / "x.jpg"):
        ok, encoded = cv2.imencode(".jpg", picture)
        path.write_bytes(encoded.tobytes())
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- data loss: annotate ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same", "parent"])
def test_an_annotate_folder_that_holds_the_inputs_is_refused(model_file, photo_folder, where):
    before = contents(photo_folder)
    target = photo_folder if where == "same" else photo_folder.parent
    result = fer("predict", photo_folder, "--model", model_file, "--annotate", target)
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "--annotate" in line and "holds images to be read" in line
    assert contents(photo_folder) == before


def test_annotated_copies_mirror_the_folders_and_never_replace_a_file(
    model_file, photo_folder, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"the user's own file")
    result = fer("predict", photo_folder, "--model", model_file, "--annotate", out)
    assert result.exit_code == 0, result.output
    assert (out / "x.png").read_bytes() == b"the user's own file"
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*.png"))
    # a/x.jpg and b/x.jpg keep their folders; x.jpg and x.png both want x.png, which is taken.
    assert written == ["a/x.png", "b/x.png", "x-2.png", "x-3.png", "x.png"]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    notes = [note for note in notes if "has no neutral class" not in note]  # this model's
    assert len(notes) == 2 and all("x.png exists" in note for note in notes)
    assert "4 annotated images in" in result.stderr
    # A second run replaces nothing either, its own earlier copies included.
    again = fer("predict", photo_folder / "a", "--model", model_file, "--annotate", out)
    assert again.exit_code == 0 and (out / "x-4.png").is_file()
    assert "x.png exists" in again.stderr


# --- data loss: train ----------------------------------------------------------------------


@pytest.fixture
def tiny_dataset(fer_home) -> Path:
    return save_synthetic(make_dataset(labels=CLASSES, subjects=3))


def test_a_diverged_train_leaves_the_model_at_output_as_it_was(tiny_dataset, model_file, tmp_path):
    keep = tmp_path / "keep.npz"
    shutil.copy(model_file, keep)
    result = fer("train", "--epochs", "2", "--lr", "1e30", "--output", keep)
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "training diverged" in line and "left as it was" in line
    assert keep.read_bytes() == model_file.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".npz") == [
        "good.npz",
        "keep.npz",
    ]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".tmp-")]


def test_a_diverged_train_with_json_is_an_error_in_json_and_no_newest_model(
    tiny_dataset, model_file, fer_home
):
    models = fer_home / "models"
    models.mkdir()
    shutil.copy(model_file, models / "older.npz")
    result = fer("train", "--epochs", "3", "--lr", "1e12", "--json")
    assert result.exit_code == 1
    assert "training diverged" in one_error_line(result.stderr)
    assert "training diverged" in strict_json(result.stdout)["error"]
    assert [path.name for path in models.iterdir()] == ["older.npz"]


def test_output_that_is_not_a_regular_file_or_in_the_datasets_folder_is_refused_before_training(
    tiny_dataset, tmp_path
):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    inside = datasets_dir() / "synthetic" / DATASET_FILE
    dataset_bytes = inside.read_bytes()
    # In a fresh process, to see that TensorFlow was never imported: refused before training.
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fercli.cli import app\n"
        "for output in "
        f"{[str(fifo), str(folder), str(inside), str(datasets_dir() / 'new.npz')]!r}:\n"
        "    result = CliRunner().invoke(app, ['train', '--epochs', '1', '--output', output])\n"
        "    print(result.exit_code, result.stderr.strip().replace('\\n', ' | '))\n"
        "print('tensorflow' in sys.modules)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    *lines, imported = process.stdout.strip().splitlines()
    assert imported == "False", process.stdout + process.stderr
    assert len(lines) == 4
    for line, expected in zip(
        lines,
        ["not a regular file", "is a folder", "preprocessed datasets", "preprocessed datasets"],
        strict=True,
    ):
        assert line.startswith("1 error: ") and " | " not in line and expected in line, line
    assert stat.S_ISFIFO(fifo.stat().st_mode) and folder.is_dir()
    assert inside.read_bytes() == dataset_bytes


# --- NaN and infinity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "nan"),
        ("--momentum", "nan"),
        ("--max-rotation", "inf"),
        ("--max-rotation", "nan"),
        ("--max-shift", "1e308"),
        ("--max-shift", "inf"),
    ],
)
@pytest.mark.parametrize("command", ["train", "crossval"])
def test_non_finite_or_absurd_training_options_are_one_line(tiny_dataset, command, option, value):
    result = fer(command, "--epochs", "1", option, value)
    assert result.exit_code == 1
    assert option in one_error_line(result.stderr)


def test_a_non_finite_face_score_is_one_line(tmp_path):
    result = fer("preprocess", Path(__file__).parent / "data" / "faces", "--min-face-score", "nan")
    assert result.exit_code == 1
    assert "--min-face-score" in one_error_line(result.stderr)


@pytest.mark.slow
def test_a_crossval_whose_folds_diverge_has_no_result(tiny_dataset):
    result = fer(
        "crossval", "--folds", "2", "--epochs", "2", "--lr", "1e30", "--workers", "1", "--json"
    )
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "diverged in 2 of 2 folds" in line and "no result" in line
    report = strict_json(result.stdout)
    assert report["diverged_folds"] == [1, 2]
    assert all(
        fold["accuracy"] is None and "finite" in fold["diverged"] for fold in report["folds"]
    )
    for figure in ("mean_accuracy", "std_accuracy", "pooled_accuracy", "macro_f1"):
        assert report[figure] is None
    saved = strict_json(Path(report["files"]["report"]).read_text())
    assert saved["mean_accuracy"] is None and saved["diverged_folds"] == [1, 2]


def overflowing_model(path: Path) -> Path:
    """Finite weights of 1e200 that overflow on any image but a black one: with a zero mean,
    black is all zeros inside the network, which the old load check tried alone."""
    rng = np.random.default_rng(1)
    signs = lambda shape: np.where(rng.random(shape) < 0.5, -1.0, 1.0)  # noqa: E731
    layers = [
        {"type": "flatten", "weights": []},
        {"type": "dense", "activation": "relu", "weights": ["layer1_kernel"]},
        {"type": "dense", "activation": "softmax", "weights": ["layer2_kernel"]},
    ]
    arrays = {
        "layer1_kernel": 1e200 * signs((32 * 32, 8)),
        "layer2_kernel": 1e200 * signs((8, len(CLASSES))),
    }
    return numpy_model(path, layers=layers, arrays=arrays, mean=0.0, std=1.0)


def test_a_model_whose_weights_overflow_is_refused_and_never_prints_nan(tmp_path, astronaut_path):
    path = overflowing_model(tmp_path / "overflow.npz")
    with pytest.raises(ModelError, match="not finite numbers"):
        load_model(path)
    result = fer_process("predict", astronaut_path, "--model", path)
    assert result.returncode == 1
    assert "not finite" in one_error_line(result.stderr.decode())
    assert b"nan" not in result.stdout.lower()


# --- crafted model files ----------------------------------------------------------------------


def crafted_models(folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (model file, what the refusal says)}."""
    rng = np.random.default_rng(0)
    return {
        "a class that is a number": (
            numpy_model(folder / "number.npz", classes=(1, "happiness", "surprise")),
            "not a list of names",
        ),
        "a class twice": (
            numpy_model(folder / "twice.npz", classes=("anger", "anger", "surprise")),
            "appears twice",
        ),
        "an empty class name": (
            numpy_model(folder / "empty.npz", classes=("", "happiness", "surprise")),
            "not a list of names",
        ),
        "infinite weights": (
            numpy_model(
                folder / "inf.npz",
                arrays={
                    "layer1_kernel": np.where(rng.random((1024, 3)) < 0.5, -np.inf, np.inf).astype(
                        np.float32
                    )
                },
            ),
            "not finite",
        ),
        "NaN in the z-score": (numpy_model(folder / "nan-std.npz", std=float("nan")), "not finite"),
        "a zero z-score spread": (numpy_model(folder / "zero-std.npz", std=0.0), "not positive"),
    }


def test_crafted_models_are_refused_at_load_in_one_line(tmp_path):
    for case, (path, expected) in crafted_models(tmp_path).items():
        with pytest.raises(ModelError) as raised:
            load_model(path)
        message = str(raised.value)
        assert path.name in message and expected in message and "\n" not in message, (case, message)


def test_predict_with_a_crafted_model_is_one_line(tmp_path, astronaut_path):
    for case, (path, expected) in crafted_models(tmp_path).items():
        result = fer("predict", astronaut_path, "--model", path, "--json")
        assert result.exit_code == 1, case
        assert expected in one_error_line(result.stderr), case


def test_a_model_meta_with_nan_is_refused(tmp_path):
    path = tmp_path / "nan-meta.npz"
    numpy_model(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    text = (
        arrays["meta"].tobytes().decode().replace('"learning_rate": 0.001', '"learning_rate": NaN')
    )
    assert "NaN" in text
    np.savez(path, **{**arrays, "meta": np.frombuffer(text.encode(), np.uint8)})
    with pytest.raises(ModelError, match="not a fercli model file"):
        load_model(path)


# --- tampered datasets ----------------------------------------------------------------------


def tamper(path: Path, **changes) -> None:
    """Rewrite a dataset.npz with some arrays replaced; meta=callable(meta dict) edits the meta."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    meta = unpack_json(arrays["meta"])
    edit = changes.pop("meta", None)
    if edit is not None:
        meta = edit(meta)
    arrays.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def without(key):
    return lambda meta: {name: value for name, value in meta.items() if name != key}


TAMPERED = {
    "fewer labels than crops": lambda d: {"labels": d["labels"][:-1]},
    "more paths than crops": lambda d: {"paths": np.concatenate([d["paths"], d["paths"][:1]])},
    "crops of the wrong shape": lambda d: {"crops": d["crops"][:, :, :31]},
    "crops of the wrong size": lambda d: {"crops": np.zeros((len(d["crops"]), 64, 64), np.uint8)},
    "flat crops": lambda d: {"crops": d["crops"].reshape(len(d["crops"]), -1)},
    "float crops": lambda d: {"crops": d["crops"].astype(np.float64)},
    "integer labels": lambda d: {"labels": np.arange(len(d["labels"]))},
    "no preprocess settings": lambda d: {"meta": without("preprocess")},
    "preprocess settings that are a list": lambda d: {
        "meta": lambda m: {**m, "preprocess": [1, 2]}
    },
    "a crop size that is text": lambda d: {
        "meta": lambda m: {**m, "preprocess": {**m["preprocess"], "crop_size": "32"}}
    },
    "meta that is a list": lambda d: {"meta": lambda m: [m]},
    "a future format version": lambda d: {"meta": lambda m: {**m, "format_version": 99}},
}


@pytest.fixture
def dataset_arrays(tiny_dataset) -> dict:
    with np.load(tiny_dataset, allow_pickle=False) as archive:
        return dict(archive)


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_dataset_is_one_line_at_load(tiny_dataset, dataset_arrays, case, fer_home):
    assert len(load_dataset(tiny_dataset).crops) == 36  # the control: untouched, it loads
    tamper(tiny_dataset, **TAMPERED[case](dataset_arrays))
    with pytest.raises(DatasetError) as raised:
        load_dataset(tiny_dataset)
    assert str(tiny_dataset) in str(raised.value) and "\n" not in str(raised.value)
    for command in ("train", "crossval"):
        result = fer(
            command, "--epochs", "1", "--folds" if command == "crossval" else "--seed", "2"
        )
        assert result.exit_code == 1, (case, result.output)
        assert DATASET_FILE in one_error_line(result.stderr)
    assert not (fer_home / "models").exists()


def test_a_dataset_records_its_format_version(tiny_dataset):
    assert load_dataset(tiny_dataset).meta["format_version"] == 1


def test_a_dataset_written_before_format_versions_still_loads(tiny_dataset):
    tamper(tiny_dataset, meta=without("format_version"))
    assert len(load_dataset(tiny_dataset).crops) == 36


# --- odd outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["--json", "--csv", "table"])
def test_predict_with_stdout_closed_says_so_and_fails(model_file, astronaut_path, mode):
    arguments = ["predict", astronaut_path, "--model", model_file] + (
        [mode] if mode != "table" else []
    )
    result = fer_process(*arguments, shell_prefix=">&-")
    assert result.returncode == 1
    assert "standard output is closed" in one_error_line(result.stderr.decode())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("mode", ["--json", "--csv", "table"])
def test_predict_into_a_full_stdout_is_one_line(model_file, astronaut_path, mode):
    arguments = ["predict", astronaut_path, "--model", model_file] + (
        [mode] if mode != "table" else []
    )
    with open("/dev/full", "wb") as full:
        result = fer_process(*arguments, stdout=full)
    assert result.returncode == 1
    assert "cannot write the results to standard output" in one_error_line(result.stderr.decode())


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest.mark.parametrize("mode", ["--csv", "table", "--json"])
def test_a_name_the_terminal_cannot_encode_is_escaped_not_a_crash(
    model_file, astronaut_path, tmp_path, encoding, mode
):
    photo = tmp_path / "café_😀.png"
    shutil.copy(astronaut_path, photo)
    arguments = ["predict", photo, "--model", model_file] + ([mode] if mode != "table" else [])
    result = fer_process(*arguments, env={"PYTHONIOENCODING": encoding, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr.decode()
    # Nothing on stderr but the summary line that --csv and table mode end with, and the note
    # that this model has no neutral class.
    lines = result.stderr.decode(encoding).splitlines()
    assert [line for line in lines if "has no neutral class" not in line] in (
        [],
        ["1 image, 1 face"],
    )
    text = result.stdout.decode(encoding)
    if mode == "--json":
        assert strict_json(text)[0]["path"] == str(photo)
    else:
        assert "\\U0001f600.png" in text
        assert ("café" if encoding == "latin-1" else "caf\\xe9") in text


def test_csv_lets_no_control_byte_reach_the_terminal(tmp_path, astronaut_path):
    hostile = "a\x1b]0;PWNED\x07\x1b[2Jb"
    photo = tmp_path / f"{hostile}.png"
    shutil.copy(astronaut_path, photo)
    model = numpy_model(tmp_path / "model.npz", classes=("anger", "happy\x1b[31m", "surprise"))
    result = fer_process("predict", photo, "--model", model, "--csv")
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert not [ch for ch in text if ord(ch) < 32 and ch not in "\r\n"], repr(text)
    header, row = text.splitlines()
    assert "p_happy\\x1b[31m" in header
    assert "a\\x1b]0;PWNED\\x07\\x1b[2Jb.png" in row


# --- issue 25: what a second hostile tester found ----------------------------------------------


def test_train_output_replaces_only_a_model_file_and_says_so(tiny_dataset, model_file, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    refused = fer("train", "--epochs", "1", "--output", notes)
    assert "not a fercli model file" in one_error_line(refused.stderr)
    assert notes.read_text() == "my notes\n"
    replaced = fer("train", "--epochs", "1", "--output", model_file)
    assert replaced.exit_code == 0, replaced.output
    assert "the model file that was there is replaced" in replaced.output
    assert load_model(model_file).meta["dataset"]["name"] == "synthetic"


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bit-flipped":  # in the compressed data, past the first member's header
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    else:  # "not-an-archive"
        path.write_bytes(b"emotion,pixels\n")


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "not-an-archive"])
@pytest.mark.parametrize("command", ["train", "crossval", "evaluate"])
def test_a_damaged_dataset_file_is_one_line_and_json(
    tiny_dataset, model_file, fer_home, command, how
):
    path = datasets_dir() / "synthetic" / DATASET_FILE
    # Saved uncompressed by np.savez: compress it, so that a flipped byte breaks a CRC.
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    np.savez_compressed(path, **arrays)
    damage(path, how)
    args = {"train": ["--epochs", "1"], "crossval": ["--folds", "2", "--epochs", "1"]}.get(
        command, ["synthetic", "--model", model_file]
    )
    for extra in ([], ["--json"]):
        result = fer(command, *args, *extra)
        assert result.exit_code == 1, result.output
        line = one_error_line(result.stderr)
        assert str(path) in line and "Traceback" not in result.stdout
        if extra:
            assert strict_json(result.stdout)["error"] == line.removeprefix("error: ")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--seed", "-1"], "seed (--seed) -1 must be at least 0"),
        (["train", "--seed", "99999999999"], "99999999999 is more than 4294967295"),
        (["crossval", "--seed", "-1", "--json"], "must be at least 0"),
    ],
)
def test_out_of_range_seeds_are_one_line_before_tensorflow(tiny_dataset, args, expected):
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fercli.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "print(result.exit_code, result.stderr.strip().replace('\\n', ' | '))\n"
        "print('tensorflow' in sys.modules)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    line, imported = process.stdout.strip().splitlines()[-2:]
    assert imported == "False", process.stdout + process.stderr
    assert line.startswith("1 ") and expected in line and " | " not in line, line


def test_the_python_api_refuses_bad_input_with_fer_errors(model_file, tiny_dataset):
    import fercli
    from fercli.core.errors import FerError, ImageError

    model = load_model(model_file)
    for image, expected in [
        (np.zeros((0, 10, 3), np.uint8), "empty image array"),
        (np.zeros((10, 0), np.uint8), "empty image array"),
        ("", "an empty path"),
    ]:
        with pytest.raises(ImageError, match=expected):
            model.predict(image)
    for settings in ({"batch_size": 0}, {"seed": -1}, {"epochs": 0}):
        with pytest.raises(FerError):
            fercli.train(**settings)


# --- grids --------------------------------------------------------------------------------


def sweep(*args):
    return fer("sweep", *args)


@pytest.mark.parametrize(
    "text, sets, expected",
    [
        ("[vary]\nlr = [nan]\n", [], "finite number"),
        ("[vary]\nlr = [inf]\n", [], "finite number"),
        ("[vary]\nmax_rotation = [nan, 1.0]\n", [], "finite number"),
        ("[vary]\nlr = [0.1, 0.2]\n", ["--set", "lr=nan"], "finite number"),
        ("[vary]\nlr = [0.1, 0.2]\n", ["--set", "vary.lr=[inf]"], "finite number"),
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", [], "nested too deeply"),
        (
            "[vary]\nlr = [" + ", ".join(f"0.{i + 1:04d}" for i in range(200)) + "]\n"
            "momentum = [" + ", ".join(f"0.{i + 1:04d}" for i in range(200)) + "]\n",
            [],
            "cross-validations",
        ),
        (
            "seeds = [" + ", ".join(map(str, range(5000))) + "]\n[vary]\nlr = [0.1, 0.2]\n",
            [],
            "seeds",
        ),
    ],
)
def test_hostile_grids_are_one_line(tiny_dataset, tmp_path, text, sets, expected):
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    result = sweep("--grid", grid, *sets)
    assert result.exit_code == 1
    assert expected in one_error_line(result.stderr)


def test_grid_files_that_never_end_or_never_come_are_refused(tiny_dataset, tmp_path):
    fifo = tmp_path / "grid.fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        result = sweep("--grid", path)
        assert "not a regular file" in one_error_line(result.stderr)
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as stream:
        stream.truncate(3 << 20)  # sparse: 3 MB of zero bytes
    assert "not a grid file" in one_error_line(sweep("--grid", huge).stderr)


def test_a_grid_with_a_byte_order_mark_is_read(tmp_path):
    from fercli.learn.grid import read_grid

    grid = tmp_path / "grid.toml"
    grid.write_bytes(b"\xef\xbb\xbf[vary]\nlr = [0.1, 0.2]\n")
    assert read_grid(grid).vary == {"learning_rate": (0.1, 0.2)}


def test_ray_empty_or_silent_is_refused_in_seconds(tiny_dataset, tmp_path):
    import socket

    grid = tmp_path / "grid.toml"
    grid.write_text("[vary]\nlr = [0.1, 0.2]\n")
    assert "--ray ''" in one_error_line(sweep("--grid", grid, "--ray", "").stderr)
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        line = one_error_line(sweep("--grid", grid, "--ray", f"127.0.0.1:{port}").stderr)
    assert "does not answer" in line and f"127.0.0.1:{port}" in line


def test_an_http_server_is_not_taken_for_a_ray_cluster(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fercli.core.errors import EngineError
    from fercli.learn.engines import _check_reachable

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineError, match="not as a Ray cluster"):
            _check_reachable(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()


def test_a_grpc_server_passes_the_ray_probe():
    """Ray's head (GCS) is a gRPC server: the probe must let one through."""
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    from fercli.learn.engines import _check_reachable

    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _check_reachable(f"127.0.0.1:{port}")
    finally:
        server.stop(0)


@pytest.mark.slow
def test_a_one_seed_sweep_reports_no_nan_and_retrains_a_truncated_fold(tiny_dataset, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "seeds = [0]\nfolds = 2\n[base]\nepochs = 1\nbatch_size = 8\n"
        "[vary]\nflip_tta = [false, true]\n"
    )
    first = sweep("--grid", grid)
    assert first.exit_code == 0, first.output
    assert "nan" not in first.output.lower() and "n/a" in first.output
    report = strict_json(sweep("--grid", grid, "--json").stdout)
    folder = Path(report["files"]["csv"]).parent
    table = (folder / "sweep.csv").read_text()
    assert "nan" not in table.lower()
    for recipe in report["recipes"]:
        low, high = recipe["accuracy_interval"]
        assert 0.0 <= low <= high <= 1.0
        d_low, d_high = recipe["difference_interval"]
        assert -1.0 <= d_low <= d_high <= 1.0
    fold = sorted((folder / "folds").glob("*/*.npz"))[0]
    fold.write_bytes(fold.read_bytes()[:100])
    again = sweep("--grid", grid, "--json")
    assert again.exit_code == 0, again.output
    assert strict_json(again.stdout)["trained_folds"] == 1


# --- FER2013, fer list, messages --------------------------------------------------------------


def test_a_fer2013_label_that_only_looks_like_a_digit_is_one_skipped_row(tmp_path):
    from fercli.data.fer2013 import read_rows

    pixels = " ".join(["128"] * 48 * 48)
    path = tmp_path / "fer2013.csv"
    path.write_text(
        "emotion,pixels,Usage\n"
        f"3,{pixels},Training\n²,{pixels},Training\n{'9' * 5000},{pixels},Training\n"
        f"6,{pixels},Training\n",
        encoding="utf-8",
    )
    skipped: list = []
    rows = list(read_rows(path, skipped))
    assert [number for number, *_ in rows] == [2, 5]
    assert [item.reason.split(":")[0] for item in skipped] == ["row 3", "row 4"]


def test_fifos_planted_in_fer_home_do_not_hang_fer_list(fer_home, tiny_dataset):
    (fer_home / "models").mkdir()
    os.mkfifo(fer_home / "models" / "planted.npz")
    os.mkfifo(fer_home / "datasets" / "synthetic" / "extra.npz")
    (fer_home / "datasets" / "fifo-set").mkdir()
    os.mkfifo(fer_home / "datasets" / "fifo-set" / DATASET_FILE)
    (fer_home / "runs" / "crossval-x").mkdir(parents=True)
    os.mkfifo(fer_home / "runs" / "crossval-x" / "report.json")
    (fer_home / "runs" / "sweep-x").mkdir()
    os.mkfifo(fer_home / "runs" / "sweep-x" / "grid.json")
    (fer_home / "runs" / "sweep-y" / "folds").mkdir(parents=True)
    (fer_home / "runs" / "sweep-y" / "grid.json").write_text(
        json.dumps({"grid": {"seeds": [0], "folds": 2}, "recipes": [{}]})
    )
    os.mkfifo(fer_home / "runs" / "sweep-y" / "sweep.json")
    process = fer_process("list", "--json", env={"FER_HOME": str(fer_home)})
    assert process.returncode == 0, process.stderr
    listed = strict_json(process.stdout.decode())
    assert "planted.npz" in json.dumps(listed)


def test_a_model_with_aliased_class_names_scores_a_dataset(tiny_dataset, tmp_path):
    aliased = numpy_model(tmp_path / "aliased.npz", classes=("angry", "happy", "surprised"))
    result = fer("evaluate", "synthetic", "--model", aliased, "--json")
    assert result.exit_code == 0, result.output
    report = strict_json(result.stdout)
    assert report["protocol"]["classes"] == ["anger", "happiness", "surprise"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["evaluate", "{photo}", "--model", "{model}"], "not an .npz archive"),
        (["train", "--init", "/etc/passwd", "--epochs", "1"], "not an .npz archive"),
        (["predict", "{photo}", "--model", "/etc/passwd"], "not an .npz archive"),
        (["preprocess", "{empty}"], "an empty file"),
        (["preprocess", "{csv}"], "without FER2013's header"),
    ],
)
def test_poor_messages_are_now_plain(
    tiny_dataset, model_file, astronaut_path, tmp_path, args, expected
):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    values = {"photo": astronaut_path, "model": model_file, "empty": empty, "csv": other}
    result = fer(*(arg.format(**values) for arg in args))
    line = one_error_line(result.stderr)
    assert expected in line and "pickle" not in line, line


def test_the_fer_home_hint_only_for_paths_in_fer_home(model_file, astronaut_path):
    result = fer("predict", astronaut_path, "--model", model_file, "--annotate", "/proc/version")
    line = one_error_line(result.stderr)
    assert "FER_HOME" not in line


# --- issue 32: limits on what a model file may cost, its metadata's shape, smaller holes -------


def padded_meta_model(path: Path, padding: int) -> Path:
    """numpy_model's file with its meta JSON followed by `padding` spaces (a multiple of 4 MB;
    still valid JSON): a file of a few hundred KB whose meta unpacks to more than padding
    bytes."""
    import io
    import zipfile

    template = numpy_model(path.with_name(f"template-{path.name}"))
    with np.load(template, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    template.unlink()
    text = arrays.pop("meta").tobytes()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (len(text) + padding,)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        for key, value in arrays.items():
            stream = io.BytesIO()
            np.save(stream, value, allow_pickle=False)
            bundle.writestr(f"{key}.npy", stream.getvalue())
        with bundle.open("meta.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue() + text)
            chunk = b" " * 2**22
            for _ in range(padding // len(chunk)):
                member.write(chunk)
    return path


def peak_mb(call):
    """call() and the most memory Python and NumPy held at once while it ran, in MB (tracemalloc
    sees NumPy's arrays; a process's peak RSS would include the parent's at fork)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 2**20


def test_fer_list_reads_model_files_within_their_limits_and_picks_a_readable_newest(fer_home):
    from fercli.api import list_home
    from fercli.core.archives import MAX_META_BYTES
    from fercli.infer.model import MAX_MODEL_BYTES

    models = fer_home / "models"
    models.mkdir(parents=True)
    good = numpy_model(models / "good.npz")
    bomb = padded_meta_model(models / "bomb.npz", MAX_MODEL_BYTES + 2**24)
    wordy = padded_meta_model(models / "wordy.npz", MAX_META_BYTES + 2**22)
    assert bomb.stat().st_size < 2 * 2**20
    (models / "notes.npz").write_text("not a model")
    os.utime(good, (1e9, 1e9))  # the oldest: each of the others is newer, and unreadable

    inventory, peak = peak_mb(list_home)

    assert peak < 50, f"fer list held {peak:.0f} MB"
    errors = {entry.name: entry.details.get("error") for entry in inventory.models}
    assert f"limit {MAX_MODEL_BYTES // 2**20} MB" in errors["bomb.npz"]
    assert "its metadata unpacks to" in errors["wordy.npz"]
    assert errors["notes.npz"] and errors["good.npz"] is None
    # What fer list calls the newest model is the one predict loads, and it can be read.
    assert inventory.default_model == load_model().path.name == "good.npz"
    for path in (bomb, wordy):
        with pytest.raises(ModelError, match="unpacks to"):
            load_model(path)


def test_train_output_onto_a_model_bomb_is_refused_before_training(tiny_dataset, tmp_path):
    from fercli.infer.model import MAX_MODEL_BYTES

    bomb = padded_meta_model(tmp_path / "bomb.npz", MAX_MODEL_BYTES + 2**24)
    before = bomb.read_bytes()
    result = fer("train", "--epochs", "1", "--output", bomb)
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "not a fercli model file" in line and "limit" in line, line
    assert bomb.read_bytes() == before


CRAFTED_META = {
    "training that is text": ({"training": "paper"}, "training"),
    "training that is a list": ({"training": ["paper"]}, "training"),
    "dataset that is text": ({"dataset": "jaffe"}, "dataset"),
    "a dataset's images that are text": (
        {"dataset": {"name": "jaffe", "images": "many"}},
        "dataset.images",
    ),
    "a dataset's name that is a number": ({"dataset": {"name": 7, "images": 3}}, "dataset.name"),
    "datasets that are not objects": ({"datasets": ["jaffe"]}, "datasets"),
    "a data fingerprint that is a number": ({"data_fingerprint": 5}, "data_fingerprint"),
    "an ensemble that is text": ({"ensemble": "ten"}, "ensemble"),
    "a flip that is text": ({"test_time_flip": "no"}, "test_time_flip"),
    "preprocess settings that are text": ({"preprocess": "x"}, "preprocess"),
    "layers that are not a list": ({"layers": {"type": "flatten"}}, "layers"),
    "a format version that is text": ({"format_version": "3"}, "format version '3'"),
    "version 3 without its per-image flag": ({"format_version": 3}, "per_image_standardisation"),
    "the per-image flag in a version 2 file": (
        {"per_image_standardisation": True},
        "format version 3",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_META))
def test_crafted_model_metadata_is_refused_at_load_in_one_line(tmp_path, case):
    changes, expected = CRAFTED_META[case]
    path = numpy_model(tmp_path / "crafted.npz", meta_changes=changes)
    with pytest.raises(ModelError) as raised:
        load_model(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: damaged model file (") and expected in message, message
    assert "\n" not in message and "Error:" not in message, message


@pytest.mark.parametrize(
    "case", ["training that is text", "dataset that is text", "a dataset's images that are text"]
)
def test_evaluate_and_init_with_crafted_metadata_are_one_line(tiny_dataset, tmp_path, case):
    path = numpy_model(tmp_path / "crafted.npz", meta_changes=CRAFTED_META[case][0])
    for args in (
        ["evaluate", "synthetic", "--model", path],
        ["train", "--init", path, "--epochs", "1"],
    ):
        result = fer(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "damaged model file" in one_error_line(result.stderr), args


def test_explaining_a_large_crop_takes_bounded_memory(tmp_path):
    """A crop-96 model with mirrored test faces: the occluded copies (2,025 of them) go through
    the network in batches, so the memory does not grow with the fourth power of the crop."""
    from fercli.infer.explain import explain_crops

    path = numpy_model(
        tmp_path / "crop96.npz",
        config=PreprocessConfig(crop_size=96),
        meta_changes={"test_time_flip": True},
    )
    model = load_model(path)
    crops = np.random.default_rng(0).integers(0, 256, (1, 96, 96), dtype=np.uint8)
    [face], peak = peak_mb(lambda: explain_crops(model, crops, [(0, 0, 96, 96)], True))
    assert face.map.shape == (96, 96) and len(face.maps) == len(CLASSES)
    assert peak < 120, f"explaining one crop-96 face held {peak:.0f} MB"


def test_a_bad_starting_model_is_refused_before_any_work(tiny_dataset, tmp_path, fer_home):
    # A model file that says "paper" of a network that is not the paper's.
    flat = numpy_model(tmp_path / "flat.npz")
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'folds = 2\nseeds = [0]\ngroup = "random"\n[base]\nepochs = 1\n'
        f'init = "{tmp_path / "missing.npz"}"\n[vary]\nlr = [0.001, 0.002]\n'
    )
    result = fer("sweep", "--grid", grid, "--workers", "1")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "missing.npz" in line and "fold" not in line, line
    for command in (["crossval", "--folds", "2", "--workers", "1"], ["train"]):
        result = fer(*command, "--epochs", "1", "--recipe", "paper", "--init", flat)
        assert result.exit_code == 1
        line = one_error_line(result.stderr)
        assert "flat.npz" in line and "do not fit" in line and "fold" not in line, line
    assert not [path for folder in ("runs", "models") for path in fer_home.glob(f"{folder}/*")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_crossval_killed_while_training_leaves_no_run_folder(tiny_dataset, fer_home):
    from test_kill import kill_session, session_processes, wait_until

    process = subprocess.Popen(
        [sys.executable, "-m", "fercli", "crossval", "--folds", "2", "--epochs", "100000"]
        + ["--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: len(session_processes(process.pid)) >= 3, timeout=120, step=0.05)
        import time

        time.sleep(3.0)  # the fold workers are training
        kill_session(process.pid)
        process.wait(timeout=60)
    finally:
        kill_session(process.pid)
    assert not list(fer_home.glob("runs/*")), list(fer_home.glob("runs/*"))


def test_port_80_answers_the_host_names_browsers_send():
    from fercli.web.access import access_for

    class Bound:
        """What access_for reads of a socket: the address it is bound to."""

        def __init__(self, port: int) -> None:
            self.port = port

        def getsockname(self):
            return ("127.0.0.1", self.port)

    # A browser leaves the scheme's own port (80 for http) out of the Host header.
    access = access_for(Bound(80))
    for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.1:80", "LOCALHOST:80"):
        assert access.host_allowed(host), host
    for host in ("attacker.example", "attacker.example:80", "127.0.0.1:81", ""):
        assert not access.host_allowed(host), host
    other = access_for(Bound(8080))
    assert other.host_allowed("127.0.0.1:8080") and not other.host_allowed("127.0.0.1")


@pytest.mark.parametrize(
    "url, shown",
    [
        ("rtsp://admin:hunter2@cam.local:554/stream1", "rtsp://***@cam.local:554/stream1"),
        (
            "http://cam.local/video.cgi?user=admin&pwd=hunter2&resolution=640",
            "http://cam.local/video.cgi?user=***&pwd=***&resolution=640",
        ),
        ("http://u:p@h:1?x=@y/z", "http://***@h:1?x=@y/z"),
        (
            "https://cam/s?access_token=abc123&API_KEY=k9&Password=pw&auth=zz&fps=5#frag",
            "https://cam/s?access_token=***&API_KEY=***&Password=***&auth=***&fps=5#frag",
        ),
        ("http://cam/live?secret", "http://cam/live?secret"),
        ("http://cam.local:8080/video", "http://cam.local:8080/video"),
        ("video.mp4", "video.mp4"),
        ("0", "0"),
    ],
)
def test_credentials_anywhere_in_a_stream_url_are_redacted(url, shown):
    from fercli.web import redact

    assert redact(url) == shown


@pytest.mark.parametrize("place", ["models", "datasets/pictures", "runs", "runs/crossval-x"])
@pytest.mark.parametrize("option", ["--explain", "--annotate"])
def test_pictures_are_never_written_into_fer_home_s_own_folders(
    model_file, astronaut_path, fer_home, place, option
):
    target = fer_home / place
    result = fer("predict", astronaut_path, "--model", model_file, option, target)
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {option} {target}: ") and "FER_HOME" in line, line
    assert not list(fer_home.rglob("*.png")) and not list(fer_home.rglob(".fercli-output"))


def test_api_image_errors_name_the_file_and_every_kind_of_path_is_taken(
    model_file, astronaut_path, tmp_path
):
    import fercli
    from fercli.core.errors import ImageError

    model = load_model(model_file)
    missing = tmp_path / "missing.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    calls = (model.predict, model.explain, fercli.align_faces)
    for image, reason in (
        (missing, "no such file"),
        (str(missing), "no such file"),
        (os.fsencode(missing), "no such file"),
        (broken, "not an image"),
    ):
        for call in calls:
            with pytest.raises(ImageError) as raised:
                call(image)
            assert str(raised.value) == f"{os.fsdecode(image)}: {reason}" or (
                str(raised.value).startswith(f"{os.fsdecode(image)}: {reason}")
            ), str(raised.value)

    class Named:
        """An os.PathLike that is not a pathlib.Path."""

        def __fspath__(self) -> str:
            return str(astronaut_path)

    from pathlib import PurePosixPath

    expected = [face.box for face in model.predict(astronaut_path)]
    assert expected
    for image in (Named(), os.fsencode(astronaut_path), PurePosixPath(astronaut_path)):
        for call in calls:
            assert [face.box for face in call(image)] == expected, (call, image)
