"""fer predict on videos: faces followed from frame to frame, expressions over time.

Frames are read as a stream (cv2.VideoCapture, one frame at a time, a few decoded ahead by a
reader thread), so memory does not grow with the length of the video. Each face becomes a
track with an id. A full face detection runs every few analysed frames (and whenever a track
is lost); in between, a face's landmarks are found from its box in the previous analysed
frame, which costs a sixth of a detection. Library code: plain records out, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.core.settings import check_settings, setting
from fercli.faces.align import face_detector, landmark_predictor
from fercli.faces.pipeline import align_frame_faces, frame_boxes
from fercli.infer.adapt import DEFAULT_PIXEL_MAP, Adaptation, adapt_model
from fercli.infer.model import FerModel
from fercli.media.images import bgr_to_gray

# Frames are searched for faces as fercli.faces.pipeline.frame_boxes says, and the faces found
# or followed are aligned by its align_frame_faces, the step photos' faces go through too.

# A tracked face whose crop correlates less than this with its crop in the previous analysed
# frame is taken as lost (the landmark predictor always answers, even where the face has gone).
# On the benchmark's moving face: 0.96 or more a frame later; a third of a second later
# (--every 10) 0.43 at the least and above 0.58 in 99% of frames.
SAME_FACE_CORRELATION = 0.5
# A detection continues a track when its centre lies within this share of the face's width
# of the track's last box, and its width differs by less than MATCH_SIZE times: boxes that
# overlap hardly at all when frames are analysed far apart (--every 10: a moving face moves
# half its width, and the box followed by landmarks drifts) still match; the centres of two
# people side by side are a face's width apart or more.
MATCH_DISTANCE = 0.8
MATCH_SIZE = 2.0
# A track lost (the face not found where it was) is continued by a face detected near where it
# was last seen for this many seconds after, or two full detections' time if that is longer
# (frames analysed far apart): a face hidden for a moment, or missed by one detection, keeps
# its id.
KEEP_LOST_SECONDS = 1.0
# Crops classified in one forward pass.
CLASSIFY_BATCH = 64


@dataclass(frozen=True)
class VideoConfig:
    """How a video is sampled, tracked and smoothed; checks itself (core.settings.setting)."""

    # Analyse one frame in every this many (1: every frame).
    every: int = setting(1, "--every", low=1, high=1_000_000)
    # Analyse this many frames a second of video instead (None: use every). Bounded: at 1e308
    # a second, a frame's time slot (1/fps) is too small to count frames' times in.
    fps: float | None = setting(None, "--fps", kind=float, low=0.0, above_low=True, high=1_000_000)
    # A full face detection every this many analysed frames; in between, faces are followed
    # by their landmarks. 1: detect on every analysed frame.
    detect_every: int = setting(5, "--detect-every", low=1, high=1_000_000)
    # Smooth each track's probabilities over a window of this many seconds (0: off).
    smooth: float = setting(0.0, "--smooth", low=0.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class FaceFrame:
    """One face in one analysed frame."""

    frame: int  # frame number in the video, from 0
    time: float  # seconds from the start
    box: tuple[int, int, int, int]  # x, y, width, height
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    # With --smooth: the probabilities averaged over the window, and their label.
    smoothed: dict[str, float] | None = None
    smoothed_label: str | None = None

    def to_json(self) -> dict:
        data = {
            "frame": self.frame,
            "time": round(self.time, 3),
            "box": list(self.box),
            "label": self.label,
            "probabilities": self.probabilities,
        }
        if self.smoothed is not None:
            data["smoothed_label"] = self.smoothed_label
            data["smoothed_probabilities"] = self.smoothed
        return data


@dataclass
class Track:
    """One person, followed from frame to frame."""

    id: int
    frames: list[FaceFrame] = field(default_factory=list)

    def summary(self, classes: list[str], interval: float) -> dict:
        """Frames seen, seconds on screen (each analysed frame standing for interval seconds),
        first and last time seen, and the share of frames of each label (smoothed if any)."""
        labels = [face.smoothed_label or face.label for face in self.frames]
        count = len(labels)
        return {
            "frames_seen": count,
            "seconds": round(count * interval, 3),
            "first": round(self.frames[0].time, 3) if count else None,
            "last": round(self.frames[-1].time, 3) if count else None,
            "shares": {
                label: round(labels.count(label) / count, 4) if count else 0.0 for label in classes
            },
        }


@dataclass
class VideoPrediction:
    """What label_video found in one video."""

    path: str
    fps: float | None = None  # frames a second, as the file says
    frames: int = 0  # frames read (before any damage)
    analysed: int = 0  # frames analysed
    width: int = 0
    height: int = 0
    interval: float = 0.0  # seconds of video each analysed frame stands for
    tracks: list[Track] = field(default_factory=list)
    # Why the video could not be read, or where reading stopped (the frames before are kept).
    error: str | None = None
    note: str | None = None  # what the user should know (an absurd declared frame rate)
    seconds: float = 0.0  # time the analysis took
    detections: int = 0  # full face detections run
    workers: int = 1  # processes that read it, a part each (infer.videos.part_starts)
    smoothed: bool = False
    options: VideoConfig = field(default_factory=VideoConfig)  # how it was sampled
    adaptation: Adaptation | None = None  # --adapt: re-estimated from this video's faces
    # With keep_best: each track's most confident analysed face and its aligned crop, by id.
    best: dict[int, tuple[FaceFrame, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def processed(self) -> bool:
        return self.analysed > 0

    def to_json(self, classes: list[str]) -> dict:
        data = {
            "path": self.path,
            "fps": self.fps,
            "frames": self.frames,
            "analysed": self.analysed,
            "width": self.width,
            "height": self.height,
            "tracks": [
                {
                    "id": track.id,
                    **track.summary(classes, self.interval),
                    "frames": [face.to_json() for face in track.frames],
                }
                for track in self.tracks
            ],
        }
        if self.error:
            data["error"] = self.error
        if self.note:
            data["note"] = self.note
        if self.adaptation:
            data["adapted"] = self.adaptation.to_json()
        return data


def frame_sampler(options: VideoConfig, fps: float | None) -> Callable[[int, float], bool]:
    """wanted(number, seconds): whether a frame is analysed under --every / --fps."""
    if options.fps:
        step = 1.0 / options.fps
        state = {"next": 0.0}

        def by_time(number: int, seconds: float) -> bool:
            if seconds + 1e-9 < state["next"]:
                return False
            # The next sample is one step after this one's time slot, not after this frame, so
            # that the rate does not drift below the one asked for.
            state["next"] = (math.floor(seconds / step + 1e-9) + 1) * step
            return True

        return by_time
    return lambda number, seconds: number % options.every == 0


def _distance(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """How far apart two (x0, y0, x1, y1) boxes are, for matching: the distance of their
    centres in face widths (their mean width); infinite for boxes of too different sizes."""
    width_a, width_b = a[2] - a[0], b[2] - b[0]
    if min(width_a, width_b) <= 0 or max(width_a, width_b) > MATCH_SIZE * min(width_a, width_b):
        return math.inf
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    return math.hypot(dx, dy) / ((width_a + width_b) / 2)


def keep_lost_seconds(options: VideoConfig, interval: float) -> float:
    """How long after a track is lost a face detected near it still continues it (see
    KEEP_LOST_SECONDS); interval: seconds between analysed frames."""
    return max(KEEP_LOST_SECONDS, 2 * options.detect_every * interval)


def _corners(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """A record's (x, y, width, height) box as (x0, y0, x1, y1)."""
    return box[0], box[1], box[0] + box[2], box[1] + box[3]


