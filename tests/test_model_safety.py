"""Model files from elsewhere: loading one never runs code from it, never unpacks more than a
model can hold, and every unusable file gets one clear line, from the library and from
`fer predict --model`.

The model files here are written with numpy alone (a flatten-dense network in fercli's
format), so that these tests need no TensorFlow.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fercli.core.config import ALIGN_VERSION, PreprocessConfig, TrainConfig, fingerprint
from fercli.core.errors import ModelError
from fercli.core.store import pack_json, unpack_json
from fercli.infer.model import (
    MAX_MODEL_BYTES,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    load_model,
)
from synthetic import make_dataset

SOURCE = Path(__file__).parents[1] / "src" / "fercli"
FER = Path(sys.executable).with_name("fer")
CLASSES = ("anger", "happiness", "surprise")


def write_model(
    path: Path, classes=CLASSES, meta_changes: dict | None = None, arrays: dict | None = None
) -> Path:
    """A valid fercli model file (flatten, dense softmax) made with numpy, with some meta
    fields or arrays replaced."""
    config = PreprocessConfig()
    rng = np.random.default_rng(0)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "classes": list(classes),
        "layers": [
            {"type": "flatten", "weights": []},
            {"type": "dense", "activation": "softmax", "weights": ["layer1_kernel", "layer1_bias"]},
        ],
        "input_size": config.crop_size,
        "preprocess": config.to_dict(),
        "preprocess_fingerprint": config.fingerprint(),
        "align_version": ALIGN_VERSION,
        "training": TrainConfig().to_dict(),
        "versions": {},
        **(meta_changes or {}),
    }
    content = {
        "meta": pack_json(meta),
        "norm_mean": np.float64(128.0),
        "norm_std": np.float64(64.0),
        "layer1_kernel": rng.normal(0, 0.01, (config.crop_size**2, len(classes))).astype(
            np.float32
        ),
        "layer1_bias": np.zeros(len(classes), np.float32),
        **(arrays or {}),
    }
    np.savez(path, **content)
    return path


@pytest.fixture
def model_file(tmp_path) -> Path:
    return write_model(tmp_path / "good.npz")


def test_the_numpy_made_model_is_a_valid_model(model_file):
    """The control for every refusal below: the unaltered file loads and predicts."""
    model = load_model(model_file)
    probabilities = model.predict_proba(np.zeros((2, 32, 32), np.uint8))
    assert model.classes == list(CLASSES)
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1)


# --- no code from the file ---------------------------------------------------------------


class CreatesMarker:
    """Unpickling this creates a folder: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def live_payload(marker: Path) -> np.ndarray:
    return np.array([CreatesMarker(marker)], dtype=object)


@pytest.mark.parametrize("key", ["layer1_kernel", "norm_mean", "meta", "extra"])
def test_a_pickled_array_is_never_unpickled(tmp_path, key):
    marker = tmp_path / "code-ran"
    path = write_model(tmp_path / "evil.npz", arrays={key: live_payload(marker)})

    with pytest.raises(ModelError, match="evil.npz") as raised:
        load_model(path)

    assert not marker.exists()
    assert "\n" not in str(raised.value)
    # The file is live: a loader that unpickles runs it.
    with np.load(path, allow_pickle=True) as archive:
        archive[key]
    assert marker.exists()


def test_a_meta_that_is_a_pickled_dictionary_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    meta = np.array({"format": MODEL_FORMAT, "hook": CreatesMarker(marker)}, dtype=object)
    path = write_model(tmp_path / "dict-meta.npz", arrays={"meta": meta})

    with pytest.raises(ModelError, match="dict-meta.npz: not a fercli model file"):
        load_model(path)
    assert not marker.exists()


