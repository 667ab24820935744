"""fer predict on videos: tracks, sampling, outputs and bad files, on clips made from the test
photo."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from clips import can_write, moving_face, write_clip
from fercli.cli import app
from fercli.core.errors import FerError
from fercli.infer.model import load_model
from fercli.infer.tracking import VideoConfig
from fercli.infer.videos import label_video
from fercli.media.video import sniff_video
from synthetic import train_tiny_model

CLASSES = ["anger", "happiness", "surprise", "neutral"]
WIDTH, HEIGHT = 320, 240
runner = CliRunner()


def fer(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def suffix() -> str:
    """The container this OpenCV build writes and reads back: MJPG .avi, else mp4v .mp4."""
    for candidate in (".avi", ".mp4"):
        if can_write(candidate):
            return candidate
    pytest.skip("this OpenCV build writes no video format")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny model trained on synthetic shapes (its labels mean nothing; the tests count faces)."""
    return train_tiny_model(tmp_path_factory.mktemp("model") / "tiny.npz", tuple(CLASSES))


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path)


@pytest.fixture
def clip(tmp_path, suffix):
    """clip(name, frames, place=None): a 320x240, 30 frames/s clip (default: one moving face)."""

    def make(name: str, frames: int = 24, place=None, width: int = WIDTH) -> Path:
        return write_clip(tmp_path / f"{name}{suffix}", frames, width, HEIGHT, 30.0, place)

    return make


def with_gap(frames: int, start: int, end: int):
    """One moving face, absent from frame start to frame end - 1."""
    moving = moving_face(frames, WIDTH, HEIGHT)
    return lambda index: [] if start <= index < end else moving(index)


WIDE = 480  # clips with two faces side by side


def two_faces(frames: int, joins: int):
    """A face moving in the left half, and from frame joins on a second one (mirrored) at the
    right."""

    def place(index: int) -> list[tuple[float, float, float]]:
        phase = index / max(1, frames - 1)
        first = (95.0 + 50 * phase, 120.0, 1.0 + 0.1 * phase)
        return [first] + ([(395.0, 115.0, 0.95)] if index >= joins else [])

    return place


def check_frame(face, width: int = WIDTH, height: int = HEIGHT) -> None:
    x, y, w, h = face.box
    assert 60 < w < 130 and 60 < h < 130  # the face is about 88 pixels wide
    assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
    assert list(face.probabilities) == CLASSES
    assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert face.probabilities[face.label] == max(face.probabilities.values())


# --- the library -----------------------------------------------------------------------


def test_a_moving_face_keeps_one_track(model, clip):
    result = label_video(clip("moving", 24), model)
    assert result.error is None
    assert (result.frames, result.analysed, result.fps) == (24, 24, 30.0)
    [track] = result.tracks
    assert track.id == 1
    assert [face.frame for face in track.frames] == list(range(24))
    assert [face.time for face in track.frames] == pytest.approx(
        [index / 30 for index in range(24)]
    )
    for face in track.frames:
        check_frame(face)
    # The face drifts right by about 0.3 of the width: the box follows it.
    assert track.frames[-1].box[0] - track.frames[0].box[0] > 50
    # Landmark following: a full detection every 5 analysed frames, not on each.
    assert result.detections == 5


def test_detection_on_every_frame_finds_the_same_track(model, clip):
    result = label_video(clip("moving", 24), model, VideoConfig(detect_every=1))
    [track] = result.tracks
    assert len(track.frames) == 24 and result.detections == 24


def test_a_second_face_gets_a_second_id(model, clip):
    result = label_video(clip("two", 30, two_faces(30, joins=10), WIDE), model)
    assert [track.id for track in result.tracks] == [1, 2]
    first, second = result.tracks
    assert [face.frame for face in first.frames] == list(range(30))
    # Found at the first full detection after it came in (every 5 frames), then every frame.
    assert [face.frame for face in second.frames] == list(range(10, 30))
    for face in second.frames:
        check_frame(face, WIDE)
        assert face.box[0] > 300  # the face at the right
    assert all(face.box[0] < 200 for face in first.frames)