def join_tracks(
    parts: list[list[Track]], starts: list[float], keep_lost: float
) -> tuple[list[Track], list[dict[int, int]]]:
    """The tracks of consecutive parts of one video as one video's, each part followed from a
    fresh detection at its first analysed frame (at starts[k] seconds) with ids from 1.

    A part's track that begins within keep_lost seconds of its part's start continues a track
    of the earlier parts last seen at most keep_lost seconds before it begins, if it begins
    near where that one was last seen: the rule by which _Tracker continues a track, active or
    lost, with a detection (nearest first, MATCH_DISTANCE), the earliest beginnings first.
    The other tracks get the next ids, in the order they began, as they would in one pass.
    Returns the joined tracks and, for each part, {its track id: the joined track's id}."""
    joined: list[Track] = []
    mappings: list[dict[int, int]] = []
    for tracks, start in zip(parts, starts, strict=True):
        mapping: dict[int, int] = {}
        early = [track for track in tracks if track.frames[0].time - start <= keep_lost]
        for begins in sorted({track.frames[0].time for track in early}) if joined else []:
            group = [track for track in early if track.frames[0].time == begins]
            candidates = [
                track
                for track in joined
                if track.id not in mapping.values()
                and track.frames[-1].time < start
                and begins - track.frames[-1].time <= keep_lost
            ]
            pairs = sorted(
                (_distance(_corners(old.frames[-1].box), _corners(new.frames[0].box)), o, n)
                for o, old in enumerate(candidates)
                for n, new in enumerate(group)
            )
            taken_old, taken_new = set(), set()
            for distance, o, n in pairs:
                if distance > MATCH_DISTANCE or o in taken_old or n in taken_new:
                    continue
                taken_old.add(o)
                taken_new.add(n)
                mapping[group[n].id] = candidates[o].id
        for track in tracks:
            if track.id in mapping:
                joined[mapping[track.id] - 1].frames.extend(track.frames)
            else:
                joined.append(Track(id=len(joined) + 1, frames=list(track.frames)))
                mapping[track.id] = len(joined)
        mappings.append(mapping)
    return joined, mappings


