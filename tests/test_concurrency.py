"""Two commands at once over the same data: both finish, and what they leave is consistent.

Two `fer preprocess` over one folder write the same cache entries and the same prepared
dataset at the same time; `fer crossval` reads a prepared dataset while `fer preprocess`
rewrites it, again and again. Every file is written to a temporary name and renamed, so a
reader sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import face_variant, preprocessed_crop, write_image
from fercli.core.config import PreprocessConfig
from fercli.data.cache import CropCache, content_key
from fercli.data.prepared import dataset_folder, load_dataset
from fercli.media.images import decode_gray

FER = Path(sys.executable).with_name("fer")
IMAGES = 60


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(FER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> dict:
    """Wait for a `fer ... --json` process; its JSON output, after checking it succeeded."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return json.loads(stdout)


def assert_consistent(home: Path, dataset_dir: Path, images: int) -> None:
    """The cache holds one whole entry per image, the prepared dataset loads and holds every
    image, and a sample of crops equals a fresh alignment; no temporary file is left."""
    cache = CropCache(PreprocessConfig(), home / "crops")
    entries = [path for path in cache.folder.glob("*/*.json")]
    assert len(entries) == images
    assert all(cache.get(path.stem) is not None for path in entries)
    assert list(home.rglob(".tmp-*")) == []
    dataset = load_dataset(dataset_folder(dataset_dir))
    assert len(dataset.crops) == images
    by_path = dict(zip(dataset.paths.tolist(), dataset.crops, strict=True))
    for path in sorted(dataset_dir.glob("*/*.png"))[:: max(1, images // 6)]:
        data = path.read_bytes()
        fresh = preprocessed_crop(decode_gray(data))
        np.testing.assert_array_equal(cache.get(content_key(data)).crop, fresh)
        np.testing.assert_array_equal(by_path[str(path)], fresh)
    assert cv2.imread(str(dataset_folder(dataset_dir) / "contact_sheet.png")) is not None


@pytest.mark.slow
def test_two_preprocess_runs_over_one_folder_at_once(make_face_dataset, fer_home):
    dataset_dir = make_face_dataset(IMAGES)

    first = start("preprocess", str(dataset_dir), "--json")
    second = start("preprocess", str(dataset_dir), "--json")
    reports = [finish(first), finish(second)]

    for report in reports:
        assert report["found"] == IMAGES and report["aligned"] == IMAGES and report["skipped"] == []
    assert_consistent(fer_home, dataset_dir, IMAGES)


@pytest.mark.slow
def test_crossval_reads_while_preprocess_rewrites(make_face_dataset, astronaut_gray, fer_home):
    dataset_dir = make_face_dataset(IMAGES)
    finish(start("preprocess", str(dataset_dir), "--json"))
    prepared = dataset_folder(dataset_dir) / "dataset.npz"

    crossval = start("crossval", str(dataset_dir), "--folds", "2", "--epochs", "1", "--json")
    added = 0
    loads = 0
    # Rewrite the prepared dataset, one image larger each time, for as long as crossval runs
    # (and at least twice); between rewrites, read it here too.
    while crossval.poll() is None or added < 2:
        face = face_variant(astronaut_gray, added % 40, 256)
        face[0, 0] = 200 + added  # new bytes: a new image
        write_image(dataset_dir / "happy" / f"new{added:02d}.png", face)
        added += 1
        rewrite = start("preprocess", str(dataset_dir), "--json")
        while rewrite.poll() is None:
            assert len(load_dataset(prepared).crops) in range(IMAGES, IMAGES + added + 1)
            loads += 1
            time.sleep(0.01)
        finish(rewrite)
        if added >= 20:
            break
    report = finish(crossval)

    assert loads > 0
    assert len(report["folds"]) == 2
    assert report["dataset"]["images"] in range(IMAGES, IMAGES + added + 1)
    assert_consistent(fer_home, dataset_dir, IMAGES + added)