def test_frames_without_a_face_have_no_face_records(model, clip):
    result = label_video(clip("gap", 30, with_gap(30, 10, 18)), model)
    seen = sorted(face.frame for track in result.tracks for face in track.frames)
    assert not set(seen) & set(range(10, 18))
    assert set(range(10)) <= set(seen)
    # The face is found again at a full detection at most 5 frames after it comes back.
    assert set(range(23, 30)) <= set(seen)


def test_a_video_without_a_face_is_analysed_with_no_tracks(model, clip):
    result = label_video(clip("empty", 12, lambda index: []), model)
    assert result.error is None and result.analysed == 12 and result.tracks == []
    assert result.detections == 3  # every 5 frames, even with no face in sight


def test_every_and_fps_sample_frames(model, clip):
    path = clip("moving", 24)
    every = label_video(path, model, VideoConfig(every=3))
    assert every.frames == 24 and every.analysed == 8
    assert [face.frame for face in every.tracks[0].frames] == list(range(0, 24, 3))
    assert every.interval == pytest.approx(0.1)
    by_time = label_video(path, model, VideoConfig(fps=10))
    assert by_time.analysed == 8
    assert [face.frame for face in by_time.tracks[0].frames] == list(range(0, 24, 3))


def test_smoothing_keeps_the_raw_values(model, clip):
    path = clip("moving", 24)
    raw = label_video(path, model)
    smoothed = label_video(path, model, VideoConfig(smooth=0.5))
    for before, after in zip(raw.tracks[0].frames, smoothed.tracks[0].frames, strict=True):
        assert after.probabilities == before.probabilities
        assert list(after.smoothed) == CLASSES
        assert sum(after.smoothed.values()) == pytest.approx(1, abs=1e-4)
        assert after.smoothed[after.smoothed_label] == max(after.smoothed.values())
    # The first frame's window holds the frames up to 0.25 s later (0 to 7 at 30 frames/s).
    first = np.mean(
        [[face.probabilities[label] for label in CLASSES] for face in raw.tracks[0].frames[:8]],
        axis=0,
    )
    assert [smoothed.tracks[0].frames[0].smoothed[label] for label in CLASSES] == pytest.approx(
        first, abs=1e-5
    )


def test_videos_are_recognised_by_content(clip, tmp_path):
    path = clip("moving", 3)
    assert sniff_video(path.read_bytes()[:16]) is not None
    renamed = tmp_path / "holiday.png"
    renamed.write_bytes(path.read_bytes())
    assert sniff_video(renamed.read_bytes()[:16]) is not None
    assert sniff_video(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8) is None


# --- the command -----------------------------------------------------------------------


