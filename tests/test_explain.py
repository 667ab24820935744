"""Where the network looks (fercli.infer.explain, fer predict --explain): occlusion maps that
find what a network trained here really uses, and the pictures predict writes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import TrainConfig
from fercli.core.errors import FerError
from fercli.infer.explain import explain_crops, grey_crop, occlusion_maps, patch_positions
from fercli.infer.model import load_model
from fercli.learn.training import train_model
from synthetic import REGION, make_region_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def region_model(tmp_path_factory):
    """A model trained on make_region_dataset (the class is in REGION only), no augmentation
    (a mirrored crop would move the region)."""
    output = tmp_path_factory.mktemp("model") / "region.npz"
    train_model(make_region_dataset(), TrainConfig(epochs=6, augment=False), output)
    return load_model(output)


def test_patches_cover_every_pixel_up_to_the_far_edge():
    assert patch_positions(32, 8, 2) == list(range(0, 25, 2))
    assert patch_positions(32, 8, 5) == [0, 5, 10, 15, 20, 24]
    with pytest.raises(FerError, match="patch"):
        patch_positions(32, 40, 2)


def test_the_map_lies_where_covering_changes_the_answer():
    """A 'network' whose second class is the brightness of one 4x4 spot: the map of that class
    is at its largest on the spot and exactly 0 wherever no patch covering the pixel touches
    it."""
    spot = (slice(20, 24), slice(4, 8))

    def predict(crops: np.ndarray) -> np.ndarray:
        bright = crops[:, spot[0], spot[1]].mean(axis=(1, 2)) / 255
        return np.stack([1 - bright, bright], axis=1)

    crops = np.full((3, 32, 32), 255, np.uint8)
    probabilities, maps = occlusion_maps(predict, crops, np.zeros((32, 32), np.uint8), 8, 2)
    assert probabilities.shape == (3, 2) and maps.shape == (3, 2, 32, 32)
    heat = maps[0, 1]
    assert heat[spot].max() == heat.max() > 0.5
    # A patch covering pixel (row, column) starts at most 7 before it: none reaches the spot
    # from 8 or more pixels away.
    assert np.all(heat[:12] == 0) and np.all(heat[:, 16:] == 0)
    # The other class gains what this one loses.
    assert np.allclose(maps[0, 0], -heat)


def test_without_a_training_grey_each_face_is_covered_with_its_own_mean():
    """Networks that standardise each crop by itself have no training grey (grey_crop gives
    None): the patch is then the face's own mean grey, so a flat face has a flat map of 0."""
    from fercli.infer.explain import grey_crop

    seen = []

    def predict(crops: np.ndarray) -> np.ndarray:
        seen.append(crops.copy())
        bright = crops.mean(axis=(1, 2)) / 255
        return np.stack([1 - bright, bright], axis=1)

    flat = np.full((1, 32, 32), 90, np.uint8)
    spotted = flat.copy()
    spotted[0, 10:14, 10:14] = 250
    assert grey_crop([np.array(0.0)], 32, per_image=True) is None
    _, maps = occlusion_maps(predict, np.concatenate([flat, spotted]), None, 8, 2)
    assert np.all(maps[0] == 0)  # covering a flat face with its own grey changes nothing
    assert maps[1, 1][10:14, 10:14].min() > 0  # covering the bright spot lowers "bright"
    patch_values = set(np.unique(seen[0][2][:8, :8]).tolist())  # flat's first occluded copy
    assert patch_values == {90}


def test_deleting_the_top_of_the_map_costs_more_than_deleting_at_random(region_model):
    """The honest map: on new faces of the region data, setting the map's top 10% of pixels to
    the grey lowers the predicted class's probability more than setting a random 10% does, and
    the top 10% lie mostly in the region that carries the class."""
    test = make_region_dataset(per_class=8, seed=1)
    explained = explain_crops(region_model, test.crops, [(0, 0, 32, 32)] * len(test.crops))
    grey = grey_crop([member.mean for member in region_model.networks], 32).ravel()
    rng = np.random.default_rng(0)
    inside_region = np.zeros((32, 32), bool)
    inside_region[REGION] = True
    count = 1024 // 10
    top_drops, random_drops, inside = [], [], []
    for face in explained:
        column = region_model.classes.index(face.label)
        top = np.argsort(face.map.ravel())[::-1][:count]
        chosen = rng.choice(1024, count, replace=False)
        deleted = []
        for pixels in (top, chosen):
            crop = face.crop.ravel().copy()
            crop[pixels] = grey[pixels]
            deleted.append(crop.reshape(32, 32))
        after = region_model.predict_proba(np.stack(deleted))[:, column]
        top_drops.append(face.probability - after[0])
        random_drops.append(face.probability - after[1])
        inside.append(inside_region.ravel()[top].mean())
    assert np.mean(top_drops) > np.mean(random_drops) + 0.1
    assert np.mean(inside) > 0.5  # a random 10% would put 10% there


