"""fer preprocess, through the library and through the CLI: bad files reported and the rest
aligned, the crop cache, the prepared dataset and its contact sheet, and the CLI's manners."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import run_unprivileged, write_image
from fercli.cli import app
from fercli.core.config import PreprocessConfig
from fercli.core.errors import FerError, StoreError
from fercli.data.cache import CropCache
from fercli.data.prepared import load_dataset, resolve_dataset
from fercli.data.preprocess import align_file, preprocess_dataset

FER = Path(sys.executable).with_name("fer")
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.png")


@pytest.fixture
def mixed_dataset(make_folders, faces, no_face_image, astronaut_gray) -> Path:
    """Class folders: 7 good faces (odd names, a grey-palette TIFF, a photo with two faces)
    and 4 bad files: truncated, zero bytes, text, no face."""
    root = make_folders(
        {
            "happy": ["S010_004_00000017.png", "my face 2.png"],
            "sad": ["KA.SA1.33.tiff", "顔.png"],
        }
    )
    sad = root / "sad"
    Image.fromarray(faces(4), "L").convert("P").save(sad / "palette.tiff")  # as JAFFE stores some
    write_image(sad / NON_UTF8_NAME, faces(5))
    pair = np.hstack([faces(6), faces(7)[:, ::-1]])  # two faces: the largest is used
    write_image(root / "happy" / "pair.png", pair)
    good = (root / "happy" / "S010_004_00000017.png").read_bytes()
    (sad / "corrupt.png").write_bytes(good[: len(good) // 2])
    (sad / "zero.png").write_bytes(b"")
    (sad / "notes.txt").write_text("taken on a rainy day\n")
    write_image(sad / "back.png", no_face_image)
    return root


GOOD = 7
BAD_REASONS = {
    "corrupt.png": "truncated PNG",
    "zero.png": "empty file",
    "notes.txt": "not an image",
    "back.png": "no face found",
}


def skipped_by_name(skipped) -> dict[str, str]:
    """{file name: reason} from a report's skipped list (records, or JSON dicts)."""
    pairs = [
        (item["path"], item["reason"]) if isinstance(item, dict) else (item.path, item.reason)
        for item in skipped
    ]
    return {Path(path).name: reason for path, reason in pairs}


