"""fer live: a camera, video file or stream labelled as it plays, for a local web page.

A thread reads the source, runs each frame through the same per-frame step as fer predict on
videos (infer.tracking.FramePipeline: tracks, landmarks from the previous box, detection
every few frames), draws the faces and keeps the latest frame as JPEG with the faces' probabilities.
The web server (fercli.web.server) only reads that state. Library code: no printing.
"""

from __future__ import annotations

import csv
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import FerError
from fercli.core.settings import check_settings, setting
from fercli.infer.files import csv_header, csv_row, draw_faces
from fercli.infer.model import FerModel
from fercli.infer.tracking import FramePipeline, VideoConfig
from fercli.infer.videos import TrailingSmoother
from fercli.media.drawing import line_thickness
from fercli.media.images import MAX_PIXELS
from fercli.media.video import file_fps

# How long opening or reading a stream URL may take before it is given up (OpenCV's FFmpeg
# back end honours these; a camera or file opens at once or not at all).
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
# JPEG quality of the frames sent: 80 keeps a 640x480 frame near 40 kB.
JPEG_QUALITY = 80
# A camera that gives no frame this many times in a row has gone (unplugged, taken away).
FAILED_READS = 25
# The frame rate shown is measured over this many seconds.
RATE_WINDOW = 2.0


# Camera indexes OpenCV takes (a larger number is not a camera and overflows its int).
MAX_CAMERA_INDEX = 9999
# A camera's or stream's rate above this is not believed (a file's: media.video.file_fps).
MAX_FPS = 1000.0


# Query parameters whose values are hidden when a stream URL is shown: any whose name holds one
# of these (pwd, password, access_token, api_key, X-Auth, user, ...).
SECRET_PARAMETERS = (
    "pass",
    "pwd",
    "token",
    "key",
    "secret",
    "auth",
    "sig",
    "cred",
    "user",
    "login",
)