def test_model_explain_agrees_with_predict(region_model, astronaut_path):
    [predicted] = region_model.predict(astronaut_path)
    [face] = region_model.explain(astronaut_path, every_class=True)
    assert face.box == predicted.box and face.label == predicted.label
    assert face.probability == pytest.approx(predicted.probabilities[predicted.label], abs=1e-5)
    assert face.map.shape == (32, 32) and face.map.dtype == np.float64
    assert np.all(np.isfinite(face.map)) and face.crop.shape == (32, 32)
    assert list(face.maps) == region_model.classes
    assert np.array_equal(face.maps[face.label], face.map)
    assert region_model.explain(np.full((200, 200), 128, np.uint8)) == []


def _picture(path: Path) -> np.ndarray:
    picture = cv2.imread(str(path))
    assert picture is not None, f"{path} is not a readable picture"
    return picture


def test_predict_explain_writes_a_picture_per_face_and_never_replaces_one(
    region_model, astronaut_path, tmp_path
):
    folder = tmp_path / "why"
    arguments = ["predict", str(astronaut_path), "--model", str(region_model.path)]
    first = runner.invoke(app, [*arguments, "--explain", str(folder)])
    assert first.exit_code == 0, first.output
    picture = _picture(folder / "astronaut.face1.png")
    # The enlarged crop and its heat map side by side, 256 pixels high, and colour in it.
    assert picture.shape[0] > 256 and picture.shape[1] > 2 * 256
    assert np.ptp(picture.astype(int), axis=2).max() > 100
    assert "1 explanation picture in" in first.stderr
    second = runner.invoke(app, [*arguments, "--explain", str(folder), "--json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)[0]["faces"][0]["label"] in region_model.classes
    assert (folder / "astronaut.face1-2.png").is_file()
    assert "astronaut.face1.png exists" in second.stderr


def test_explain_into_the_folder_of_the_photos_is_refused(region_model, astronaut_path, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(astronaut_path.read_bytes())
    result = runner.invoke(
        app, ["predict", str(photos), "--model", str(region_model.path), "--explain", str(photos)]
    )
    assert result.exit_code != 0
    assert "--explain" in result.stderr and "holds images to be read" in result.stderr
    assert sorted(path.name for path in photos.iterdir()) == ["a.png"]


def test_a_video_is_explained_once_per_track_at_its_most_confident_frame(region_model, tmp_path):
    from clips import write_clip

    clip = write_clip(tmp_path / "clip.avi", 12)
    folder = tmp_path / "why"
    result = runner.invoke(
        app,
        ["predict", str(clip), "--model", str(region_model.path), "--explain", str(folder)],
    )
    assert result.exit_code == 0, result.output
    # The picture, and the mark that makes the folder fercli's own (never read as photos).
    assert sorted(path.name for path in folder.iterdir()) == [".fercli-output", "clip.track1.png"]
    _picture(folder / "clip.track1.png")
    [line] = [line for line in result.stderr.splitlines() if "track 1 at frame" in line]
    assert "most confident" in line


def _summary(result) -> str:
    """predict's last line on stdout: images, faces, skipped."""
    return result.stdout.strip().splitlines()[-1]


def test_pictures_written_inside_the_photos_folder_are_not_read_back(
    region_model, astronaut_path, tmp_path
):
    # Issue 31: `fer predict photos/ --explain photos/expl` was accepted, and the next
    # `fer predict photos/` took fercli's own pictures for photos and labelled their "faces".
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(astronaut_path.read_bytes())
    arguments = ["predict", str(photos), "--model", str(region_model.path)]
    before = runner.invoke(app, arguments)
    explained = runner.invoke(app, [*arguments, "--explain", str(photos / "expl")])
    annotated = runner.invoke(app, [*arguments, "--annotate", str(photos / "ann")])
    after = runner.invoke(app, arguments)
    as_json = runner.invoke(app, [*arguments, "--json"])

    for result in (before, explained, annotated, after, as_json):
        assert result.exit_code == 0, result.output
    assert (photos / "expl" / "a.face1.png").is_file() and (photos / "ann" / "a.png").is_file()
    assert _summary(before) == _summary(explained) == _summary(after) == "1 image, 1 face"
    # The second run left the first one's pictures out, and said so.
    assert "1 annotated image in" in annotated.stderr
    assert (
        f"note: 1 folder of fercli's own pictures left out: {photos / 'expl'} (delete "
        ".fercli-output in a folder to have it read)"
    ) in annotated.stderr.splitlines()
    assert (
        f"note: 2 folders of fercli's own pictures left out: {photos / 'ann'}, "
        f"{photos / 'expl'} (delete .fercli-output in a folder to have it read)"
    ) in after.stderr.splitlines()
    assert [item["path"] for item in json.loads(as_json.stdout)] == [str(photos / "a.png")]


@pytest.mark.parametrize("as_json", [False, True])
def test_explanation_pictures_that_cannot_be_written_fail_the_run(
    region_model, astronaut_path, tmp_path, as_json
):
    # Issue 32: a picture lost was a note and exit 0; --annotate's copies already failed the run.
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(astronaut_path.read_bytes())
    (photos / "sub" / "b.png").write_bytes(astronaut_path.read_bytes())
    folder = tmp_path / "why"
    folder.mkdir()
    (folder / "sub").write_text("a file where the pictures' sub-folder would go")
    result = runner.invoke(
        app,
        ["predict", str(photos), "--model", str(region_model.path), "--explain", str(folder)]
        + (["--json"] if as_json else []),
    )

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: no explanation picture b.face1.png for {photos / 'sub' / 'b.png'}: cannot "
        f"write {folder / 'sub'}: File exists"
    ]
    assert (folder / "a.face1.png").is_file()  # what could be written was
    assert "1 explanation picture in" in result.stderr
    if as_json:  # the labels were printed all the same
        assert len(json.loads(result.stdout)) == 2


def test_explanation_pictures_lost_to_a_full_disk_fail_the_run(
    region_model, astronaut_path, tmp_path
):
    import resource
    import subprocess
    import sys

    folder = tmp_path / "why"
    runner.invoke(app, ["predict", str(astronaut_path), "--model", str(region_model.path)])

    def small_files_only() -> None:  # a full disk, without mounts: the marker fits, no picture
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("fer")),
            "predict",
            str(astronaut_path),
            "--model",
            str(region_model.path),
            "--explain",
            str(folder),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=small_files_only,
    )

    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    assert json.loads(completed.stdout)[0]["faces"]
    [error] = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(
        f"error: no explanation picture astronaut.face1.png for {astronaut_path}: cannot write "
        f"{folder / 'astronaut.face1.png'}: File too large"
    )
    assert sorted(path.name for path in folder.iterdir()) == [".fercli-output"]