def assert_reasons(skipped) -> None:
    reasons = skipped_by_name(skipped)
    assert set(reasons) == set(BAD_REASONS)
    for name, fragment in BAD_REASONS.items():
        assert fragment in reasons[name], reasons[name]


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result) -> str:
    """The CLI's error: exactly one non-blank line on stderr, no traceback anywhere."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


# Bad files are reported, the rest is aligned -------------------------------------------------


def test_bad_files_are_skipped_with_reasons_and_the_rest_aligned(mixed_dataset):
    calls = []

    report = preprocess_dataset(
        mixed_dataset, workers=1, progress=lambda event: calls.append((event.done, event.total))
    )

    assert report.found == GOOD + len(BAD_REASONS)
    assert report.aligned == GOOD
    assert_reasons(report.skipped)
    assert report.classes == {"happiness": 3, "sadness": 4}
    assert report.subjects == {"KA": 1, "S010": 1}
    assert [Path(path).name for path in report.several_faces] == ["pair.png"]
    assert any("several faces" in note for note in report.notes)
    names = {Path(path).name for path in load_dataset(report.dataset).paths}
    assert {"my face 2.png", "顔.png", NON_UTF8_NAME, "palette.tiff"} <= names
    total = GOOD + len(BAD_REASONS)
    assert calls == [(done, total) for done in range(total + 1)]


def test_a_strip_one_pixel_high_is_an_image_without_a_face(make_folders):
    # Shrunk to the 1280 pixels searched, a 20000x1 strip was 0 pixels high, and OpenCV's
    # assertion was the reason given ("alignment failed: error: OpenCV(...) !dsize.empty()").
    root = make_folders({"happy": ["face.png"]})
    write_image(root / "happy" / "strip.png", np.full((1, 20000), 128, np.uint8))
    report = preprocess_dataset(root, workers=1)
    assert report.aligned == 1
    reason = skipped_by_name(report.skipped)["strip.png"]
    assert reason.startswith("no face found"), reason


def test_cli_prints_the_table_and_the_skipped_files(mixed_dataset):
    result = run_cli("preprocess", str(mixed_dataset), "--workers", "1")

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for name, fragment in BAD_REASONS.items():
        assert any(name in line and fragment in line for line in result.stdout.splitlines()), name
    assert f"{len(BAD_REASONS)} of {GOOD + len(BAD_REASONS)} skipped" in result.stdout
    assert "happiness" in result.stdout and "sadness" in result.stdout
    assert "contact sheet:" in result.stdout


def test_cli_prints_names_that_look_like_markup_as_they_are(make_folders):
    root = make_folders({"happy": ["a.png", "b.png"]})
    (root / "happy" / "[").mkdir()
    (root / "happy" / "[" / "b]x.png").write_text("not a picture")  # the path holds "[/b]"
    (root / "happy" / "[bold]y.png").write_text("not a picture")

    result = run_cli("preprocess", str(root), "--workers", "1")

    assert result.exit_code == 0, result.output
    assert "happy/[/b]x.png: not an image" in result.stdout
    assert "happy/[bold]y.png: not an image" in result.stdout


def test_cli_json_output(mixed_dataset):
    result = run_cli("preprocess", str(mixed_dataset), "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["found"] == GOOD + len(BAD_REASONS)
    assert report["aligned"] == GOOD
    assert all(set(item) == {"path", "reason"} for item in report["skipped"])
    assert_reasons(report["skipped"])
    assert report["classes"] == {"happiness": 3, "sadness": 4}
    assert Path(report["dataset"]).is_file()


def test_all_bad_folder_fails_with_one_line(tmp_path):
    root = tmp_path / "bad"
    (root / "happy").mkdir(parents=True)
    (root / "happy" / "a.png").write_bytes(b"")
    (root / "happy" / "b.jpg").write_text("no picture here")

    result = run_cli("preprocess", str(root))

    assert result.exit_code != 0
    assert "no image could be aligned" in one_line_error(result)
    assert "2 of 2 skipped" in result.stdout
    # The library says so too, and saves no dataset.
    report = preprocess_dataset(root, workers=1)
    assert report.aligned == 0 and report.dataset is None


def test_cli_errors_for_folders_that_are_not_datasets(tmp_path):
    (tmp_path / "empty").mkdir()
    for path, fragment in [(tmp_path / "nowhere", "no such folder"), (tmp_path / "empty", "empty")]:
        for extra in ([], ["--json"]):
            result = run_cli("preprocess", str(path), *extra)
            assert result.exit_code == 1
            line = one_line_error(result)
            assert fragment in line
            # With --json, stdout holds one JSON document saying the same; else nothing.
            assert result.stdout == (
                ""
                if not extra
                else json.dumps({"error": line.removeprefix("error: ")}, indent=2) + "\n"
            )


def test_real_command_has_no_traceback_for_user_error(tmp_path):
    root = tmp_path / "bad"
    (root / "happy").mkdir(parents=True)
    (root / "happy" / "a.png").write_text("not an image")

    completed = subprocess.run(
        [str(FER), "preprocess", str(root)], check=False, capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr + completed.stdout
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no image could be aligned" in lines[0]


# The cache -----------------------------------------------------------------------------------


def test_second_run_comes_from_the_cache_with_identical_crops(mixed_dataset):
    first = preprocess_dataset(mixed_dataset, workers=1)
    crops = load_dataset(first.dataset).crops

    second = preprocess_dataset(mixed_dataset, workers=1)

    assert first.cache_hits == 0
    # Every file that could be read is answered from the cache: crops, "no face" and the
    # decoding failures too. Only the zero-byte file never gets a content key.
    assert second.cache_hits == second.aligned + len(BAD_REASONS) - 1
    assert second.aligned == first.aligned
    assert skipped_by_name(second.skipped) == skipped_by_name(first.skipped)
    np.testing.assert_array_equal(load_dataset(second.dataset).crops, crops)


def source_digests_of(paths) -> list[bytes]:
    """The source digest of each file: the first 8 bytes of the SHA-256 of its bytes."""
    return [hashlib.sha256(Path(path).read_bytes()).digest()[:8] for path in paths]


def test_the_dataset_keeps_each_crops_file_digest_also_from_the_cache(mixed_dataset, tmp_path):
    first = preprocess_dataset(mixed_dataset, workers=1)
    dataset = load_dataset(first.dataset)
    assert dataset.sources.dtype == np.uint8 and dataset.sources.shape == (GOOD, 8)
    expected = source_digests_of(dataset.paths)
    assert [row.tobytes() for row in dataset.sources] == expected
    assert len(set(expected)) == GOOD

    second = preprocess_dataset(mixed_dataset, workers=1)
    assert second.cache_hits == second.aligned + len(BAD_REASONS) - 1  # every crop cached
    again = load_dataset(second.dataset)
    assert again.paths.tolist() == dataset.paths.tolist()
    assert [row.tobytes() for row in again.sources] == expected
    # Not kept in the cache's entries: the key they are filed under is the file's digest.
    entries = list(CropCache(PreprocessConfig()).folder.glob("*/*.json"))
    assert entries and not any("source" in json.loads(path.read_bytes()) for path in entries)

    # A dataset preprocessed before fercli kept them loads, without them.
    path = Path(first.dataset)
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    older = tmp_path / "older" / "dataset.npz"
    older.parent.mkdir()
    np.savez(older, **{name: array for name, array in arrays.items() if name != "sources"})
    assert load_dataset(older).sources is None
    # Damaged ones are refused with the rest of a damaged dataset.
    for damaged in (arrays["sources"][:-1], arrays["sources"][:, :4], arrays["sources"] * 1.0):
        np.savez(older, **{**arrays, "sources": damaged})
        with pytest.raises(FerError, match="damaged dataset file \\(sources are"):
            load_dataset(older)


def test_changed_setting_recomputes(make_folders):
    root = make_folders({"happy": ["a.png", "b.png"], "sad": ["c.png"]})
    default = preprocess_dataset(root, workers=1)
    default_crops = load_dataset(default.dataset).crops

    changed = preprocess_dataset(root, config=PreprocessConfig(top_margin=0.4), workers=1)

    assert changed.cache_hits == 0 and changed.aligned == 3
    changed_crops = load_dataset(changed.dataset).crops
    assert not np.array_equal(changed_crops, default_crops)
    # The first settings' crops are still there.
    assert preprocess_dataset(root, workers=1).cache_hits == 3


def test_cli_framing_wide_makes_other_crops_and_says_so_in_the_dataset(make_folders):
    root = make_folders({"happy": ["a.png", "b.png"], "sad": ["c.png"]})
    paper = load_dataset(
        Path(json.loads(run_cli("preprocess", str(root), "--json").stdout)["dataset"])
    )

    result = run_cli("preprocess", str(root), "--framing", "wide", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["aligned"] == 3 and report["cache_hits"] == 0
    wide = load_dataset(Path(report["dataset"]))
    assert wide.meta["preprocess"]["framing"] == "wide"
    assert paper.meta["preprocess"]["framing"] == "paper"
    assert wide.crops.shape == paper.crops.shape
    assert not np.array_equal(wide.crops, paper.crops)
    refused = run_cli("preprocess", str(root), "--framing", "square")
    assert refused.exit_code != 0 and "Traceback" not in refused.output


def cache_entries(home: Path) -> list[Path]:
    return sorted(
        path for path in (home / "crops").glob("*/*/*.json") if not path.name.startswith(".")
    )


def test_corrupt_cache_entries_are_misses_and_rewritten(make_folders, fer_home):
    root = make_folders({"happy": ["a.png", "b.png", "c.png"], "sad": ["d.png", "e.png"]})
    first = preprocess_dataset(root, workers=1)
    entries = cache_entries(fer_home)
    assert len(entries) == 5
    entries[0].write_bytes(entries[0].read_bytes()[:40])  # cut short
    entries[1].write_text(
        '{"crop": "AAAA", "shape": [32, 32], "faces": 1, "box": null, "angle": 0}'
    )
    entries[2].write_bytes(b"")
    # Parses, but holds a 2x2 crop: once crashed the run when the crops were stacked.
    entries[3].write_text(
        '{"crop": "AAAAAA==", "shape": [2, 2], "faces": 1, "box": null, "angle": 0}'
    )

    second = preprocess_dataset(root, workers=1)

    assert second.cache_hits == 1 and second.aligned == 5
    np.testing.assert_array_equal(
        load_dataset(second.dataset).crops, load_dataset(first.dataset).crops
    )
    for entry in entries[:4]:
        assert len(json.loads(entry.read_bytes())["crop"]) > 1000
    assert preprocess_dataset(root, workers=1).cache_hits == 5


def test_interrupted_run_resumes(make_folders, fer_home):
    root = make_folders({"happy": ["a.png", "b.png", "c.png", "d.png"]})
    preprocess_dataset(root, workers=1)
    entries = cache_entries(fer_home)
    # What a kill leaves: some entries never written, and a temporary file never renamed.
    for entry in entries[:2]:
        entry.unlink()
    (entries[2].parent / ".tmp-abc123.json").write_bytes(b'{"crop": "AA')

    report = preprocess_dataset(root, workers=1)

    assert report.aligned == 4 and report.cache_hits == 2
    assert len(cache_entries(fer_home)) == 4


def test_workers_give_the_same_crops_as_one_process(
    make_folders, tmp_path, monkeypatch, no_face_image
):
    root = make_folders(
        {
            "happy": [f"{index}.png" for index in range(4)],
            "sad": [f"{index}.png" for index in range(4)],
        }
    )
    # Files without a face, or that cannot be decoded, take other paths through both.
    write_image(root / "sad" / "suit.png", no_face_image)
    (root / "sad" / "broken.png").write_bytes((root / "sad" / "0.png").read_bytes()[:300])
    results, skipped = {}, {}
    for workers in (1, 2):
        monkeypatch.setenv("FER_HOME", str(tmp_path / f"home-{workers}"))  # both runs cold
        report = preprocess_dataset(root, workers=workers)
        assert report.cache_hits == 0 and report.workers == workers
        results[workers] = load_dataset(report.dataset)
        skipped[workers] = sorted((Path(item.path).name, item.reason) for item in report.skipped)

    assert [name for name, _ in skipped[1]] == ["broken.png", "suit.png"]
    assert skipped[1] == skipped[2]

    np.testing.assert_array_equal(results[1].crops, results[2].crops)
    np.testing.assert_array_equal(results[1].labels, results[2].labels)
    np.testing.assert_array_equal(results[1].paths, results[2].paths)


def test_workers_start_after_this_process_used_opencv_threads(make_folders, tmp_path):
    # Forked workers used to hang for ever (in cv2.setNumThreads) about every other time
    # when the calling process had already run OpenCV's threaded code, as a notebook or a
    # test suite does. A subprocess, so that a hang is a timeout and not a stuck suite.
    root = make_folders({"happy": [f"{index}.png" for index in range(6)]})
    code = (
        "import sys, cv2, numpy as np\n"
        "from fercli.data.preprocess import preprocess_dataset\n"
        "image = np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8)\n"
        "for attempt in range(3):\n"
        "    cv2.resize(image, (999, 999), interpolation=cv2.INTER_AREA)\n"
        "    cv2.warpAffine(image, np.eye(2, 3), (2000, 2000))\n"
        "    report = preprocess_dataset(sys.argv[1], workers=2)\n"
        "    print(report.aligned, report.workers, cv2.getNumThreads())\n"
    )
    for attempt in range(2):
        completed = subprocess.run(
            [sys.executable, "-c", code, str(root)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "FER_HOME": str(tmp_path / f"home-{attempt}")},
        )
        assert completed.returncode == 0, completed.stderr
        # Every run aligned all six in two workers, and OpenCV's own threads came back.
        assert completed.stdout.split("\n")[:3] == [f"6 2 {cv2.getNumThreads()}"] * 3


# The prepared dataset ------------------------------------------------------------------------


def test_prepared_dataset_loads_and_latest_is_found(make_folders, make_jaffe):
    classes = make_folders(
        {
            "happy": ["S010_004_00000017.png", "S010_004_00000018.png"],
            "sad": ["S011_001_00000009.png"],
        }
    )
    jaffe = make_jaffe(["KA.AN1.39.tiff", "KL.HA2.45.tiff"])

    first = preprocess_dataset(classes, workers=1)
    dataset = load_dataset(first.dataset)
    assert dataset.crops.shape == (3, 32, 32) and dataset.crops.dtype == np.uint8
    assert dataset.labels.tolist() == ["happiness", "happiness", "sadness"]
    assert dataset.subjects.tolist() == ["S010", "S010", "S011"] and dataset.has_subjects
    assert [Path(path).name for path in dataset.paths] == [
        "S010_004_00000017.png",
        "S010_004_00000018.png",
        "S011_001_00000009.png",
    ]
    assert (
        dataset.meta["layout"] == "folders"
        and dataset.meta["preprocess"] == PreprocessConfig().to_dict()
    )
    assert resolve_dataset(None).location == dataset.location

    second = preprocess_dataset(jaffe, workers=1)
    assert resolve_dataset(None).location == Path(second.dataset)
    assert resolve_dataset(None).labels.tolist() == ["anger", "happiness"]
    # The source folder names its own prepared dataset, whichever is the latest.
    assert resolve_dataset(classes).location == Path(first.dataset)

    preprocess_dataset(classes, workers=1)  # from the cache, but now the most recent
    assert resolve_dataset(None).location == Path(first.dataset)


def test_a_dataset_named_with_a_plus_is_found_by_that_name(make_folders, faces, tmp_path):
    # issue 31.8: CK+48 was stored as CK-48-<id>, so `fer evaluate CK+48` found nothing.
    from fercli.data.combined import load_combined
    from test_model_safety import write_model

    ck = make_folders(
        {"happy": ["S010_004_00000017.png"], "sad": ["S011_001_00000009.png"]}, "CK+48"
    )
    stored = Path(preprocess_dataset(ck, workers=1).dataset).parent
    assert stored.name.startswith("CK+48-")
    assert resolve_dataset("CK+48").location.parent == stored
    for index, name in ((4, "KA.HA1.39.tiff"), (5, "KL.SA2.45.tiff")):  # other faces
        write_image(tmp_path / "jaffe" / name, faces(index), ".tiff")
    preprocess_dataset(tmp_path / "jaffe", workers=1)
    # Combined, each keeps its name, and so does the combination.
    combined = load_combined(["CK+48", "jaffe"], (), False)
    assert combined.name == "CK+48+jaffe"
    model = write_model(tmp_path / "m.npz", ["happiness", "sadness"])
    result = run_cli("evaluate", "CK+48", "--model", str(model), "--json")
    assert result.exit_code == 0, result.output
    report = Path(json.loads(result.stdout)["files"]["report"])
    assert report.parent.name.startswith("evaluate-m-CK+48-")
    # A dataset an earlier fercli stored as CK-48-<id> is found by CK+48 too.
    stored.rename(stored.with_name(stored.name.replace("+", "-")))
    assert resolve_dataset("CK+48").location.parent.name.startswith("CK-48-")


def test_contact_sheet_shows_the_crops(make_folders):
    root = make_folders({"happy": ["a.png", "b.png"], "sad": ["c.png"]})

    report = preprocess_dataset(root, workers=1)

    sheet = cv2.imread(report.contact_sheet, cv2.IMREAD_UNCHANGED)
    assert sheet is not None and sheet.ndim == 2
    assert sheet.shape[0] >= 2 * 64 and sheet.shape[1] >= 3 * 64
    # Every aligned crop is on the sheet, shown at twice its size, pixel for pixel.
    for crop in load_dataset(report.dataset).crops:
        tile = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)
        assert _appears_in(tile, sheet)


def _appears_in(tile: np.ndarray, picture: np.ndarray) -> bool:
    """Whether tile sits in picture pixel for pixel: exact integer comparison, which no float
    kernel (OpenCV's matchTemplate differs in its last bits between versions and CPUs) can sway."""
    height, width = tile.shape
    candidates = np.argwhere(
        picture[: picture.shape[0] - height + 1, : picture.shape[1] - width + 1] == tile[0, 0]
    )
    return any(np.array_equal(picture[y : y + height, x : x + width], tile) for y, x in candidates)


def test_ck_tree_through_the_cli(make_ck):
    root = make_ck(
        {("S005", "001"): (4, "   3.0000000e+00"), ("S010", "001"): (3, "5.0000000e+00")}
    )

    result = run_cli(
        "preprocess", str(root), "--json", "--ck-frames", "2", "--ck-neutral", "--workers", "1"
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"] == "ck+"
    assert report["classes"] == {"disgust": 2, "happiness": 2, "neutral": 2}
    assert report["subjects"] == {"S005": 3, "S010": 3}


# Where files go ------------------------------------------------------------------------------


def test_read_only_home_is_a_store_error(make_folders, fer_home):
    root = make_folders({"happy": ["a.png"]})
    crops = fer_home / "crops"
    crops.mkdir(parents=True)

    def check() -> None:
        with pytest.raises(StoreError, match="cannot write"):
            preprocess_dataset(root, workers=1)
        result = run_cli("preprocess", str(root))
        assert result.exit_code == 1
        assert "FER_HOME" in one_line_error(result)

    crops.chmod(0o555)
    try:
        run_unprivileged(check)
    finally:
        crops.chmod(0o755)
    assert list(crops.iterdir()) == []


def test_home_that_cannot_be_created_is_a_store_error(make_folders, tmp_path, monkeypatch):
    root = make_folders({"happy": ["a.png"]})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FER_HOME", str(blocker / "fer"))

    with pytest.raises(StoreError, match="cannot write"):
        preprocess_dataset(root, workers=1)
    result = run_cli("preprocess", str(root))
    assert result.exit_code == 1
    assert "FER_HOME" in one_line_error(result)


# The command itself --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_missing_landmark_model_ends_the_run_and_is_not_blamed_on_the_images(
    make_folders, fer_home, monkeypatch, workers
):
    from fercli.faces import align

    root = make_folders({"happy": [f"{index}.png" for index in range(4)]})

    def missing() -> None:
        raise FerError(
            "dlib's 68-point landmark model (x.dat) is missing: pip install face-recognition-models"
        )

    monkeypatch.setattr(align, "predictor_path", missing)
    align.landmark_predictor.cache_clear()
    try:
        with pytest.raises(FerError, match="pip install face-recognition-models"):
            preprocess_dataset(root, workers=workers)
        result = run_cli("preprocess", str(root), "--workers", str(workers))
        cache = CropCache(PreprocessConfig())
        cache.prepare()
        with pytest.raises(FerError, match="pip install face-recognition-models"):
            align_file(root / "happy" / "0.png", PreprocessConfig(), cache)
    finally:
        align.landmark_predictor.cache_clear()

    assert result.exit_code == 1
    assert "landmark model" in one_line_error(result)
    assert cache_entries(fer_home) == []  # nothing recorded against the images


@pytest.mark.parametrize("workers", [1, 2])
def test_an_image_that_breaks_its_batchs_landmarks_fails_alone(
    make_folders, faces, fer_home, monkeypatch, workers
):
    # The landmarks of several images are found together; an unexpected failure caused by
    # one image must cost only that image.
    from fercli.faces import pipeline as pipeline_module

    root = make_folders(
        {
            "happy": [f"{index}.png" for index in range(20)],
            "sad": [f"{index}.png" for index in range(20, 40)],
        }
    )
    write_image(root / "sad" / "odd.png", faces(40, size=300))
    real = pipeline_module.align_detected
    batch_sizes = []

    def breaks_on_the_odd_one(images, config, **options):
        batch_sizes.append(len(images))
        if any(gray.shape == (300, 300) for gray, _ in images):
            raise RuntimeError("landmarks broke")
        return real(images, config, **options)

    monkeypatch.setattr(pipeline_module, "align_detected", breaks_on_the_odd_one)

    report = preprocess_dataset(root, workers=workers)

    assert report.aligned == 40
    assert [(Path(item.path).name, item.reason) for item in report.skipped] == [
        ("odd.png", "alignment failed: RuntimeError: landmarks broke")
    ]
    if workers == 1:  # the workers' calls are not seen here
        assert max(batch_sizes) > 1
    assert len(cache_entries(fer_home)) == 40  # the failure is not stored: tried again next run


def test_crops_past_the_photos_edge_are_counted_and_marked(make_folders, astronaut_gray):
    root = make_folders({"happy": ["a.png"], "sad": ["b.png"]})
    cv2.imwrite(
        str(root / "happy" / "tight.png"), astronaut_gray[40:170, 160:290]
    )  # chin at the edge

    report = preprocess_dataset(root, workers=1)

    assert report.edges["happiness"]["crops"] == 2 and report.edges["happiness"]["padded"] == 1
    assert 0 < report.edges["happiness"]["mean_padding"] < 0.25
    assert report.edges["sadness"] == {"crops": 1, "padded": 0, "mean_padding": 0.0, "saturated": 0}
    assert report.to_json()["edges"] == report.edges
    assert load_dataset(report.dataset).meta["edges"] == report.edges