@dataclass
class _Follow:
    """What following one track needs from frame to frame."""

    track: Track
    box: tuple[float, float, float, float]  # x0, y0, x1, y1: where to look for the landmarks next
    # The detector box relative to the landmarks' bounding box (left, top, width, height as
    # shares of it), learnt at the last detection: boxes made from landmarks then look like
    # the detector's, which is what the landmark predictor was trained on.
    relation: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    # The last crop, z-scored, to tell whether the face is still there.
    crop: np.ndarray | None = None


def _landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    return float(x0), float(y0), float(max(x1 - x0, 1)), float(max(y1 - y0, 1))


def _relation(box, landmarks: np.ndarray) -> tuple[float, float, float, float]:
    lx, ly, lw, lh = _landmark_box(landmarks)
    return (box[0] - lx) / lw, (box[1] - ly) / lh, (box[2] - box[0]) / lw, (box[3] - box[1]) / lh


def _box_from(landmarks: np.ndarray, relation) -> tuple[float, float, float, float]:
    lx, ly, lw, lh = _landmark_box(landmarks)
    x0, y0 = lx + relation[0] * lw, ly + relation[1] * lh
    return x0, y0, x0 + relation[2] * lw, y0 + relation[3] * lh


def _zscored(crop: np.ndarray) -> np.ndarray:
    values = crop.astype(np.float32).ravel()
    values -= values.mean()
    spread = float(np.sqrt((values**2).mean()))
    return values / spread if spread > 0 else values


