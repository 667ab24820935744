"""Labelling a video file (fer predict on videos): its frames read as a stream, the faces
followed by the tracking pipeline (infer.tracking), labelled in batches, and each track's
probabilities optionally smoothed over time.

A long video is cut into contiguous parts, one a worker process (core.parallel), each part
read from its first frame (a seek) and followed from a fresh detection there; the parts'
tracks are then joined into the video's (tracking.join_tracks). Each later part begins on an
analysed frame on which one pass would run a full detection anyway, so the parts find the
faces, boxes and labels one pass finds (see part_starts). A part checks that its first frame
is the one the part before read next (a digest of the pixels): a seek that does not land on
its frame makes the video be read again in one pass."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import FerError
from fercli.core.events import Progress, items
from fercli.core.parallel import default_workers, notify, run_tasks
from fercli.faces.align import face_detector, landmark_predictor
from fercli.infer.adapt import adaptation_mode
from fercli.infer.model import FerModel
from fercli.infer.tracking import (
    CLASSIFY_BATCH,
    FaceFrame,
    FramePipeline,
    Track,
    VideoConfig,
    VideoPrediction,
    frame_sampler,
    join_tracks,
    keep_best_faces,
    keep_lost_seconds,
    relabel_adapted,
)
from fercli.media.images import MAX_PIXELS, single_threaded_opencv
from fercli.media.video import FrameReader, file_fps, open_video, reading_problem, stream_problem

# A video is labelled in parts on several workers when each part would have at least this many
# analysed frames. On a quiet machine two parts of 30 saved a third of the time, two of 15 a
# sixth; while other work holds the cores, parts gain nothing and cost up to a fifth more
# (docs/speed.md#videos).
PART_MIN_ANALYSED = 30
# Videos whose header declares more frames than this are read in one pass: the parts are
# planned by replaying the sampling over every declared frame, which an absurd header would
# make long.
PART_MAX_FRAMES = 5_000_000


def smooth_track(track: Track, classes: list[str], seconds: float) -> None:
    """Average each frame's probabilities with those of the track's frames at most seconds / 2
    before or after it (a centred moving average); sets smoothed and smoothed_label."""
    if not track.frames:
        return
    times = np.array([face.time for face in track.frames])
    values = np.array([[face.probabilities[label] for label in classes] for face in track.frames])
    sums = np.vstack([np.zeros(len(classes)), np.cumsum(values, axis=0)])
    start = np.searchsorted(times, times - seconds / 2 - 1e-9, side="left")
    end = np.searchsorted(times, times + seconds / 2 + 1e-9, side="right")
    means = (sums[end] - sums[start]) / (end - start)[:, None]
    for face, row in zip(track.frames, means, strict=True):
        face.smoothed = {label: round(float(p), 6) for label, p in zip(classes, row, strict=True)}
        face.smoothed_label = classes[int(np.argmax(row))]


class TrailingSmoother:
    """--smooth for a live source (fer live): each track's probabilities averaged over its
    frames of the last seconds, this one included. A trailing window, where fer predict's
    (smooth_track) is centred: the frames after this one have not been read yet."""

    def __init__(self, classes: list[str], seconds: float) -> None:
        self.classes = classes
        self.seconds = seconds
        self.recent: dict[int, deque[tuple[float, np.ndarray]]] = {}

    def smooth(self, faces: list[tuple[int, FaceFrame]], seconds: float) -> None:
        """Set smoothed and smoothed_label of each (track id, face) of the frame at seconds;
        tracks not seen within the window are forgotten (a live source runs for hours)."""
        start = seconds - self.seconds - 1e-9
        for track_id, face in faces:
            window = self.recent.setdefault(track_id, deque())
            window.append(
                (seconds, np.array([face.probabilities[label] for label in self.classes]))
            )
            while window[0][0] < start:
                window.popleft()
            mean = np.mean([values for _, values in window], axis=0)
            face.smoothed = {
                label: round(float(p), 6) for label, p in zip(self.classes, mean, strict=True)
            }
            face.smoothed_label = self.classes[int(np.argmax(mean))]
        for track_id in [key for key, window in self.recent.items() if window[-1][0] < start]:
            del self.recent[track_id]


def _read_header(capture, result: VideoPrediction, options: VideoConfig) -> int:
    """The video's rate, size and analysis interval into result, as its header gives them;
    returns the frame count it declares (0 where it does not)."""
    fps, result.note = file_fps(capture.get(cv2.CAP_PROP_FPS))
    result.fps = round(fps, 3)
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    result.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    result.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if options.fps:
        result.interval = 1.0 / options.fps
    else:
        result.interval = options.every / result.fps if result.fps else 0.0
    return int(declared) if math.isfinite(declared) and declared > 0 else 0


def label_video(
    path: Path,
    model: FerModel,
    options: VideoConfig = VideoConfig(),
    progress: Progress | None = None,
    adapt: bool | str = False,
    keep_best: bool = False,
    workers: int | None = None,
) -> VideoPrediction:
    """Follow and classify every face of a video, frame by frame as it is read.

    Errors that concern this video are in the result's error (the frames read before a damaged
    part are kept); progress gets items events (frames read, of the frames in the video) as it
    goes. adapt: once the video is read, its faces are labelled again by the model adapted to
    them all (infer.adapt; as label_photos's adapt); FerError when there are too few distinct
    ones, as for photos.
    keep_best: the result's best
    holds each track's most confident face and its crop (--explain). workers: processes for a
    long video, one part each (default: one per core; see part_starts)."""
    mode = adaptation_mode(adapt)
    result = VideoPrediction(path=str(path), smoothed=options.smooth > 0, options=options)
    started = time.perf_counter()
    try:
        capture = open_video(Path(path))
    except FerError as error:
        result.error = str(error)
        return result
    try:
        declared = _read_header(capture, result, options)
        if result.width * result.height > MAX_PIXELS:
            result.error = (
                f"video too large: {result.width}x{result.height} pixels a frame, limit "
                f"{MAX_PIXELS:,} pixels"
            )
            return result
        starts = part_starts(declared, result.fps, options, workers or default_workers())
        if len(starts) > 1:
            capture.release()  # the workers open their own
            if _label_parts(Path(path), model, result, starts, declared, mode, keep_best, progress):
                starts = []
            else:  # a seek that did not land on its frame: one pass instead
                capture = _reopened(Path(path), result)
        if starts and capture is not None:
            _label_stream(capture, model, result, declared, mode, keep_best, progress)
    finally:
        if capture is not None:
            capture.release()
    if options.smooth > 0:
        for track in result.tracks:
            smooth_track(track, model.classes, options.smooth)
    result.seconds = time.perf_counter() - started
    return result


def _reopened(path: Path, result: VideoPrediction):
    """The video opened again, or None with result.error saying why it no longer opens."""
    try:
        return open_video(path)
    except FerError as error:
        result.error = str(error)
        return None


def _label_stream(
    capture,
    model: FerModel,
    result: VideoPrediction,
    declared: int,
    mode: str | None,
    keep_best: bool,
    progress: Progress | None,
) -> None:
    """label_video in one pass over capture, into result (its header read already)."""
    pipeline = FramePipeline(
        model, result.options, result.interval, keep=bool(mode), keep_best=keep_best
    )
    reader = FrameReader(
        capture,
        result.fps,
        frame_sampler(result.options, result.fps),
        result.width * result.height * 3,
    )
    last = _read_frames(reader, pipeline, result, declared, progress)
    _record_reading(result, pipeline, reader, declared, last)
    if mode:
        # Too few faces is a refusal, as for photos: never labels that were not adapted.
        result.adaptation = pipeline.relabel_adapted(str(result.path), mode)
    result.best = pipeline.best
    if progress:
        progress(items(reader.count, reader.count))


def part_starts(declared: int, fps: float | None, options: VideoConfig, workers: int) -> list[int]:
    """The frames at which the parts of a video begin, one part a worker: [0] (one pass) for
    one worker, a video that does not declare its frame count, or one with fewer than
    PART_MIN_ANALYSED frames to analyse a worker.

    Each later part begins on an analysed frame a whole number of detect_every analysed
    frames from the start, where one pass runs a full detection too (the schedule is kept
    whatever detections lost faces add): a part then finds the faces, boxes and labels one
    pass finds, and join_tracks gives them one pass's ids. Only the probabilities may differ,
    in the sixth decimal: the network takes faces 16 at a time, and a part's last faces are
    grouped otherwise."""
    if workers < 2 or not fps or not 0 < declared <= PART_MAX_FRAMES:
        return [0]
    wanted = frame_sampler(options, fps)
    analysed = [number for number in range(declared) if wanted(number, number / fps)]
    parts = min(workers, len(analysed) // PART_MIN_ANALYSED)
    step = options.detect_every
    starts = [0]
    for part in range(1, parts):
        index = round(part * len(analysed) / parts / step) * step
        if 0 < index < len(analysed) and analysed[index] > starts[-1]:
            starts.append(analysed[index])
    return starts


@dataclass
class VideoPart:
    """What one worker found in one part of a video (label_video on several cores)."""

    start: int  # the number of its first frame
    moved: bool = True  # whether the video opened and could be moved to start
    count: int = 0  # frames read
    analysed: int = 0
    width: int = 0  # of its first frame analysed
    height: int = 0
    last: float = 0.0  # time of the last frame read
    failure: str | None = None  # why the decoder stopped, if it failed
    detections: int = 0
    tracks: list[Track] = field(default_factory=list)  # with ids from 1
    # Digests of its first frame, and of the frame after its last (the next part's first).
    first: str | None = None
    after: str | None = None
    # As FramePipeline's kept (adapt) and best (keep_best), by the part's track ids.
    kept: list[tuple[int, FaceFrame, np.ndarray]] | None = None
    best: dict[int, tuple[FaceFrame, np.ndarray]] = field(default_factory=dict)


def _digest(frame: np.ndarray | None) -> str | None:
    return None if frame is None else hashlib.blake2b(frame.tobytes(), digest_size=16).hexdigest()


def _label_part(
    span: tuple[int, int, int | None],
    path: str,
    model: FerModel,
    options: VideoConfig,
    fps: float,
    interval: float,
    frame_bytes: int,
    keep: bool,
    keep_best: bool,
    report: bool,
) -> VideoPart:
    """One part of a video, in a worker: span is (index, first frame, frames to read or None
    for the rest); the frames are followed as one pass would from a fresh detection there.
    report: progress goes to the caller as (index, frames read) messages (core.parallel)."""
    index, start, limit = span
    part = VideoPart(start=start)
    try:
        capture = open_video(Path(path))
    except FerError:  # gone since the caller opened it: the caller's one pass says so
        part.moved = False
        return part
    try:
        if start and not capture.set(cv2.CAP_PROP_POS_FRAMES, start):
            part.moved = False
            return part
        wanted = frame_sampler(options, fps)
        for number in range(start):  # --fps's sampler has state: as one pass leaves it
            wanted(number, number / fps)
        pipeline = FramePipeline(model, options, interval, keep=keep, keep_best=keep_best)
        reader = FrameReader(capture, fps, wanted, frame_bytes, start, limit)
        seen = VideoPrediction(path=path, options=options)
        progress = (lambda event: notify((index, event.done))) if report else None
        part.last = _read_frames(reader, pipeline, seen, 0, progress, _first_digested(reader, part))
        if limit is not None and reader.count == limit and not reader.failure:
            ok, frame = capture.read()
            part.after = _digest(frame if ok else None)
    finally:
        capture.release()
    part.count, part.failure, part.analysed = reader.count, reader.failure, seen.analysed
    part.width, part.height = seen.width, seen.height
    part.detections = pipeline.tracker.detections
    part.tracks = [track for track in pipeline.tracker.tracks if track.frames]
    part.kept, part.best = pipeline.kept, pipeline.best
    return part


def _first_digested(
    frames: Iterable[tuple[int, float, np.ndarray]], part: VideoPart
) -> Iterator[tuple[int, float, np.ndarray]]:
    """frames, with the digest of the part's first frame into part.first."""
    for item in frames:
        if item[0] == part.start:
            part.first = _digest(item[2])
        yield item


def _label_parts(
    path: Path,
    model: FerModel,
    result: VideoPrediction,
    starts: list[int],
    declared: int,
    mode: str | None,
    keep_best: bool,
    progress: Progress | None,
) -> bool:
    """label_video in parts beginning at starts, one worker each, into result; False (result
    as it was) when a part's first frame is not the frame one pass reads there (a seek that is
    not frame-exact), for a pass instead."""
    # dlib's models loaded here, which forked workers share, rather than in each worker.
    face_detector()
    landmark_predictor()
    ends = [*starts[1:], None]
    spans = [
        (index, start, None if end is None else end - start)
        for index, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]
    work = partial(
        _label_part,
        path=str(path),
        model=model,
        options=result.options,
        fps=result.fps,
        interval=result.interval,
        frame_bytes=result.width * result.height * 3,
        keep=bool(mode),
        keep_best=keep_best,
        report=progress is not None,
    )
    read = [0] * len(spans)

    def on_message(message: tuple[int, int]) -> None:
        read[message[0]] = message[1]
        progress(items(sum(read), max(declared, sum(read))))

    with closing(
        run_tasks(
            work,
            spans,
            len(spans),
            initializer=single_threaded_opencv,
            in_process=False,
            on_message=on_message if progress else None,
        )
    ) as results:
        parts = _contiguous(list(results))
    if not all(part.moved for part in parts) or any(
        before.after != after.first for before, after in zip(parts, parts[1:], strict=False)
    ):
        return False
    result.workers = len(spans)
    _record_parts(result, parts, declared, model, mode, keep_best)
    if progress:
        progress(items(result.frames, result.frames))
    return True


def _contiguous(parts: list[VideoPart]) -> list[VideoPart]:
    """The parts one pass would have read: up to the first that ends before the next begins
    (the video ended, or the decoder failed there) or fails."""
    taken = parts[:1]
    for part in parts[1:]:
        before = taken[-1]
        if before.failure or before.start + before.count != part.start:
            break
        taken.append(part)
    return taken


def _record_parts(
    result: VideoPrediction,
    parts: list[VideoPart],
    declared: int,
    model: FerModel,
    mode: str | None,
    keep_best: bool,
) -> None:
    """What the parts read, into result, as _record_reading records one pass: their tracks
    joined, the frames and detections added up, any problem reading; then --adapt's labels
    and each track's best face, by the joined ids."""
    keep_lost = keep_lost_seconds(result.options, result.interval)
    result.tracks, ids = join_tracks(
        [part.tracks for part in parts], [part.start / result.fps for part in parts], keep_lost
    )
    result.frames = sum(part.count for part in parts)
    result.analysed = sum(part.analysed for part in parts)
    result.detections = sum(part.detections for part in parts)
    if result.analysed:
        result.width, result.height = parts[0].width, parts[0].height
    result.error = stream_problem(result.frames, parts[-1].failure, declared)
    if result.interval == 0.0 and result.analysed > 1:
        result.interval = parts[-1].last / (result.analysed - 1)  # as _record_reading
    kept = [
        (joined[track_id], record, crop)
        for part, joined in zip(parts, ids, strict=True)
        for track_id, record, crop in part.kept or []
    ]
    if mode:
        result.adaptation = relabel_adapted(model, kept, result.path, mode)
    result.best = {}
    if keep_best:
        for faces in (
            [kept]
            if mode
            else [
                [(joined[track_id], *best) for track_id, best in part.best.items()]
                for part, joined in zip(parts, ids, strict=True)
            ]
        ):
            keep_best_faces(result.best, faces)


def _read_frames(
    reader: FrameReader,
    pipeline: FramePipeline,
    result: VideoPrediction,
    declared: int,
    progress: Progress | None,
    frames: Iterable[tuple[int, float, np.ndarray]] | None = None,
) -> float:
    """Follow and classify the faces of every frame reader gives (or frames, reader's frames
    passed on), classifying crops a batch at a time (result counts the frames analysed and
    takes the first one's size); progress gets items events (of declared frames) at most five
    times a second. Returns the last frame's time."""
    reported, last = 0.0, 0.0
    for number, seconds, frame in reader if frames is None else frames:
        last = seconds
        # The header's size may be missing; the frame's is what was drawn on.
        if not result.analysed:
            result.height, result.width = frame.shape[:2]
        pipeline.step(frame, number, seconds)
        result.analysed += 1
        if len(pipeline.waiting) >= CLASSIFY_BATCH:
            pipeline.label_crops()
        if progress and time.perf_counter() - reported > 0.2:
            progress(items(reader.count, max(declared, reader.count)))
            reported = time.perf_counter()
    pipeline.label_crops()
    return last


def _record_reading(
    result: VideoPrediction,
    pipeline: FramePipeline,
    reader: FrameReader,
    declared: int,
    last: float,
) -> None:
    """What reading the video gave, into result: the frames read, the tracks that have frames,
    the detections, any problem reading (of declared frames), and without a frame rate the
    interval between frames from their times (last: the last frame's)."""
    result.frames = reader.count
    result.tracks = [track for track in pipeline.tracker.tracks if track.frames]
    result.detections = pipeline.tracker.detections
    result.error = reading_problem(reader, declared)
    if result.interval == 0.0 and result.analysed > 1:
        result.interval = last / (result.analysed - 1)  # no frame rate: times from the stream
