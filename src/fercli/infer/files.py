"""Labelling image and video files together (fer predict): the dispatch by content, annotated
videos and their timelines, and the CSV rows of every face of photos and videos."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fercli.core.errors import FerError
from fercli.core.events import Progress
from fercli.core.labels import (
    answer_shares,
    collapse_note,
    no_neutral_note,
    trained_on_varied_data,
)
from fercli.core.recipes import for_photos_from_elsewhere
from fercli.infer.model import FerModel
from fercli.infer.photos import ImagePrediction, PredictReport, annotated_name, label_photos
from fercli.infer.tracking import (
    FaceFrame,
    VideoConfig,
    VideoPrediction,
    frame_sampler,
)
from fercli.infer.videos import label_video
from fercli.media.discover import Discovered
from fercli.media.video import is_video, open_video

if TYPE_CHECKING:
    from fercli.infer.photos import ImagePrediction, PredictReport


@dataclass(frozen=True)
class AnswerShares:
    """The share of each label among the faces of the photos (together) or of one video's
    analysed frames, largest first, and the warning when one label takes most of them
    (core.labels.collapse_note, whose advice knows whether --adapt was given and how the
    model was trained)."""

    source: str  # "photos", or the video's path
    shares: dict[str, float]
    answers: int  # faces labelled
    warning: str | None = None


@dataclass
class MediaReport:
    """fer predict over images and videos: the images' report as before, and each video's.
    The model that labelled them all is images.model (its file) and images.classes."""

    images: PredictReport
    videos: list[VideoPrediction] = field(default_factory=list)
    # The labels' shares: the photos', then each video's (media_answers).
    answers: list[AnswerShares] = field(default_factory=list)
    # Labelled copies written (fer predict --annotate): images; videos and timelines.
    annotated: list[Path] = field(default_factory=list)
    annotated_videos: list[Path] = field(default_factory=list)
    # Explanation pictures written (fer predict --explain): fercli.infer.explain_files records.
    explained: list = field(default_factory=list)
    # The files in the order they were given (folders' files where the folder was).
    order: list[str] = field(default_factory=list)

    def csv_rows(self, escape: Callable[[str], str] = str) -> Iterator[list]:
        """fer predict --csv: the header, then a row per face (see csv_rows)."""
        return csv_rows(self, escape)

    def to_json(self) -> list[dict]:
        """fer predict --json: each file's result in the order the files were given (an
        image's ImagePrediction.to_json, a video's VideoPrediction.to_json), each naming the
        model file that labelled it ("model", after "path")."""
        return [self.item_json(item) for item in self.in_order()]

    def item_json(self, item: ImagePrediction | VideoPrediction) -> dict:
        """One file's JSON result, with the model file's path."""
        data = (
            item.to_json(self.images.classes)
            if isinstance(item, VideoPrediction)
            else item.to_json()
        )
        return {"path": data.pop("path"), "model": self.images.model, **data}

    def in_order(self) -> list[ImagePrediction | VideoPrediction]:
        """The images' results (ImagePrediction) and the videos' (VideoPrediction) in the
        order the files were given."""
        waiting: dict[str, list[ImagePrediction | VideoPrediction]] = {}
        items: list[ImagePrediction | VideoPrediction] = [*self.images.images, *self.videos]
        for item in items:
            waiting.setdefault(str(item.path), []).append(item)
        ordered = [waiting[path].pop(0) for path in self.order if waiting.get(path)]
        return ordered + [item for items in waiting.values() for item in items]

    @property
    def processed(self) -> int:
        """Files that gave a result (an image read, a video with at least one frame analysed)."""
        return self.images.processed + sum(1 for video in self.videos if video.processed)


def label_files(
    found: Discovered,
    model: FerModel,
    options: VideoConfig = VideoConfig(),
    workers: int | None = None,
    progress: Progress | None = None,
    video_progress: Callable[[str], Progress | None] | None = None,
    adapt: bool | str = False,
    keep_best: bool = False,
    face_crops: bool = False,
) -> MediaReport:
    """label_photos for the images among the files a command was given (media.discover) and
    label_video for the videos, told apart by content. workers: processes for the photos,
    and for each long video (label_video). video_progress(path) gives a video's
    progress callback. adapt: the photos' faces together, and each video's faces, adapted to
    (see label_photos and label_video); keep_best: each video keeps its tracks' most confident
    faces (for --explain); face_crops: the photos are all face crops (label_photos's)."""
    videos = [path for path in found.files if is_video(path)]
    images = [path for path in found.files if path not in set(videos)] if videos else found.files
    report = label_photos(
        found.only(images),
        model,
        workers,
        progress=progress if images else None,
        adapt=adapt if images else False,
        face_crops=face_crops,
    )
    results = [
        label_video(
            path,
            model,
            options,
            video_progress(str(path)) if video_progress else None,
            adapt,
            keep_best=keep_best,
            workers=workers,
        )
        for path in videos
    ]
    media = MediaReport(images=report, videos=results, order=[str(path) for path in found.files])
    media.answers = media_answers(
        media,
        for_photos_from_elsewhere(model.meta.get("training")),
        trained_on_varied_data(model.meta),
    )
    neutral = no_neutral_note(model.classes)
    if neutral and media.processed:
        report.notes.append(f"{Path(str(model.path)).name}: {neutral}")
    return media


def media_answers(media: MediaReport, jittered: bool, varied: bool = False) -> list[AnswerShares]:
    """The labels' shares among the photos' faces (all together) and among each video's faces
    frame by frame (a video's frames show the same few people, so its own), where there are
    two answers or more, each with its collapse warning. jittered: the model was trained for
    photos from elsewhere (core.recipes.for_photos_from_elsewhere), varied: on photos from
    anywhere (core.labels.trained_on_varied_data), which its advice leaves out."""
    found = []
    photos = [face.label for image in media.images.images for face in image.faces]
    if len(photos) > 1:
        shares = answer_shares(photos)
        note = collapse_note(
            shares,
            len(photos),
            adapted=media.images.adaptation is not None,
            jittered=jittered,
            varied=varied,
        )
        found.append(AnswerShares("photos", shares, len(photos), note))
    for video in media.videos:
        # As the track table counts them: the smoothed label where there is one.
        labels = [
            face.smoothed_label or face.label for track in video.tracks for face in track.frames
        ]
        if len(labels) < 2:
            continue
        shares = answer_shares(labels)
        note = collapse_note(
            shares,
            len(labels),
            adapted=video.adaptation is not None,
            jittered=jittered,
            varied=varied,
            unit="faces labelled in its frames",
            same_people=True,
        )
        found.append(AnswerShares(video.path, shares, len(labels), note))
    return found


# Box colours (BGR) of tracks in annotated videos, by track id.
TRACK_COLOURS = [
    (0, 200, 0),
    (0, 140, 255),
    (255, 120, 0),
    (200, 0, 200),
    (0, 220, 220),
    (60, 60, 255),
]


def annotate_videos(media: MediaReport, classes: list[str], folder: Path) -> list[Path]:
    """For each analysed video, an annotated copy (boxes, track ids and labels on every frame;
    MJPG in .avi, which every OpenCV build writes) and a timeline picture, in folder: the
    video's path below the folder it was found in, as name.avi and name.timeline.png.

    Never replaces a file (the next free name instead, with a note in media.images.notes);
    returns the files written."""
    notes = media.images.notes
    written = []
    for video in media.videos:
        if not video.processed:
            continue
        base = Path(folder) / annotated_name(video.path, media.images.inputs)
        for wanted, write in (
            (base.with_suffix(".avi"), _write_annotated),
            (base.with_name(base.stem + ".timeline.png"), _write_timeline),
        ):
            try:
                path = write(video, classes, wanted)
            except FerError as error:  # a full disk: the run failed, not just a note
                media.images.write_failures.append(f"no {wanted.name} for {video.path}: {error}")
                continue
            if path != wanted:
                notes.append(f"{wanted} exists: the copy for {video.path} is {path}")
            written.append(path)
    return written


def _write_timeline(video: VideoPrediction, classes: list[str], path: Path) -> Path:
    from fercli.media.drawing import timeline_image

    tracks = []
    for track in video.tracks:
        times = [face.time for face in track.frames]
        values = np.array(
            [
                [(face.smoothed or face.probabilities)[label] for label in classes]
                for face in track.frames
            ]
        )
        tracks.append((track.id, times, values))
    duration = (
        video.frames / video.fps
        if video.fps
        else max((face.time for t in video.tracks for face in t.frames), default=0)
    )
    smoothed = " (smoothed)" if video.smoothed else ""
    title = f"{Path(video.path).name}: probability of each class over time{smoothed}"
    gap = max(1.0, 3 * video.interval)
    return timeline_image(tracks, classes, duration, path, title, gap, keep_existing=True)


def _write_annotated(video: VideoPrediction, classes: list[str], path: Path) -> Path:
    """The video read again, each frame with the faces of the latest analysed frame drawn on it."""
    from fercli.core.store import atomic_save
    from fercli.media.drawing import line_thickness

    by_frame: dict[int, list[tuple[int, FaceFrame]]] = {}
    for track in video.tracks:
        for face in track.frames:
            by_frame.setdefault(face.frame, []).append((track.id, face))
    # An analysed frame without a face clears the drawing too: the tracks name only frames with
    # a face, so the sampling is replayed to know the others.
    sampled = frame_sampler(video.options, video.fps)

    def save(name: str) -> None:
        # A write that fails is found by _check_written; OpenCV's warning per frame is noise.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            write_frames(name)
        finally:
            cv2.utils.logging.setLogLevel(level)

    def write_frames(name: str) -> None:
        capture = open_video(Path(video.path))
        writer = cv2.VideoWriter(
            name, cv2.VideoWriter_fourcc(*"MJPG"), video.fps or 25.0, (video.width, video.height)
        )
        try:
            if not writer.isOpened():
                raise FerError("OpenCV cannot write an MJPG video here")
            current: list[tuple[int, FaceFrame]] = []
            thickness = 0  # set from the first frame
            written = 0
            for number in range(video.frames):
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                seconds = (
                    number / video.fps if video.fps else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                )
                if sampled(number, seconds):
                    current = by_frame.get(number, [])
                thickness = thickness or line_thickness(frame)
                draw_faces(frame, current, thickness)
                writer.write(frame)
                written += 1
        finally:
            writer.release()
            capture.release()
        _check_written(Path(name), written)

    return atomic_save(path, save, keep_existing=True)


def _check_written(path: Path, frames: int) -> None:
    """FerError unless the video file just written holds all its frames: OpenCV's writer
    reports no failed write (a full disk gives a truncated or empty file and only a warning on
    stderr), so the file is read back: an AVI's frame chunks counted from their headers (a
    tenth of a millisecond a frame), any other file's frames read (3 ms a 640x480 frame)."""
    from fercli.media.images import quiet_stderr
    from fercli.media.video import avi_frames_on_disk

    size = path.stat().st_size
    readable = avi_frames_on_disk(path)
    if readable is None:
        with quiet_stderr():
            capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            readable = 0
            while readable < frames and capture.isOpened() and capture.grab():
                readable += 1
        finally:
            capture.release()
    if readable < frames:
        raise FerError(
            f"only {readable} of its {frames} frames reached the disk ({size:,} bytes written; "
            "is the disk full?)"
        )


def draw_faces(frame: np.ndarray, faces: list[tuple[int, FaceFrame]], thickness: int) -> None:
    """Draw each (track id, face) on a BGR frame, in place: its box, and "#id label p" above it."""
    from fercli.media.drawing import labelled_box

    for track_id, face in faces:
        colour = TRACK_COLOURS[(track_id - 1) % len(TRACK_COLOURS)]
        label = face.smoothed_label or face.label
        probability = (face.smoothed or face.probabilities).get(label, 0.0)
        labelled_box(frame, face.box, f"#{track_id} {label} {probability:.2f}", colour, thickness)


def csv_header(
    classes: list[str],
    smoothed: bool = False,
    escape: Callable[[str], str] = str,
    model: bool = False,
) -> list[str]:
    """The header of the per-frame CSV of videos (fer predict --csv, fer live --record); model:
    a last column naming the model file."""
    header = [
        "path",
        "frame",
        "time",
        "track",
        "x",
        "y",
        "width",
        "height",
        "label",
        *(f"p_{escape(label)}" for label in classes),
    ]
    if smoothed:
        header += ["smoothed_label", *(f"smoothed_p_{escape(label)}" for label in classes)]
    return header + (["model"] if model else [])


def csv_row(
    path: str,
    track_id: int,
    face: FaceFrame,
    classes: list[str],
    smoothed: bool = False,
    escape: Callable[[str], str] = str,
    model: str | None = None,
) -> list:
    """One row of the per-frame CSV: one face in one analysed frame; model: the model file's
    path, in the last column (csv_header's model)."""
    row = [
        escape(path),
        face.frame,
        f"{face.time:.3f}",
        track_id,
        *face.box,
        escape(face.label),
        *(f"{face.probabilities[label]:.6f}" for label in classes),
    ]
    if smoothed:
        row += [
            escape(face.smoothed_label or ""),
            *(f"{(face.smoothed or {}).get(label, 0.0):.6f}" for label in classes),
        ]
    return row + ([escape(model)] if model is not None else [])


def image_rows(
    image: ImagePrediction, classes: list[str], escape: Callable[[str], str] = str
) -> list[list]:
    """An image's CSV rows: path, face number, box, label and probabilities for each face; one
    row with the rest empty for an image read without a face (an unreadable one: none, it is
    reported as skipped)."""
    if image.error is not None:
        return []
    if not image.faces:
        return [[escape(image.path), "", "", "", "", "", "", *([""] * len(classes))]]
    return [
        [
            escape(image.path),
            number,
            *face.box,
            escape(face.label),
            *(f"{face.probabilities[label]:.6f}" for label in classes),
        ]
        for number, face in enumerate(image.faces, start=1)
    ]


def csv_rows(media: MediaReport, escape: Callable[[str], str] = str) -> Iterator[list]:
    """fer predict --csv, the header first: one row per face of each photo (an image read
    without a face: one row with the rest empty) and, in a run with videos, one row per face
    per analysed frame, files in the order given. With videos every row has the frame, time
    and track columns (empty for a photo's face), and the face column (empty for a video's)
    when there are photos. The last column, model, names the model file that labelled the
    faces. escape: applied to the text of names (the CLI's printable escaping)."""
    classes = media.images.classes
    model = escape(media.images.model)
    if not media.videos:
        yield [
            "path",
            "face",
            "x",
            "y",
            "width",
            "height",
            "label",
            *(f"p_{escape(label)}" for label in classes),
            "model",
        ]
        for image in media.images.images:
            yield from ([*row, model] for row in image_rows(image, classes, escape))
        return
    images = media.images.images
    smoothed = any(video.smoothed for video in media.videos)
    header = csv_header(classes, smoothed, escape, model=True)
    if images:
        header.insert(1, "face")
    yield header
    for item in media.in_order():
        if isinstance(item, ImagePrediction):
            unsmoothed = [""] * (len(classes) + 1) if smoothed else []
            for row in image_rows(item, classes, escape):
                # No frame, time or track; no smoothed figures.
                yield [*row[:2], "", "", "", *row[2:], *unsmoothed, model]
            continue
        rows = sorted(
            ((face.frame, track.id, face) for track in item.tracks for face in track.frames),
            key=lambda row: row[:2],
        )
        for _, track, face in rows:
            row = csv_row(item.path, track, face, classes, smoothed, escape, media.images.model)
            if images:
                row.insert(1, "")
            yield row
