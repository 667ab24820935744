"""Runs killed with SIGKILL at any point leave nothing that a later run or command trips on.

`fer preprocess` is killed at several points (starting up, after the first crops, a third
and two thirds of the way, while saving the dataset); the next run completes, and its
crops equal what a fresh alignment gives. `fer train` killed while importing or training
leaves no model file where predict looks for one. And when only the main process is killed
(`kill -9 PID`, or the kernel's out-of-memory killer), its worker processes end too, rather
than waiting for ever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import preprocessed_crop
from fercli.core.config import PreprocessConfig
from fercli.data.cache import CropCache, content_key
from fercli.data.prepared import load_dataset
from fercli.infer.model import load_model
from fercli.media.images import decode_gray
from synthetic import make_dataset, save_synthetic

FER = Path(sys.executable).with_name("fer")
IMAGES = 80

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")


@pytest.fixture
def face_dataset(make_face_dataset) -> Path:
    """80 distinct 256x256 faces in two class folders."""
    return make_face_dataset(IMAGES)


def start(*args: str, output=subprocess.DEVNULL) -> subprocess.Popen:
    """`fer ARGS` in a session of its own, so that it and its workers can be found and killed."""
    return subprocess.Popen([str(FER), *args], stdout=output, stderr=output, start_new_session=True)


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        state, session_id = fields[0], int(fields[3])
        if session_id == session and state != "Z":
            found.append(int(entry.name))
    return found


def kill_session(session: int) -> None:
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(condition, timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def cache_entries(home: Path) -> list[Path]:
    crops = home / "crops"
    if not crops.exists():
        return []
    return [path for path in crops.glob("*/*/*.json") if not path.name.startswith(".")]


def assert_cache_readable(home: Path) -> None:
    """Every visible cache entry is whole: JSON with a crop of the right size or a reason."""
    cache = CropCache(PreprocessConfig(), home / "crops")
    for path in cache_entries(home):
        json.loads(path.read_bytes())  # raises for a half-written file
        entry = cache.get(path.stem)
        assert entry is not None, f"unreadable cache entry {path}"


def fresh_crop(path: Path) -> np.ndarray:
    return preprocessed_crop(decode_gray(path.read_bytes()))


@pytest.mark.slow
def test_preprocess_killed_at_any_point_then_run_again_completes(face_dataset, fer_home):
    kill_points = [
        ("starting up", lambda started: time.monotonic() - started > 0.3),
        ("after the first crop", lambda _: len(cache_entries(fer_home)) >= 1),
        ("a third of the way", lambda _: len(cache_entries(fer_home)) >= IMAGES // 3),
        ("two thirds of the way", lambda _: len(cache_entries(fer_home)) >= 2 * IMAGES // 3),
        ("saving the dataset", lambda _: len(cache_entries(fer_home)) >= IMAGES),
    ]
    killed = []
    for name, reached in kill_points:
        process = start("preprocess", str(face_dataset), "--json")
        started = time.monotonic()
        try:
            wait_until(lambda: reached(started) or process.poll() is not None, timeout=120)
            kill_session(process.pid)
            process.wait(timeout=60)
        finally:
            kill_session(process.pid)
        if process.returncode == -signal.SIGKILL:
            killed.append(name)
        assert_cache_readable(fer_home)
        for dataset in (fer_home / "datasets").glob("*/dataset.npz"):
            assert len(load_dataset(dataset).crops) == IMAGES  # an old one, or a whole new one
    # Each kill point but the last is far from the end of the run: they must all have hit.
    assert killed[:4] == [name for name, _ in kill_points[:4]], killed

    final = subprocess.run(
        [str(FER), "preprocess", str(face_dataset), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["found"] == IMAGES and report["aligned"] == IMAGES and report["skipped"] == []
    assert report["cache_hits"] >= 2 * IMAGES // 3  # the killed runs' work was kept
    assert_cache_readable(fer_home)
    assert len(cache_entries(fer_home)) == IMAGES
    dataset = load_dataset(report["dataset"])
    crops_by_path = dict(zip(dataset.paths.tolist(), dataset.crops, strict=True))
    cache = CropCache(PreprocessConfig(), fer_home / "crops")
    sample = sorted(face_dataset.glob("*/*.png"))[:: IMAGES // 8]
    for path in sample:
        expected = fresh_crop(path)
        np.testing.assert_array_equal(cache.get(content_key(path.read_bytes())).crop, expected)
        np.testing.assert_array_equal(crops_by_path[str(path)], expected)


@pytest.mark.slow
def test_workers_end_when_preprocess_alone_is_killed(face_dataset, fer_home):
    process = start("preprocess", str(face_dataset), "--workers", "2")
    try:
        assert wait_until(lambda: len(cache_entries(fer_home)) >= 1, timeout=120), (
            "no crop was made"
        )
        assert len(session_processes(process.pid)) >= 3  # fer and its two workers
        os.kill(process.pid, signal.SIGKILL)  # the main process only, as `kill -9 PID` does
        process.wait(timeout=60)

        ended = wait_until(lambda: not session_processes(process.pid), timeout=30, step=0.1)
        assert ended, "the workers of a killed fer preprocess are still running"
    finally:
        kill_session(process.pid)
    assert_cache_readable(fer_home)


def visible_models(home: Path) -> list[Path]:
    models = home / "models"
    return sorted(models.glob("[!.]*.npz")) if models.exists() else []


@pytest.mark.slow
def test_train_killed_leaves_no_model_for_predict(fer_home, astronaut_path):
    save_synthetic(make_dataset(labels=("anger", "happiness", "surprise"), subjects=4))
    # Killed while importing TensorFlow, and while training (an endless run).
    for seconds in (1.0, 8.0):
        process = start("train", "--epochs", "100000")
        try:
            assert not wait_until(lambda: process.poll() is not None, timeout=seconds, step=0.05)
            kill_session(process.pid)
            process.wait(timeout=60)
        finally:
            kill_session(process.pid)
        assert visible_models(fer_home) == []
        refused = subprocess.run(
            [str(FER), "predict", str(astronaut_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode == 1
        assert (
            refused.stderr.strip()
            == "error: no trained model: run `fer train` first, or pass --model"
        )

    # A run that finishes: whenever a model file is visible, it is whole.
    seen: dict[Path, str] = {}
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            for path in visible_models(fer_home):
                if path not in seen:
                    try:
                        load_model(path)
                        seen[path] = "whole"
                    except Exception as error:
                        seen[path] = f"{type(error).__name__}: {error}"
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        completed = subprocess.run(
            [str(FER), "train", "--epochs", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        finished.set()
        watcher.join()
    assert completed.returncode == 0, completed.stderr
    model = Path(json.loads(completed.stdout)["model"])
    assert visible_models(fer_home) == [model]
    assert seen == {model: "whole"}
    predicted = subprocess.run(
        [str(FER), "predict", str(astronaut_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)[0]["faces"]) == 1


@pytest.mark.slow
def test_fold_workers_end_when_crossval_alone_is_killed(fer_home):
    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=4))
    process = start("crossval", "--folds", "2", "--epochs", "100000", "--workers", "2")
    try:
        assert wait_until(lambda: len(session_processes(process.pid)) >= 3, timeout=120, step=0.05)
        time.sleep(6.0)  # the workers import TensorFlow and start training their folds
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

        ended = wait_until(lambda: not session_processes(process.pid), timeout=30, step=0.1)
        assert ended, "the fold workers of a killed fer crossval are still running"
    finally:
        kill_session(process.pid)
