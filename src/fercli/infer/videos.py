"""Labelling a video file (fer predict on videos): its frames read as a stream, the faces
followed by the tracking pipeline (infer.tracking), labelled in batches, and each track's
probabilities optionally smoothed over time."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import FerError
from fercli.core.events import Progress, items
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
)
from fercli.media.images import MAX_PIXELS
from fercli.media.video import FrameReader, file_fps, open_video, reading_problem


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
) -> VideoPrediction:
    """Follow and classify every face of a video, frame by frame as it is read.

    Errors that concern this video are in the result's error (the frames read before a damaged
    part are kept); progress gets items events (frames read, of the frames in the video) as it
    goes. adapt: once the video is read, its faces are labelled again by the model adapted to
    them all (infer.adapt; as label_photos's adapt); FerError when there are too few distinct
    ones, as for photos.
    keep_best: the result's best
    holds each track's most confident face and its crop (--explain)."""
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
        pipeline = FramePipeline(
            model, options, result.interval, keep=bool(mode), keep_best=keep_best
        )
        if result.width * result.height > MAX_PIXELS:
            result.error = (
                f"video too large: {result.width}x{result.height} pixels a frame, limit "
                f"{MAX_PIXELS:,} pixels"
            )
            return result
        reader = FrameReader(
            capture,
            result.fps,
            frame_sampler(options, result.fps),
            result.width * result.height * 3,
        )
        last = _read_frames(reader, pipeline, result, declared, progress)
        _record_reading(result, pipeline, reader, declared, last)
        if mode:
            # Too few faces is a refusal, as for photos: never labels that were not adapted.
            result.adaptation = pipeline.relabel_adapted(str(path), mode)
        result.best = pipeline.best
        if progress:
            progress(items(reader.count, reader.count))
    finally:
        capture.release()
    if options.smooth > 0:
        for track in result.tracks:
            smooth_track(track, model.classes, options.smooth)
    result.seconds = time.perf_counter() - started
    return result


def _read_frames(
    reader: FrameReader,
    pipeline: FramePipeline,
    result: VideoPrediction,
    declared: int,
    progress: Progress | None,
) -> float:
    """Follow and classify the faces of every frame reader gives, classifying crops a batch at
    a time (result counts the frames analysed and takes the first one's size); progress gets
    items events (of declared frames) at most five times a second. Returns the last frame's
    time."""
    reported, last = 0.0, 0.0
    for number, seconds, frame in reader:
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