def redact(source: str) -> str:
    """A source as it may be shown: a URL's user name and password (rtsp://user:pass@host/)
    and the values of its query parameters that may be credentials (?user=admin&pwd=...)
    replaced by ***, the rest as it was given, so that credentials never leave the process."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(source)
    except ValueError:  # an unbalanced [ in the host: shown without anything after the scheme
        scheme, found, _ = source.partition("://")
        return f"{scheme}://***" if found else source
    if not parts.scheme or not parts.netloc:
        return source  # a file name or a camera index
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            name, equals, value = pair.partition("=")
            secret = equals and any(word in unquote(name).lower() for word in SECRET_PARAMETERS)
            pairs.append(f"{name}=***" if secret else pair)
        shown += "?" + "&".join(pairs)
    return shown + (f"#{parts.fragment}" if parts.fragment else "")


def open_source(source: str):
    """cv2.VideoCapture on a camera index, a video file or a stream URL; FerError (one line)
    if it does not open. Returns (capture, kind), kind "camera", "file" or "stream"."""
    from fercli.media.images import quiet_stderr
    from fercli.media.video import open_video

    if not source:
        raise FerError("no source given: a camera index, a video file or a stream URL")
    # isdigit() alone accepts "²", which int() refuses.
    if source.isascii() and source.isdigit():
        kind = "camera"
        if int(source) > MAX_CAMERA_INDEX:
            raise FerError(f"no camera at index {source} (camera indexes are 0 to 9999)")
        with quiet_stderr():
            capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise FerError(f"no camera at index {source} (or it is in use)")
        return capture, kind
    if "://" in source:
        kind = "stream"
        parameters = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            READ_TIMEOUT_MS,
        ]
        with quiet_stderr():
            capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, parameters)
        if not capture.isOpened():
            raise FerError(
                f"the stream {redact(source)} does not open (no answer within "
                f"{OPEN_TIMEOUT_MS / 1000:g} s, or not a video OpenCV can read)"
            )
        return capture, kind
    path = Path(source)
    if not path.exists():
        raise FerError(f"{source}: no such file (and not a camera index or a URL)")
    try:
        return open_video(path), "file"
    except FerError as error:
        raise FerError(f"{source}: {error}") from None


@dataclass(frozen=True)
class LiveConfig:
    """How fer live reads and analyses its source; checks itself (core.settings.setting)."""

    # A full face detection every this many frames; in between, faces are followed by their
    # landmarks.
    detect_every: int = setting(5, "--detect-every", low=1, high=1_000_000)
    # A video file starts again at its end instead of ending the command.
    loop: bool = setting(False, "--loop")
    # Write the per-frame CSV of fer predict --csv here (None: no recording).
    record: Path | None = setting(None, "--record", kind=Path)
    # Each track's probabilities averaged over its frames of the last this many seconds, as
    # the page shows them (0: off); a trailing window, where fer predict's is centred.
    smooth: float = setting(0.0, "--smooth", low=0.0)

    def __post_init__(self) -> None:
        check_settings(self)


class LiveSession:
    """The source read and labelled by a thread; the latest frame and probabilities for the
    server."""

    def __init__(
        self,
        source: str,
        model: FerModel,
        options: LiveConfig = LiveConfig(),
        escape: Callable[[str], str] = str,
    ) -> None:
        """Opens the source (FerError if it does not open); start() starts reading it.
        escape: applied to the text fields of the recorded CSV (the CLI's printable escaping)."""
        self.source = source
        self.model = model
        self.options = options
        self.escape = escape
        self.shown_source = redact(source)
        self.smoother = TrailingSmoother(model.classes, options.smooth) if options.smooth else None
        self.capture, self.kind = open_source(source)
        try:
            self.recording = (
                open_recording(options.record, source, model) if options.record else None
            )
        except BaseException:
            self.capture.release()
            raise
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.source_fps = fps if math.isfinite(fps) and 0 < fps <= MAX_FPS else None
        # What the user should know about the source (a file's absurd frame rate).
        self.note: str | None = None
        if self.kind == "file":
            self.source_fps, self.note = file_fps(fps)
        declared = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared = int(declared) if math.isfinite(declared) and 0 < declared < 2**62 else 0
        self.looped = False
        self.condition = threading.Condition()
        self.jpeg: bytes | None = None  # the latest labelled frame
        self.read_at = 0.0  # when it was read (time.time(), to measure the delay to the browser)
        self.sequence = 0  # frames labelled so far
        self.faces: list[dict] = []  # the latest frame's faces: {track, box, label, probabilities}
        self.times: deque[float] = deque()  # when the recent frames were labelled, for the rate
        self.latency = 0.0  # seconds from reading the latest frame to its JPEG
        self.status = "running"  # then "ended" (a file at its end) or "failed"
        self.error: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-reader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop reading and release the source (waits for the reading thread)."""
        self.stopping.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
        self.capture.release()

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def state(self) -> dict:
        """What the page shows: the latest faces, the frame rate achieved, the model, the status."""
        with self.condition:
            times = list(self.times)
            rate = (
                (len(times) - 1) / (times[-1] - times[0])
                if len(times) > 1 and times[-1] > times[0]
                else 0.0
            )
            return {
                "source": self.shown_source,
                "kind": self.kind,
                "model": Path(str(self.model.path)).name,
                "smooth": self.options.smooth,
                "classes": list(self.model.classes),
                "frame": self.sequence,
                "fps": round(rate, 2),
                "source_fps": self.source_fps,
                "latency_ms": round(self.latency * 1000, 1),
                "status": self.status,
                "error": self.error,
                "note": self.note,
                "faces": self.faces,
            }

    def wait_frame(self, after: int, timeout: float) -> tuple[int, bytes | None, float]:
        """(frame number, JPEG, when it was read) of the latest frame, once there is one newer
        than frame number after (or at timeout)."""
        with self.condition:
            self.condition.wait_for(lambda: self.sequence > after or self.finished, timeout)
            return self.sequence, self.jpeg, self.read_at

    def _run(self) -> None:
        recording = self.recording
        try:
            writer = csv.writer(recording) if recording else None
            if writer:
                try:
                    smoothed = self.smoother is not None
                    writer.writerow(
                        csv_header(self.model.classes, smoothed, escape=self.escape, model=True)
                    )
                except OSError as error:
                    self._finish("failed", self._write_error(error))
                    return
            self._play(writer)
        except Exception as error:  # the page and the command must learn of it, not a dead thread
            self._finish("failed", f"{type(error).__name__}: {error}")
        finally:
            if recording:
                try:
                    recording.close()
                except OSError as error:  # the last rows did not reach the disk
                    self._finish("failed", self._write_error(error))

    def _play(self, writer) -> None:
        """Read, label and publish frames until the source ends or fails, or stop()."""
        interval = 1.0 / self.source_fps if self.source_fps else 1.0 / 30
        pipeline = FramePipeline(
            self.model, VideoConfig(detect_every=self.options.detect_every), interval
        )
        started = time.perf_counter()
        number, failures, restart = 0, 0, 0
        while not self.stopping.is_set():
            ok, frame = self.capture.read()
            read_at, read_wall = time.perf_counter(), time.time()
            if not ok or frame is None:
                failures += 1
                step = self._no_frame(number, failures)
                if step == "restart":
                    restart, started = number, time.perf_counter()
                if step == "stop":
                    return
                continue
            failures = 0
            if frame.shape[0] * frame.shape[1] > MAX_PIXELS:
                self._finish(
                    "failed", f"frames too large: {frame.shape[1]}x{frame.shape[0]} pixels"
                )
                return
            # A camera's or stream's time is the clock's; a file's comes from its frame rate.
            seconds = number * interval if self.kind == "file" else read_at - started
            faces, jpeg = self._label(pipeline, frame, number, seconds)
            if writer and faces and not self._record(writer, faces):
                return
            self._publish(faces, jpeg, read_at, read_wall)
            number += 1
            if self.kind == "file":  # a file plays at its own pace, as a camera would
                self.stopping.wait(
                    max(0.0, started + (number - restart) * interval - time.perf_counter())
                )

    def _record(self, writer, faces: list) -> bool:
        """Write a frame's faces to the recording, onto the disk at once (False, and the
        session failed, if the disk refuses them: a full disk must not pass as recorded)."""
        try:
            for track_id, face in faces:
                writer.writerow(
                    csv_row(
                        self.shown_source,
                        track_id,
                        face,
                        self.model.classes,
                        self.smoother is not None,
                        escape=self.escape,
                        model=str(self.model.path),
                    )
                )
            self.recording.flush()
        except OSError as error:
            self._finish("failed", self._write_error(error))
            return False
        return True

    def _write_error(self, error: OSError) -> str:
        return f"cannot write the recording {self.options.record}: {error.strerror or error}"

    def _label(self, pipeline: FramePipeline, frame: np.ndarray, number: int, seconds: float):
        """A frame's (track id, face) pairs and the frame drawn with them as JPEG (None if it
        cannot be encoded)."""
        faces = pipeline.step(frame, number, seconds)
        pipeline.label_crops()
        for track in pipeline.tracker.tracks:  # live runs for hours: keep no history
            track.frames.clear()
        if self.smoother is not None:
            self.smoother.smooth(faces, seconds)
        draw_faces(frame, faces, line_thickness(frame))
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        return faces, encoded.tobytes() if ok else None

    def _no_frame(self, number: int, failures: int) -> str:
        """What to do when the source gave no frame (failures in a row): "restart" (a looped
        file, rewound), "retry" (a camera's hiccup) or "stop" (the status set)."""
        if self.kind == "file":
            # As fer predict: a file that gives no frame, or fewer than its header declares,
            # is damaged; that is a failure, not an end.
            problem = None if self.looped else self._file_problem(number)
            if problem:
                self._finish("failed", f"{self.shown_source}: {problem}")
                return "stop"
            if self.options.loop:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self.looped = True
                return "restart"
            self._finish("ended", None)
            return "stop"
        if failures < FAILED_READS and self.kind == "camera":
            time.sleep(0.02)
            return "retry"
        self._finish("failed", f"the {self.kind} {self.shown_source} stopped giving frames")
        return "stop"

    def _file_problem(self, frames: int) -> str | None:
        """Why a file that ended after this many frames (its first pass) is damaged, if it is."""
        from fercli.media.video import FRAME_COUNT_SLACK

        if frames == 0:
            return (
                "no frame could be decoded (an empty video, a codec OpenCV cannot decode, or "
                "damaged data)"
            )
        if self.declared and frames < self.declared * (1 - FRAME_COUNT_SLACK) - 1:
            return (
                f"the video ends after {frames} of the {self.declared} frames its header "
                "declares (truncated or damaged)"
            )
        return None

    def _publish(self, faces: list, jpeg: bytes | None, read_at: float, read_wall: float) -> None:
        """Make a labelled frame the one the page shows (an unencodable one keeps the last
        picture), and count it for the frame rate."""
        now = time.perf_counter()
        with self.condition:
            self.jpeg = jpeg or self.jpeg
            self.sequence += 1
            self.read_at = read_wall
            self.latency = now - read_at
            self.faces = [
                {
                    "track": track_id,
                    "box": list(face.box),
                    # --smooth: the averaged values, as the frame is drawn with them.
                    "label": face.smoothed_label or face.label,
                    "probabilities": face.smoothed or face.probabilities,
                }
                for track_id, face in faces
            ]
            self.times.append(now)
            while self.times and now - self.times[0] > RATE_WINDOW:
                self.times.popleft()
            self.condition.notify_all()

    def _finish(self, status: str, error: str | None) -> None:
        with self.condition:
            self.status, self.error = status, error
            self.condition.notify_all()


def open_recording(record: Path, source: str, model: FerModel):
    """The recording's CSV file, created new: an existing file (the video being played, the
    model in use, anything) is never replaced, and a FIFO or device is refused. FerError."""
    record = Path(record)
    for other, what in ((source, "the video being played"), (str(model.path), "the model in use")):
        try:
            if Path(other).exists() and record.exists() and record.samefile(other):
                raise FerError(f"--record {record}: is {what}; give the name of a new file")
        except OSError:
            pass
    if os.path.lexists(record):
        kind = "a file" if record.is_file() else "not a regular file"
        raise FerError(
            f"--record {record}: exists ({kind}); fer live never replaces a file, give a new name"
        )
    try:
        # "x": created by this call or refused, even if another program made the name meanwhile.
        return open(record, "x", newline="", encoding="utf-8")
    except FileExistsError:
        raise FerError(f"--record {record}: exists; fer live never replaces a file") from None
    except OSError as error:
        raise FerError(f"cannot write the recording {record}: {error.strerror or error}") from None