def _clipped(box, width: int, height: int) -> tuple[int, int, int, int]:
    """An (x0, y0, x1, y1) box as (x, y, width, height) inside the frame."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(width, round(box[2]) + 1), min(height, round(box[3]) + 1)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class _Tracker:
    """Faces of successive analysed frames -> tracks (detection, landmark following, matching)."""

    def __init__(self, config: PreprocessConfig, options: VideoConfig, interval: float) -> None:
        """interval: seconds between analysed frames."""
        self.config = config
        self.options = options
        self.keep_lost = keep_lost_seconds(options, interval)
        # Both of dlib's models loaded now, not at the first frame.
        face_detector()
        landmark_predictor()
        self.active: list[_Follow] = []
        self.lost: list[tuple[_Follow, float]] = []  # tracks lost lately, and when
        self.tracks: list[Track] = []
        self.analysed = 0  # frames stepped
        self.detections = 0

    def _detect(self, gray: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes (x0, y0, x1, y1) in the frame."""
        self.detections += 1
        return frame_boxes(gray, self.config)

    def _align(self, gray: np.ndarray, boxes: list) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """(landmarks, crop) of the face in each box, None where the landmarks outline none."""
        return [
            None if face is None else (face.landmarks, face.crop)
            for face in align_frame_faces(gray, boxes, self.config)
        ]

    def step(
        self, gray: np.ndarray, frame: int, seconds: float
    ) -> list[tuple[FaceFrame, np.ndarray]]:
        """The faces of one analysed frame, each added to its track: (record, crop) pairs, the
        records still without probabilities."""
        height, width = gray.shape
        results: list[tuple[_Follow, tuple, np.ndarray, np.ndarray]] = []
        lost = False
        # With no face in sight, detection too runs only every detect_every frames: a face
        # coming in is found a few frames late, a video without faces stays cheap. The
        # schedule counts from the first frame, whatever detections a lost face added: a part
        # of a video that begins on a scheduled frame (infer.videos.part_starts) then detects
        # where one pass over the whole video does.
        detect = self.analysed % self.options.detect_every == 0
        self.analysed += 1
        if not detect:
            # Follow each face from where it was: its landmarks from its previous box.
            for follow, found in zip(
                self.active, self._align(gray, [follow.box for follow in self.active]), strict=True
            ):
                if found is None:
                    lost = True
                    continue
                landmarks, crop = found
                scored = _zscored(crop)
                if (
                    follow.crop is not None
                    and float(scored @ follow.crop) / scored.size < SAME_FACE_CORRELATION
                ):
                    lost = True
                    continue
                results.append((follow, _box_from(landmarks, follow.relation), landmarks, crop))
        if detect or lost:
            results = self._detect_and_match(gray, seconds)
        faces = []
        for follow, box, landmarks, crop in results:
            follow.box = box
            follow.crop = _zscored(crop)
            record = FaceFrame(frame=frame, time=seconds, box=_clipped(box, width, height))
            follow.track.frames.append(record)
            faces.append((record, crop))
        self.active = [follow for follow, _, _, _ in results]
        return faces

    def _detect_and_match(self, gray: np.ndarray, seconds: float) -> list:
        boxes = self._detect(gray)
        aligned = [
            (box, found)
            for box, found in zip(boxes, self._align(gray, boxes), strict=True)
            if found is not None
        ]
        self.lost = [
            (follow, when) for follow, when in self.lost if seconds - when <= self.keep_lost
        ]
        candidates = self.active + [follow for follow, _ in self.lost]
        # Greedy matching, nearest first: each detection continues at most one track.
        pairs = sorted(
            (_distance(follow.box, box), f, d)
            for f, follow in enumerate(candidates)
            for d, (box, _) in enumerate(aligned)
        )
        taken_tracks, taken_faces, matched = set(), set(), {}
        for distance, f, d in pairs:
            if distance > MATCH_DISTANCE or f in taken_tracks or d in taken_faces:
                continue
            taken_tracks.add(f)
            taken_faces.add(d)
            matched[d] = candidates[f]
        continued = {id(follow) for follow in matched.values()}
        self.lost = [(follow, when) for follow, when in self.lost if id(follow) not in continued]
        self.lost += [(follow, seconds) for follow in self.active if id(follow) not in continued]
        results = []
        for d, (box, (landmarks, crop)) in enumerate(aligned):
            follow = matched.get(d)
            if follow is None:
                track = Track(id=len(self.tracks) + 1)
                self.tracks.append(track)
                follow = _Follow(track=track, box=box)
            follow.relation = _relation(box, landmarks)
            results.append((follow, box, landmarks, crop))
        return results


def _label_waiting(waiting: list[tuple[FaceFrame, np.ndarray]], model: FerModel) -> None:
    """Fill in the label and probabilities of waiting faces, in one forward pass."""
    from fercli.core.errors import ModelError

    if not waiting:
        return
    probabilities = model.predict_proba(np.stack([crop for _, crop in waiting]))
    if not np.all(np.isfinite(probabilities)):
        raise ModelError(
            f"{model.path}: damaged model file (its probabilities for a face are not finite "
            "numbers)"
        )
    for (record, _), row in zip(waiting, probabilities, strict=True):
        record.label = model.classes[int(np.argmax(row))]
        record.probabilities = {
            label: round(float(p), 6) for label, p in zip(model.classes, row, strict=True)
        }
    waiting.clear()


