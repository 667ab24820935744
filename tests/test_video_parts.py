"""A long video labelled in parts on two worker processes (infer.videos.part_starts): the same
frames, faces, labels and people as one pass, ids continued across the seam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clips import can_write, moving_face, write_clip
from fercli.cli import app
from fercli.infer.model import load_model
from fercli.infer.tracking import VideoConfig, VideoPrediction
from fercli.infer.videos import PART_MIN_ANALYSED, label_video, part_starts
from synthetic import train_tiny_model

CLASSES = ["anger", "happiness", "surprise", "neutral"]
WIDTH, HEIGHT, FPS = 320, 240, 30.0
FRAMES = 150  # two parts of 75 analysed frames: the seam at frame 75
SEAM = 75
SUFFIXES = [suffix for suffix in (".avi", ".mp4") if can_write(suffix)]
# Containers read in parts as one pass reads them: OpenCV's seeks land on their frame (an
# MPEG program stream's header declares one frame fewer than it holds).
CONTAINERS = [suffix for suffix in (".avi", ".mp4", ".mkv", ".mpg") if can_write(suffix)]
runner = CliRunner()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("model") / "tiny.npz", tuple(CLASSES))


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)


@pytest.fixture(params=CONTAINERS or [None])
def suffix(request) -> str:
    if request.param is None:
        pytest.skip("this OpenCV build writes no video format")
    return request.param


def faces_of(result: VideoPrediction) -> dict[tuple[int, int], tuple]:
    """Every face of a result by (frame, track id): its time, box, label and smoothed label."""
    return {
        (face.frame, track.id): (face.time, face.box, face.label, face.smoothed_label)
        for track in result.tracks
        for face in track.frames
    }


def same_faces(two: VideoPrediction, one: VideoPrediction) -> None:
    """two has one's faces, boxes and labels, and their probabilities to within 2e-6: the
    forward pass takes the faces 16 at a time, and faces grouped otherwise (a part's last
    faces) may differ in the sixth decimal, as float32 sums in another order do."""
    assert faces_of(two) == faces_of(one)
    for track, other in zip(two.tracks, one.tracks, strict=True):
        for face, same in zip(track.frames, other.frames, strict=True):
            for mine, theirs in (
                (face.probabilities, same.probabilities),
                (face.smoothed, same.smoothed),
            ):
                assert (mine is None) == (theirs is None)
                if mine is not None:
                    assert list(mine) == list(theirs)
                    assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=2e-6)


def both(path: Path, model, options: VideoConfig = VideoConfig(), frames=FRAMES, **settings):
    """The video of frames frames labelled in one pass, and in parts on two workers (checked
    to be two)."""
    assert len(part_starts(frames, FPS, options, 2)) == 2
    one = label_video(path, model, options, workers=1, **settings)
    two = label_video(path, model, options, workers=2, **settings)
    assert (one.workers, two.workers) == (1, 2)
    return one, two


def test_parts_begin_on_detection_frames_only_for_long_enough_videos():
    assert part_starts(FRAMES, FPS, VideoConfig(), 2) == [0, SEAM]
    assert part_starts(FRAMES, FPS, VideoConfig(), 1) == [0]
    assert part_starts(2 * PART_MIN_ANALYSED - 1, FPS, VideoConfig(), 2) == [0]
    assert part_starts(0, FPS, VideoConfig(), 2) == [0]  # no frame count in the header
    # Every analysed frame's number; the seam a whole number of detections in.
    assert part_starts(600, FPS, VideoConfig(every=3), 2) == [0, 300]
    assert part_starts(600, FPS, VideoConfig(detect_every=7), 2) == [0, 301]
    starts = part_starts(900, FPS, VideoConfig(), 3)
    assert starts == [0, 300, 600]
    # --fps: the frames one pass analyses (a new 1/7 s slot each), whole detections apart.
    wanted = [n for n in range(600) if n == 0 or (n * 7) // 30 > ((n - 1) * 7) // 30]
    [_, seam] = part_starts(600, FPS, VideoConfig(fps=7.0), 2)
    assert seam in wanted and wanted.index(seam) % 5 == 0


def test_parts_give_the_frames_faces_and_labels_of_one_pass(model, tmp_path, suffix):
    path = write_clip(tmp_path / f"long{suffix}", FRAMES, WIDTH, HEIGHT, FPS)
    seen = []
    one = label_video(path, model, workers=1)
    two = label_video(path, model, workers=2, progress=seen.append)
    assert (one.workers, two.workers) == (1, 2)
    assert (two.frames, two.analysed, two.detections, two.error) == (FRAMES, FRAMES, 30, None)
    assert (one.frames, one.analysed, one.detections, one.error) == (FRAMES, FRAMES, 30, None)
    assert (two.width, two.height, two.fps, two.interval) == (WIDTH, HEIGHT, FPS, 1 / FPS)
    [track] = two.tracks  # one person, one id across the seam
    assert track.id == 1
    assert [face.frame for face in track.frames] == list(range(FRAMES))
    same_faces(two, one)
    summary = [{**track, "frames": None} for track in two.to_json(model.classes)["tracks"]]
    assert summary == [{**track, "frames": None} for track in one.to_json(model.classes)["tracks"]]
    # Progress: frames read, of the video's, up to all of them.
    done = [event.done for event in seen]
    assert done == sorted(done) and done[-1] == FRAMES and seen[-1].total == FRAMES


@pytest.mark.parametrize(
    "options", [VideoConfig(every=2), VideoConfig(fps=12.0), VideoConfig(smooth=1.0)]
)
def test_sampling_and_smoothing_in_parts_as_in_one_pass(model, tmp_path, options):
    path = write_clip(tmp_path / f"long{SUFFIXES[0]}", 2 * FRAMES, WIDTH, HEIGHT, FPS)
    one, two = both(path, model, options, 2 * FRAMES)
    assert (two.frames, two.analysed) == (one.frames, one.analysed)
    assert [track.id for track in two.tracks] == [track.id for track in one.tracks] == [1]
    same_faces(two, one)


def test_a_second_face_keeps_its_id_across_the_seam(model, tmp_path):
    def place(index: int) -> list[tuple[float, float, float]]:
        first = (95.0 + 50 * index / FRAMES, 120.0, 1.0)
        return [first] + ([(395.0, 115.0, 0.95)] if index >= 40 else [])

    path = write_clip(tmp_path / f"two{SUFFIXES[0]}", FRAMES, 480, HEIGHT, FPS, place)
    one, two = both(path, model)
    assert [track.id for track in two.tracks] == [track.id for track in one.tracks] == [1, 2]
    first, second = two.tracks
    assert [face.frame for face in first.frames] == list(range(FRAMES))
    assert [face.frame for face in second.frames] == list(range(40, FRAMES))
    assert all(face.box[0] > 300 for face in second.frames)
    same_faces(two, one)


@pytest.mark.parametrize("gone", [(SEAM - 10, SEAM + 10), (SEAM - 13, SEAM - 3)])
def test_a_face_gone_about_the_seam_keeps_its_id_when_it_comes_back(model, tmp_path, gone):
    # Gone for 10-20 frames (within KEEP_LOST_SECONDS) across the seam, or just before it: one
    # pass continues its track, and so do the parts. Lost at a frame off the detection
    # schedule (the second case), the face gets a detection at once, which leaves the
    # schedule where it was: the parts still detect where one pass does.
    moving = moving_face(FRAMES, WIDTH, HEIGHT)

    def place(index: int) -> list[tuple[float, float, float]]:
        return [] if gone[0] <= index < gone[1] else moving(index)

    path = write_clip(tmp_path / f"gap{SUFFIXES[0]}", FRAMES, WIDTH, HEIGHT, FPS, place)
    one, two = both(path, model)
    [track] = two.tracks
    [single] = one.tracks
    assert [face.frame for face in track.frames] == [face.frame for face in single.frames]
    assert track.frames[0].frame == 0 and track.frames[-1].frame == FRAMES - 1
    assert not any(gone[0] <= face.frame < gone[1] for face in track.frames)
    assert two.detections == one.detections
    same_faces(two, one)


def test_a_face_gone_for_longer_gets_a_new_id_in_parts_as_in_one_pass(model, tmp_path):
    moving = moving_face(2 * FRAMES, WIDTH, HEIGHT)
    # Gone from frame 100 to 200 (over 3 s): a new person for the tracker.
    path = write_clip(
        tmp_path / f"away{SUFFIXES[0]}",
        2 * FRAMES,
        WIDTH,
        HEIGHT,
        FPS,
        lambda index: [] if 100 <= index < 200 else moving(index),
    )
    one, two = both(path, model, frames=2 * FRAMES)
    assert [track.id for track in two.tracks] == [track.id for track in one.tracks] == [1, 2]
    same_faces(two, one)


def test_keep_best_and_adapt_in_parts_as_in_one_pass(model, tmp_path):
    path = write_clip(tmp_path / f"long{SUFFIXES[0]}", FRAMES, WIDTH, HEIGHT, FPS)
    one, two = both(path, model, keep_best=True)
    assert list(two.best) == list(one.best) == [1]
    assert two.best[1][0].frame == one.best[1][0].frame
    assert (two.best[1][1] == one.best[1][1]).all()
    one, two = both(path, model, adapt=True)
    assert two.adaptation.faces == one.adaptation.faces == FRAMES
    same_faces(two, one)


def test_a_truncated_long_video_reports_what_one_pass_reports(model_path, tmp_path):
    if ".avi" not in SUFFIXES:
        pytest.skip("an MP4 cut short loses its index: nothing before the cut can be read")
    whole = write_clip(tmp_path / "whole.avi", FRAMES, WIDTH, HEIGHT, FPS)
    model = load_model(model_path)
    for share in (0.4, 0.75):  # cut in the first part, and in the second
        cut = tmp_path / f"cut{share}.avi"
        cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * share)])
        one, two = both(cut, model)
        assert 10 < two.frames < FRAMES and two.frames == one.frames
        assert two.error == one.error and "truncated or damaged" in two.error
        same_faces(two, one)
        result = runner.invoke(
            app, ["predict", str(cut), "--model", str(model_path), "--workers", "2", "--json"]
        )
        assert result.exit_code == 0, result.output
        [line] = [line for line in result.stderr.splitlines() if str(cut) in line]
        assert line == f"error in {cut}: {one.error}"
        assert "Traceback" not in result.output


def test_predict_on_a_long_video_with_two_workers_prints_one_pass_json(model_path, tmp_path):
    path = write_clip(tmp_path / f"long{SUFFIXES[0]}", FRAMES, WIDTH, HEIGHT, FPS)
    printed = {}
    for workers in ("1", "2"):
        result = runner.invoke(
            app, ["predict", str(path), "--model", str(model_path), "--json", "--workers", workers]
        )
        assert result.exit_code == 0, result.output
        printed[workers] = json.loads(result.stdout)
    one, two = printed["1"][0], printed["2"][0]
    assert [track["id"] for track in two["tracks"]] == [track["id"] for track in one["tracks"]]
    assert [track["id"] for track in two["tracks"]] == [1]
    for track, other in zip(two["tracks"], one["tracks"], strict=True):
        assert track["frames_seen"] == other["frames_seen"] == FRAMES
        for face, same in zip(track["frames"], other["frames"], strict=True):
            assert (face["frame"], face["box"], face["label"]) == (
                same["frame"],
                same["box"],
                same["label"],
            )
    assert {key: value for key, value in two.items() if key != "tracks"} == {
        key: value for key, value in one.items() if key != "tracks"
    }