def test_a_pickled_model_given_to_predict_runs_nothing(tmp_path, astronaut_path):
    marker = tmp_path / "code-ran"
    path = write_model(tmp_path / "evil.npz", arrays={"layer1_kernel": live_payload(marker)})

    completed = subprocess.run(
        [str(FER), "predict", "--model", str(path), str(astronaut_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 1
    assert "Traceback" not in completed.stdout + completed.stderr
    assert completed.stderr.strip().startswith("error: ") and "evil.npz" in completed.stderr
    assert not marker.exists()


def _source_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 5, SOURCE
    return files


# Calls that run code from the data they read.
UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "torch.load",
    "yaml.load",
    "yaml.unsafe_load",
    "eval",
    "exec",
}
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "torch"}
# The one module that may pickle: the worker pool passes fercli's own tasks and results
# between fercli's own processes over pipes (as multiprocessing does), never anything read
# from a file. Its uses are counted, so that a new one is seen.
PICKLING_ALLOWED = {"parallel.py": 2}


def test_nothing_in_the_source_unpickles_or_evaluates():
    """Every numpy load says allow_pickle=False, Keras model loading (if it ever appears)
    says safe_mode=True, and no unpickling module or eval is used at all."""
    problems = []
    for path in _source_files():
        text = path.read_text()
        if "allow_pickle=True" in text.replace(" ", ""):
            problems.append(f"{path.name}: allow_pickle=True")
        found = []
        for node in ast.walk(ast.parse(text, filename=str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            found += [f"{where}: {problem}" for problem in _unsafe_use(node)]
        pickling = [
            problem for problem in found if "pickle" in problem and "allow_pickle" not in problem
        ]
        if len(pickling) == PICKLING_ALLOWED.get(path.name):
            found = [problem for problem in found if problem not in pickling]
        problems += found
    assert not problems, "\n".join(problems)


def _unsafe_use(node: ast.AST) -> list[str]:
    """What is unsafe in one syntax node: an unpickling import, an unsafe call, a load
    without its safety flag."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [alias.name for alias in node.names]
        names += [node.module] if isinstance(node, ast.ImportFrom) else []
        return [
            f"imports {name}"
            for name in filter(None, names)
            if name.split(".")[0] in UNSAFE_MODULES
        ]
    if not isinstance(node, ast.Call):
        return []
    called = ast.unparse(node.func)
    keywords = {keyword.arg: keyword.value for keyword in node.keywords}
    problems = [f"calls {called}"] if called in UNSAFE_CALLS else []
    if called in ("np.load", "numpy.load", "np.lib.format.read_array", "read_array"):
        if not _is_constant(keywords.get("allow_pickle"), False):
            problems.append(f"{called} without allow_pickle=False")
    if called.endswith("load_model") and "keras" in called:
        if not _is_constant(keywords.get("safe_mode"), True):
            problems.append(f"{called} without safe_mode=True")
    return problems


def _is_constant(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_the_source_check_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The check above, run on a file with each forbidden use, reports every one."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport keras\n"
        "np.load('x.npz')\nnp.load('x.npz', allow_pickle=True)\n"
        "keras.models.load_model('m.keras')\ntorch.load('m.pt')\neval('1')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "_source_files", lambda: [bad])
    with pytest.raises(AssertionError) as raised:
        test_nothing_in_the_source_unpickles_or_evaluates()
    report = str(raised.value)
    for expected in (
        "allow_pickle=True",
        "imports pickle",
        "np.load without allow_pickle=False",
        "keras.models.load_model without safe_mode=True",
        "calls torch.load",
        "calls eval",
    ):
        assert expected in report, expected


# --- no bombs --------------------------------------------------------------------------------


def write_zip_bomb(path: Path, unpacked: int) -> Path:
    """A model file whose norm_mean array is `unpacked` bytes of zeros, deflated to ~1/1000."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (unpacked,)}
    )
    model = write_model(path.with_name("template.npz"))
    with np.load(model, allow_pickle=False) as archive:
        others = {key: archive[key] for key in archive.files if key != "norm_mean"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        for key, value in others.items():
            stream = io.BytesIO()
            np.save(stream, value, allow_pickle=False)
            bundle.writestr(f"{key}.npy", stream.getvalue())
        with bundle.open("norm_mean.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(2**22)
            for _ in range(unpacked // len(chunk)):
                member.write(chunk)
    return path


MEASURE = """
import resource, sys
from fercli.core.errors import ModelError
from fercli.infer.model import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model(sys.argv[1])
    print("loaded")
except ModelError as error:
    print(error)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KB; bytes on macOS
print(grown // (2**20 if sys.platform == "darwin" else 1024))
"""


def test_a_model_that_unpacks_to_gigabytes_is_refused_before_unpacking(tmp_path):
    path = write_zip_bomb(tmp_path / "bomb.npz", MAX_MODEL_BYTES + 2**26)
    assert path.stat().st_size < 2 * 2**20

    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    message, grown_mb = completed.stdout.strip().splitlines()
    assert "bomb.npz" in message and "more than any fercli model" in message
    assert f"limit {MAX_MODEL_BYTES // 2**20} MB" in message
    assert int(grown_mb) < 100, f"loading grew the process by {grown_mb} MB"


# --- one clear line for every unusable file ----------------------------------------------------


def unusable_models(folder: Path, model_file: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, what its error line must say)}."""
    data = model_file.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, content: bytes, expected: str) -> None:
        path = folder / name
        path.write_bytes(content)
        cases[name] = (path, expected)

    add("half.npz", data[: len(data) // 2], "not a fercli model file")
    add("cut.npz", data[:-10], "not a fercli model file")
    add("empty.npz", b"", "not a fercli model file")
    add("notes.npz", b"weights: 1 2 3\n", "not a fercli model file")
    add("zeros.npz", b"\x00" * 100, "not a fercli model file")
    add(
        "photo.npz",
        (Path(__file__).parent / "data" / "faces" / "happiness" / "astronaut.png").read_bytes(),
        "not a fercli model file",
    )
    with zipfile.ZipFile(folder / "archive.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    cases["archive.npz"] = (folder / "archive.npz", "not a fercli model file")
    np.savez(folder / "plain.npz", weights=np.zeros(3))
    cases["plain.npz"] = (folder / "plain.npz", "not a fercli model file")
    np.savez(folder / "json-list.npz", meta=pack_json([1, 2, 3]))
    cases["json-list.npz"] = (folder / "json-list.npz", "not a fercli model file")
    from fercli.data.prepared import save_dataset

    dataset = save_dataset(make_dataset(labels=("anger", "happiness"), subjects=1), folder / "data")
    cases["dataset.npz"] = (dataset, "not a fercli model file")
    np.save(folder / "single.npy", np.zeros(3))  # a lone array, not an archive
    cases["single.npy"] = (folder / "single.npy", "not a fercli model file")
    future = max(READABLE_FORMAT_VERSIONS) + 1
    write_model(folder / "future.npz", meta_changes={"format_version": future})
    cases["future.npz"] = (folder / "future.npz", f"model format version {future} is not supported")
    old_settings = PreprocessConfig().to_dict()
    write_model(
        folder / "old-align.npz",
        meta_changes={
            "align_version": ALIGN_VERSION - 1,
            "preprocess_fingerprint": fingerprint(
                {"align_version": ALIGN_VERSION - 1, **old_settings}
            ),
        },
    )
    cases["old-align.npz"] = (folder / "old-align.npz", f"alignment version {ALIGN_VERSION - 1}")
    newer_settings = {**old_settings, "clahe": True}
    write_model(
        folder / "newer-settings.npz",
        meta_changes={
            "preprocess": newer_settings,
            "preprocess_fingerprint": fingerprint(
                {"align_version": ALIGN_VERSION, **newer_settings}
            ),
        },
    )
    cases["newer-settings.npz"] = (folder / "newer-settings.npz", "retrain it with `fer train`")
    write_model(folder / "no-version.npz", meta_changes={"format_version": None})
    cases["no-version.npz"] = (
        folder / "no-version.npz",
        "model format version None is not supported",
    )
    write_model(folder / "wrong-shape.npz", arrays={"layer1_kernel": np.zeros((5, 3), np.float32)})
    cases["wrong-shape.npz"] = (folder / "wrong-shape.npz", "damaged model file")
    write_model(
        folder / "missing-weights.npz",
        meta_changes={
            "layers": [{"type": "dense", "activation": "softmax", "weights": ["nowhere"]}]
        },
    )
    cases["missing-weights.npz"] = (folder / "missing-weights.npz", "damaged model file")
    write_model(
        folder / "foreign-layer.npz",
        meta_changes={"layers": [{"type": "lambda", "weights": [], "code": "os.system('x')"}]},
    )
    cases["foreign-layer.npz"] = (
        folder / "foreign-layer.npz",
        "not supported by the numpy runtime",
    )
    write_model(folder / "string-meta.npz", meta_changes={"classes": "abc", "layers": "flatten"})
    cases["string-meta.npz"] = (folder / "string-meta.npz", "damaged model file")
    return cases


def test_every_unusable_model_file_is_one_clear_line(tmp_path, model_file):
    for name, (path, expected) in unusable_models(tmp_path, model_file).items():
        with pytest.raises(ModelError) as raised:
            load_model(path)
        message = str(raised.value)
        assert path.name in message and expected in message, (name, message)
        assert "\n" not in message, (name, message)


def test_predict_with_an_unusable_model_prints_one_line_and_fails(
    tmp_path, model_file, astronaut_path
):
    cases = unusable_models(tmp_path, model_file)
    # One real `fer` process per file, all at once: the user's view, tracebacks included.
    running = {
        name: subprocess.Popen(
            [str(FER), "predict", "--model", str(path), str(astronaut_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (path, _) in cases.items()
    }
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        expected = cases[name][1]
        assert process.returncode == 1, (name, stderr)
        assert "Traceback" not in stdout + stderr, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert cases[name][0].name in lines[0] and expected in lines[0], (name, lines[0])
        assert stdout == "", (name, stdout)


def test_predict_with_the_valid_model_works(model_file, astronaut_path):
    """The control for the test above: the same command with the unaltered model succeeds."""
    completed = subprocess.run(
        [str(FER), "predict", "--model", str(model_file), str(astronaut_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    (image,) = json.loads(completed.stdout)
    (face,) = image["faces"]
    assert set(face["probabilities"]) == set(CLASSES)


def test_a_half_written_model_is_not_the_most_recent_model(fer_home, model_file, astronaut_path):
    """A run killed while saving leaves only a .tmp-* file, which predict never picks up."""
    models = fer_home / "models"
    models.mkdir(parents=True)
    (models / ".tmp-k2j4h1.npz").write_bytes(model_file.read_bytes()[:300])

    completed = subprocess.run(
        [str(FER), "predict", str(astronaut_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 1
    assert (
        completed.stderr.strip()
        == "error: no trained model: run `fer train` first, or pass --model"
    )


def test_meta_survives_the_check_as_plain_json(model_file):
    with np.load(model_file, allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)
        assert unpack_json(archive["meta"])["format"] == MODEL_FORMAT
