"""The Python API as the README shows it: the README's own example runs, without TensorFlow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import fercli
from fercli.core.config import TrainConfig
from fercli.core.errors import ImageError
from fercli.learn.training import train_model
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


@pytest.fixture
def newest_model(fer_home):
    dataset = make_dataset(labels=("anger", "happiness", "surprise"), subjects=3)
    return train_model(
        dataset, TrainConfig(epochs=1, copies=0), fer_home / "models" / "shapes.npz"
    ).path


def test_the_readme_example_runs_and_never_imports_tensorflow(newest_model):
    code = (
        readme_example()
        + "\nimport sys\nassert 'tensorflow' not in sys.modules, 'TensorFlow imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"face at \d+,\d+ \(\d+x\d+\): (anger|happiness|surprise) [01]\.\d\d", lines[0]
    ), lines
    assert lines[-1] == "1 (32, 32) (68, 2)"


def test_predict_takes_a_path_a_bgr_array_or_a_gray_one_alike(newest_model, astronaut_path):
    model = fercli.load_model()
    assert model.path == newest_model
    by_path = model.predict(astronaut_path)
    bgr = cv2.imread(str(astronaut_path), cv2.IMREAD_COLOR)
    by_array = model.predict(bgr)
    by_gray = fercli.label_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), model)
    assert len(by_path) == len(by_array) == len(by_gray) == 1
    assert by_path[0].box == by_array[0].box == by_gray[0].box
    assert by_path[0].label == by_array[0].label == by_gray[0].label
    assert sum(by_path[0].probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert model.predict(np.zeros((120, 160), np.uint8)) == []  # no face: an empty list


def test_a_bad_array_is_a_typed_error(newest_model):
    with pytest.raises(ImageError, match="8-bit"):
        fercli.label_faces(np.zeros((64, 64), np.float32))
    with pytest.raises(ImageError, match="height, width"):
        fercli.align_faces(np.zeros((4, 64, 64, 3), np.uint8))


def test_import_fercli_is_cheap():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fercli, sys; print(sorted(m for m in ('cv2', 'dlib', "
            "'tensorflow', 'keras') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_crossval_and_train_take_a_recipe_and_settings(fer_home):
    from fercli.data.prepared import save_dataset

    save_dataset(
        make_dataset(labels=("anger", "happiness"), subjects=3), fer_home / "datasets" / "shapes"
    )
    report = fercli.crossval("shapes", folds=2, recipe="best", epochs=1, copies=0)
    assert len(report.folds) == 2 and report.protocol["recipe"] == "best"
    assert report.protocol["differs_from_recipe"] == {"epochs": 1, "copies": 0}
    result = fercli.train("shapes", epochs=1, copies=0)
    assert fercli.load_model(result.path).classes == ["anger", "happiness"]
    # crossval writes what fer crossval writes: its report files and the fold ensemble.
    assert set(report.files) >= {"report", "confusion", "predictions", "model"}
    assert len(fercli.load_model(report.files["model"]).networks) == 2


def test_evaluate_model_scores_a_model_on_a_dataset_and_writes_its_report(fer_home):
    from fercli.data.prepared import save_dataset

    save_dataset(
        make_dataset(labels=("anger", "happiness"), subjects=3), fer_home / "datasets" / "shapes"
    )
    others = make_dataset(labels=("anger", "happiness", "fear"), subjects=2, seed=5)
    save_dataset(others, fer_home / "datasets" / "others")
    trained = fercli.train("shapes", epochs=1, copies=0)
    report = fercli.evaluate_model("others", trained.path)
    assert report.labels == ["anger", "happiness"]  # fear: a class the model does not know
    assert report.dataset["images"] == int(np.isin(others.labels, ["anger", "happiness"]).sum())
    assert json.loads(report.files["report"].read_text())["labels"] == ["anger", "happiness"]


def test_crossval_from_a_script_without_a_main_guard_runs_once_and_finishes(fer_home, tmp_path):
    """Fold workers are spawned processes: they must not re-run the caller's script (which,
    without `if __name__ == "__main__":`, would call crossval again in every worker)."""
    from fercli.data.prepared import save_dataset

    save_dataset(
        make_dataset(labels=("anger", "happiness"), subjects=3), fer_home / "datasets" / "shapes"
    )
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import fercli\n"
        "print('top level ran', flush=True)\n"
        "report = fercli.crossval('shapes', folds=2, epochs=1, copies=0, workers=2,\n"
        "                         save_model=False)\n"
        "print('folds', len(report.folds), 'interrupted', report.interrupted)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("top level ran") == 1, result.stdout + result.stderr
    assert "folds 2 interrupted False" in result.stdout
    assert "RuntimeError" not in result.stderr
    assert len(list((fer_home / "runs").iterdir())) == 1  # one run folder, not one per worker


def test_the_api_speaks_python_a_video_and_a_missing_file(newest_model, tmp_path):
    from clips import write_clip

    model = fercli.load_model()
    clip = write_clip(tmp_path / "clip.avi", 3)
    with pytest.raises(ImageError, match=r"a video, not an image; .*fercli\.label_media\("):
        model.predict(clip)
    missing = tmp_path / "gone.png"
    with pytest.raises(ImageError, match=f"^{re.escape(str(missing))}: no such file"):
        model.predict(missing)
    with pytest.raises(ImageError, match=f"^{re.escape(str(missing))}: no such file"):
        fercli.align_faces(str(missing))