def test_an_ensembles_networks_on_two_threads_give_the_same_maps_to_the_bit(
    region_model, astronaut_path
):
    # --explain runs an ensemble's networks on two threads (infer.explain.EXPLAIN_THREADS);
    # their probabilities are summed in the members' order, as on one thread.
    import dataclasses

    from fercli.infer.model import Member

    base = region_model.networks[0]
    members = [
        Member(base.network, base.mean + shift, base.std * (1 + shift / 50), base.per_image)
        for shift in (0.0, 3.0, -5.0, 8.0, 1.5)
    ]
    ensemble = dataclasses.replace(region_model, members=members)
    [face] = ensemble.explain(astronaut_path)
    rng = np.random.default_rng(0)
    crops = np.stack([face.crop] + [np.roll(face.crop, rng.integers(-3, 4, 2), (0, 1))] * 9)
    grey = grey_crop([member.mean for member in members], 32)
    one_thread = occlusion_maps(lambda batch: ensemble.predict_proba(batch), crops, grey)
    two = occlusion_maps(lambda batch: ensemble.predict_proba(batch, threads=2), crops, grey)
    assert np.array_equal(one_thread[0], two[0]) and np.array_equal(one_thread[1], two[1])
    explained = explain_crops(ensemble, crops, [face.box] * len(crops), every_class=True)
    for index, explanation in enumerate(explained):
        assert np.array_equal(np.stack(list(explanation.maps.values())), one_thread[1][index])
    # The members differ: a sum in another order would differ in the last bits somewhere.
    outputs = [member.predict_proba(crops, False) for member in members]
    assert not np.array_equal(outputs[0], outputs[1])