class FramePipeline:
    """The per-frame step shared by fer predict on videos and fer live: a frame in, its faces
    followed (tracks, landmarks from the previous box, detection every few frames) and queued
    for classification; label_crops() labels the queued faces in one forward pass."""

    def __init__(
        self,
        model: FerModel,
        options: VideoConfig,
        interval: float,
        keep: bool = False,
        keep_best: bool = False,
    ) -> None:
        """interval: seconds between analysed frames. keep: every face's crop is kept (in
        kept) after it is labelled, to label them all again (--adapt). keep_best: keep in best
        each track's most confident face and its crop, by track id (--explain)."""
        self.model = model
        self.tracker = _Tracker(model.preprocess, options, interval)
        self.waiting: list[tuple[FaceFrame, np.ndarray]] = []
        self.waiting_tracks: list[int] = []
        self.kept: list[tuple[int, FaceFrame, np.ndarray]] | None = [] if keep else None
        self.keep_best = keep_best
        self.best: dict[int, tuple[FaceFrame, np.ndarray]] = {}

    def step(self, frame: np.ndarray, number: int, seconds: float) -> list[tuple[int, FaceFrame]]:
        """The faces of one frame (BGR or grey) as (track id, record) pairs; the records get
        their labels at the next label_crops()."""
        # As a photo of the frame would be read, so that both find the same faces.
        gray = bgr_to_gray(frame) if frame.ndim == 3 else frame
        faces = self.tracker.step(gray, number, seconds)
        self.waiting += faces
        # step() leaves the faces' tracks in tracker.active, in the order of the faces.
        ids = [follow.track.id for follow in self.tracker.active]
        self.waiting_tracks += ids
        return list(zip(ids, [record for record, _ in faces], strict=True))

    def label_crops(self) -> None:
        pending = [
            (track_id, record, crop)
            for track_id, (record, crop) in zip(self.waiting_tracks, self.waiting, strict=True)
        ]
        _label_waiting(self.waiting, self.model)
        self.waiting_tracks = []
        if self.kept is not None:
            self.kept += pending
        self._keep_best(pending)

    def _keep_best(self, labelled: list[tuple[int, FaceFrame, np.ndarray]]) -> None:
        if self.keep_best:
            keep_best_faces(self.best, labelled)

    def relabel_adapted(self, where: str, pixels: str = DEFAULT_PIXEL_MAP) -> Adaptation:
        """Every kept face labelled again by the model adapted to all of them (--adapt; pixels:
        how, see adapt_model); FerError when there are too few distinct ones (where: the
        video, for the message)."""
        self.label_crops()
        adaptation = relabel_adapted(self.model, self.kept, where, pixels)
        self.best = {}
        self._keep_best(self.kept)
        return adaptation


def relabel_adapted(
    model: FerModel,
    kept: list[tuple[int, FaceFrame, np.ndarray]],
    where: str,
    pixels: str = DEFAULT_PIXEL_MAP,
) -> Adaptation:
    """Every kept (track id, face, crop) labelled again by the model adapted to all of them
    (FramePipeline.relabel_adapted, which keeps them)."""
    crops = np.array([crop for _, _, crop in kept])
    adapted, adaptation = adapt_model(model, crops, where=where, pixels=pixels)
    _label_waiting([(record, crop) for _, record, crop in kept], adapted)
    return adaptation


def keep_best_faces(
    best: dict[int, tuple[FaceFrame, np.ndarray]],
    labelled: list[tuple[int, FaceFrame, np.ndarray]],
) -> None:
    """Keep in best each track's most confident labelled face and its crop, by track id (the
    earliest of equally confident ones)."""
    for track_id, record, crop in labelled:
        kept = best.get(track_id)
        if kept is None or _confidence(record) > _confidence(kept[0]):
            best[track_id] = (record, crop)


def _confidence(face: FaceFrame) -> float:
    return face.probabilities[face.label]