def test_json_of_a_video(model_path, clip):
    path = clip("two", 20, two_faces(20, joins=5), WIDE)
    result = fer("predict", path, "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    [video] = json.loads(result.stdout)
    assert video["path"] == str(path) and video["fps"] == 30.0 and video["frames"] == 20
    assert video["model"] == str(model_path)  # which model answered
    assert [track["id"] for track in video["tracks"]] == [1, 2]
    for track in video["tracks"]:
        assert set(track) == {"id", "frames_seen", "seconds", "first", "last", "shares", "frames"}
        assert track["frames_seen"] == len(track["frames"])
        assert set(track["shares"]) == set(CLASSES)
        for face in track["frames"]:
            assert set(face) == {"frame", "time", "box", "label", "probabilities"}
            assert len(face["box"]) == 4 and all(isinstance(value, int) for value in face["box"])
            assert list(face["probabilities"]) == CLASSES
    assert len(video["tracks"][0]["frames"]) == 20


def test_json_with_images_keeps_their_shape(model_path, clip, astronaut_path):
    path = clip("moving", 6)
    result = fer(
        "predict", astronaut_path, path, "--model", model_path, "--json", "--smooth", "0.2"
    )
    assert result.exit_code == 0, result.output
    image, video = json.loads(result.stdout)
    assert set(image) == {"path", "model", "faces"} and len(image["faces"]) == 1
    assert image["model"] == video["model"] == str(model_path)
    face = video["tracks"][0]["frames"][0]
    assert set(face) == {
        "frame",
        "time",
        "box",
        "label",
        "probabilities",
        "smoothed_label",
        "smoothed_probabilities",
    }


def test_csv_one_row_per_face_per_frame(model_path, clip, astronaut_path):
    path = clip("two", 12, two_faces(12, joins=0), WIDE)
    result = fer("predict", path, "--model", model_path, "--csv", "--every", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "path",
        "frame",
        "time",
        "track",
        "x",
        "y",
        "width",
        "height",
        "label",
        *(f"p_{label}" for label in CLASSES),
        "model",
    ]
    assert {row[-1] for row in rows[1:]} == {str(model_path)}
    assert [(row[1], row[3]) for row in rows[1:]] == [
        (str(frame), track) for frame in range(0, 12, 2) for track in "12"
    ]
    assert rows[2][2] == "0.000" and rows[3][2] == "0.067"
    mixed = fer("predict", astronaut_path, path, "--model", model_path, "--csv")
    rows = list(csv.reader(io.StringIO(mixed.stdout)))
    assert rows[0][:5] == ["path", "face", "frame", "time", "track"]
    assert rows[1][:5] == [str(astronaut_path), "1", "", "", ""]
    assert rows[2][:5] == [str(path), "", "0", "0.000", "1"]
    assert rows[0][-1] == "model" and {row[-1] for row in rows[1:]} == {str(model_path)}
    assert {len(row) for row in rows} == {len(rows[0])}
    # Rows follow the order the files were given, a video before an image too.
    swapped = fer("predict", path, astronaut_path, "--model", model_path, "--csv")
    rows = list(csv.reader(io.StringIO(swapped.stdout)))
    assert rows[1][:5] == [str(path), "", "0", "0.000", "1"]
    assert rows[-1][:5] == [str(astronaut_path), "1", "", "", ""]
    listed = fer("predict", path, astronaut_path, "--model", model_path, "--json").stdout
    listed = json.loads(listed)
    assert [item["path"] for item in listed] == [str(path), str(astronaut_path)]


def test_table_summarises_each_track(model_path, clip):
    path = clip("two", 20, two_faces(20, joins=10), WIDE)
    result = fer("predict", path, "--model", model_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(
        line.startswith(f"{path}: 20 frames, 0.7 s at 30 frames/s, 20 analysed") for line in lines
    )
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    assert f"model {model_path.name}" in lines  # which model answered, as for photos
    assert [[cell.strip() for cell in row[:4]] for row in rows] == [
        ["1", "20", "0.7 s", "0.0-0.6 s"],
        ["2", "10", "0.3 s", "0.3-0.6 s"],
    ]
    for row in rows:
        shares = [int(cell.strip().rstrip("%")) for cell in row[4:]]
        assert len(shares) == len(CLASSES) and 99 <= sum(shares) <= 101
    assert lines[-1] == "1 video, 2 tracks"


def test_annotated_video_and_timeline(model_path, clip, tmp_path, astronaut_path):
    path = clip("two", 15, two_faces(15, joins=5), WIDE)
    folder = tmp_path / "annotated"
    result = fer(
        "predict", path, astronaut_path, "--model", model_path, "--annotate", folder, "--every", "2"
    )
    assert result.exit_code == 0, result.output
    video = folder / "two.avi"
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 15 and frames[0].shape == (HEIGHT, WIDE, 3)
    # The box is drawn in the track's colour (green for track 1) on analysed and skipped frames.
    source = cv2.VideoCapture(str(path))
    for frame in frames[:2]:
        ok, original = source.read()
        assert ok and np.abs(frame.astype(int) - original.astype(int)).max() > 100
    timeline = cv2.imread(str(folder / "two.timeline.png"))
    assert timeline is not None and timeline.shape[1] == 960
    assert (folder / "astronaut.png").is_file()
    assert "1 annotated video and 1 timeline" in result.stderr
    assert "1 annotated image in" in result.stderr  # one, not "1 annotated images"
    # A second run never replaces them.
    again = fer("predict", path, "--model", model_path, "--annotate", folder)
    assert again.exit_code == 0
    assert (folder / "two-2.avi").is_file() and (folder / "two.timeline-2.png").is_file()
    assert "two.avi exists" in again.stderr
    assert "annotated image" not in again.stderr  # videos alone: no "0 annotated images"


def test_annotate_refuses_the_folder_of_the_videos(model_path, clip, tmp_path):
    path = clip("moving", 4)
    result = fer("predict", path, "--model", model_path, "--annotate", tmp_path)
    assert result.exit_code == 1
    assert "holds images to be read" in result.stderr


def test_a_folder_of_images_and_videos(model_path, clip, tmp_path, astronaut_path):
    path = clip("moving", 6)
    (tmp_path / "photo.png").write_bytes(astronaut_path.read_bytes())
    (tmp_path / "notes.txt").write_text("not media")
    result = fer("predict", tmp_path, "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    found = {Path(item["path"]).name: item for item in json.loads(result.stdout)}
    assert set(found) == {path.name, "photo.png"}
    assert "tracks" in found[path.name] and "faces" in found["photo.png"]


# --- bad files -------------------------------------------------------------------------


def test_a_truncated_video_reports_the_frames_before_then_the_error(
    model_path, clip, suffix, tmp_path
):
    if suffix != ".avi":
        pytest.skip(
            "an MP4 cut short loses its index at the end: nothing before the cut can be read"
        )
    whole = clip("whole", 30)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = fer("predict", cut, whole, "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    damaged, fine = json.loads(result.stdout)
    assert 5 < damaged["frames"] < 30 and "error" not in fine
    assert "truncated or damaged" in damaged["error"]
    assert len(damaged["tracks"][0]["frames"]) == damaged["frames"]
    [line] = [line for line in result.stderr.splitlines() if str(cut) in line]
    assert line.startswith(
        f"error in {cut}: the video ends after {damaged['frames']} of the 30 frames"
    )


def test_an_mp4_cut_short_is_named_so(model, tmp_path):
    if not can_write(".mp4"):
        pytest.skip("no mp4v writer in this OpenCV build")
    whole = write_clip(tmp_path / "whole.mp4", 10, WIDTH, HEIGHT)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = label_video(cut, model)
    assert result.analysed == 0 and result.error.startswith(
        "cannot open it as a video: truncated MP4"
    )


def test_files_that_are_no_readable_video(model_path, clip, suffix, tmp_path):
    good = clip("good", 6)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(
        b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200
    )  # looks like an MP4, holds nothing
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 30, (WIDTH, HEIGHT))
    writer.release()
    codec = tmp_path / "codec.avi"
    codec.write_bytes(
        write_clip(tmp_path / "mjpg.avi", 4, WIDTH, HEIGHT).read_bytes().replace(b"MJPG", b"ZZZZ")
    )
    text = tmp_path / "notes.mp4"
    text.write_text("no video at all")
    result = fer("predict", fake, empty, codec, text, good, "--model", model_path)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.output
    reasons = {
        Path(line.split(": ")[0].split()[-1]).name: line
        for line in lines
        if line.startswith("skipped")
    }
    assert set(reasons) == {"fake.mp4", "empty.avi", "codec.avi", "notes.mp4"}
    assert "cannot open it as a video" in reasons["fake.mp4"]
    assert "no frames: the video is empty" in reasons["empty.avi"]
    assert "a codec ('ZZZZ') this OpenCV build cannot decode" in reasons["codec.avi"]
    assert "not an image" in reasons["notes.mp4"]
    assert result.stdout.splitlines()[-1] == "1 video, 1 track; 4 skipped"
    alone = fer("predict", fake, "--model", model_path)
    assert alone.exit_code == 1


def test_a_video_without_a_face_says_so(model_path, clip):
    path = clip("empty", 6, lambda index: [])
    result = fer("predict", path, "--model", model_path)
    assert result.exit_code == 0, result.output
    assert "no face found" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 video, 0 tracks"


@pytest.mark.parametrize(
    "option", [["--fps", "0"], ["--fps", "nan"], ["--smooth", "inf"], ["--every", "0"]]
)
def test_sampling_options_out_of_range_are_refused(model_path, clip, option):
    result = fer("predict", clip("moving", 2), "--model", model_path, *option)
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_face_moving_half_its_width_between_analysed_frames_keeps_its_id(model, clip):
    # From x = 100 to 380 in 40 frames: 42 pixels (half the face) between frames 6 apart.
    path = clip("fast", 40, lambda index: [(100.0 + 7 * index, 120.0, 1.0)], WIDE)
    result = label_video(path, model, VideoConfig(every=6, detect_every=2))
    [track] = result.tracks
    assert [face.frame for face in track.frames] == list(range(0, 40, 6))


def test_adapt_relabels_every_face_of_the_video_with_the_adapted_model(model, clip):
    plain = label_video(clip("adapted", 24), model)
    adapted = label_video(clip("adapted", 24), model, adapt=True)

    assert adapted.error is None
    assert adapted.adaptation.faces == 24  # one face in each of the 24 frames
    assert adapted.adaptation.distinct_faces == 24
    assert json.loads(json.dumps(adapted.to_json(model.classes)))["adapted"]["faces"] == 24
    [before], [after] = plain.tracks, adapted.tracks
    assert [face.box for face in before.frames] == [face.box for face in after.frames]
    # Same faces, other statistics: the probabilities move.
    assert any(
        face.probabilities != other.probabilities
        for face, other in zip(before.frames, after.frames, strict=True)
    )
    for face in after.frames:
        check_frame(face)


def test_adapt_refuses_a_video_with_too_few_faces_as_it_refuses_photos(
    model_path, clip, astronaut_path
):
    # Issue 32.5: a short video printed its labels unadapted with exit 0 (an error line the
    # only trace), where photos are refused; a video without a face got an "error".
    short, empty = clip("short", 8), clip("empty", 8, lambda index: [])
    photos = fer("predict", astronaut_path, "--model", model_path, "--adapt")
    assert photos.exit_code == 1
    assert "--adapt needs at least 20 distinct faces" in photos.output
    for path, faces in ((short, 8), (empty, 0)):
        for output in ((), ("--json",), ("--csv",)):
            result = fer("predict", path, "--model", model_path, "--adapt", *output)
            assert result.exit_code == 1, result.output
            said = " ".join(result.output.split())
            assert (
                f"--adapt needs at least 20 distinct faces to estimate statistics from; there "
                f"{'is' if faces == 1 else 'are'} {faces} in {path} (label without --adapt)"
            ) in said
            assert "Traceback" not in result.output
            assert "happiness" not in result.stdout  # no labels printed
        with pytest.raises(FerError, match=f"there are {faces} in"):
            label_video(path, load_model(model_path), adapt=True)
    # With a good video beside it, the short one still refuses the run.
    mixed = fer("predict", clip("long", 24), short, "--model", model_path, "--adapt")
    assert mixed.exit_code == 1 and f"in {short}" in " ".join(mixed.output.split())


def test_adapt_counts_a_still_video_as_one_face(model_path, clip):
    # 24 frames of one face standing still: one picture, whatever the number of frames.
    still = clip("still", 24, lambda index: [(160.0, 120.0, 1.0)])
    result = fer("predict", still, "--model", model_path, "--adapt")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "distinct faces" in said or "nearly the same picture" in said
